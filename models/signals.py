"""NExT-GPT's added tokens and signal-token runs.

The released tokenizer appends, in this order: `<Img>`, `</Img>`, `[IMG0..3]`, `[VID0..23]`,
`[AUD0..7]` (ids 32000-32037 on LLaMA's 32000-token vocabulary). A modality's output is requested
by the model when it emits that modality's signal tokens as one consecutive run.
"""
from __future__ import annotations

from dataclasses import dataclass

MODALITIES = ("image", "audio", "video")

IMG_OPEN = "<Img>"
IMG_CLOSE = "</Img>"


@dataclass(frozen=True)
class SignalSpec:
    modality: str
    prefix: str  # token text prefix, e.g. "IMG" -> "[IMG0]"
    num_tokens: int  # length of the run the output projection consumes

    @property
    def tokens(self) -> list[str]:
        return [f"[{self.prefix}{i}]" for i in range(self.num_tokens)]


# Order matters: it is the order the release added them to the vocabulary.
SIGNAL_SPECS: dict[str, SignalSpec] = {
    "image": SignalSpec("image", "IMG", 4),
    "video": SignalSpec("video", "VID", 24),
    "audio": SignalSpec("audio", "AUD", 8),
}


def added_tokens() -> list[str]:
    """Every token NExT-GPT added to LLaMA's vocabulary, in release order."""
    tokens = [IMG_OPEN, IMG_CLOSE]
    for spec in SIGNAL_SPECS.values():
        tokens += spec.tokens
    return tokens


@dataclass(frozen=True)
class SignalRun:
    """Where a modality's signal run sits in the generated ids, or why it is unusable."""

    modality: str
    start: int | None  # index into the generated ids of the first signal token
    reason: str | None = None  # set when the run is malformed

    @property
    def ok(self) -> bool:
        return self.start is not None


def find_signal_run(generated: list[int], signal_ids: list[int], modality: str) -> SignalRun | None:
    """Locate `signal_ids` as one consecutive run in `generated`.

    Returns None when the model did not ask for this modality at all (no signal id present), a
    SignalRun with `start` when the first signal id is followed by the rest in order, and a
    SignalRun with a `reason` when the run is malformed (the reference asserts here; we skip).
    Positions are indices into `generated` itself: no BOS offset (transformers 4.29 prepended one).
    """
    present = [i for i, tok in enumerate(generated) if tok in set(signal_ids)]
    if not present:
        return None
    first = signal_ids[0]
    if first not in generated:
        return SignalRun(modality, None, f"signal run for {modality} does not start with its first token")
    start = generated.index(first)
    run = generated[start : start + len(signal_ids)]
    if run != signal_ids:
        return SignalRun(
            modality,
            None,
            f"malformed signal run for {modality}: expected {len(signal_ids)} consecutive signal "
            f"tokens, got {len(run)} of which {sum(a == b for a, b in zip(run, signal_ids))} in place",
        )
    return SignalRun(modality, start)
