"""What each stage does, and the interface the scheduler calls it through.

The stage functions below are the only code that runs a model stage for the server. Two
backends call them:

- `ThreadStages` (server/scheduler.py, the default): one worker thread per stage in this process.
- `RayStages` (server/ray_serve/backend.py): a Ray Serve deployment per stage; each replica runs these
  same functions on its own part of the model, and the ingress reaches it through handles.

So a request flows one way, whichever backend carries it: encode -> language -> one decode per
output, with text deltas and decoder steps reported as they happen and `should_stop` polled by
the model at every token and step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from models.generate import SamplingParams
from models.types import LanguageOutput, MediaItem, Message


@dataclass
class Turn:
    """One model call: the conversation and what to make of it."""

    messages: list[Message]
    modalities: set[str]  # accepted outputs, "text" included
    required: set[str]  # outputs that must be produced
    sampling: SamplingParams
    params: dict[str, Any] = field(default_factory=dict)  # validated decoder params per output


class StageBackend(Protocol):
    """Runs a job's stages; the scheduler awaits these and turns their errors into API errors.
    Both report progress through the job (`job.emit`) and stop when `job.should_stop()`."""

    async def language(self, job: Any, turn: Turn) -> LanguageOutput: ...

    async def decode(self, job: Any, turn: Turn, modality: str, condition: Any) -> Any: ...

    def shutdown(self) -> None: ...


# --------------------------------------------------------------------------- the stage functions

def encode_stage(encoder: Any, items: list[MediaItem]) -> list[Any]:
    """ImageBind embeddings of media items (the encoder caches them by content hash)."""
    return [encoder.encode(item.modality, item.value, item.key) for item in items]


def language_stage(model: Any, turn: Turn, on_text: Callable[[str], None],
                   should_stop: Callable[[], bool]) -> LanguageOutput:
    """Media items not yet encoded are encoded here; then prompt, generation, projections."""
    return model.language(turn.messages, modalities=turn.modalities, required=turn.required,
                          sampling=turn.sampling, on_text=on_text, should_stop=should_stop)


def decode_stage(model: Any, turn: Turn, modality: str, condition: Any,
                 on_step: Callable[[int, int], None], should_stop: Callable[[], bool]) -> Any:
    return model.decode(modality, condition, turn.params[modality], turn.sampling.seed, on_step, should_stop)


def unencoded_items(messages: list[Message]) -> list[MediaItem]:
    return [item for msg in messages for item in msg.media if item.embedding is None]


def with_embeddings(messages: list[Message], embeddings: list[Any]) -> list[Message]:
    """The messages with every unencoded item replaced by its encoded, pixel-free twin (in the
    order `unencoded_items` lists them)."""
    found = iter(embeddings)
    return [Message(msg.role, msg.text, [item if item.embedding is not None else item.encoded(next(found))
                                         for item in msg.media]) for msg in messages]
