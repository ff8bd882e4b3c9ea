"""Where the output projections land a request, without decoding: for "Draw a purple circle." (or
"Play a low beeping tone."), the conditioning that the LLM and the output projection make, against
what each caption of the world should condition the decoder on (`reference_conditioning`: the image
decoder's own text encoder; for tones, the audio decoder's attribute code).

`nextgpt eval nano` samples a dozen drawings per row, so a held-out pair moving by one or two
drawings is noise-sized. This measure is deterministic and separates two faults: the LLM naming
the wrong pair in its answer, and the projection mapping the right answer near another caption.
For each request: whether the answer names the pair, the rank of the asked caption among all
captions by MSE (1: nearest), the nearest caption, and the margin (MSE to the nearest other
caption over MSE to the asked one, minus 1: above 0 means the asked caption is nearest); and the
same margin for the target as its attributes would compose it (`additive_margins`), which says how
far the decoder's own conditionings leave a held-out caption reachable by composition at all.
With `--ceilings N`, a third fault: a decoder that draws or plays a held-out pair wrong even from
an ideal landing (`decoder_ceilings`), which no language-stage change can make up for.

    python -m weights.nano.diagnose_projection [MODEL_DIR] [--play N] [--ceilings N]
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from . import dialogue, world
from .decoders import caption_conditioning, code_target


@dataclass
class Landing:
    modality: str
    asked: str  # the caption asked for
    held_out: bool
    named: bool  # the answer names exactly the asked pair
    rank: int  # of the asked caption among all captions, by MSE (1: nearest)
    nearest: str
    margin: float  # MSE to the nearest other caption / MSE to the asked one - 1
    additive_margin: float  # the same margin for the attribute-additive prediction of the target
    played: int | None = None  # tones, with `plays`: of the decoded landings, how many have the asked pitch


# MSE to the asked caption at or below this share of the nearest other's is float rounding: the
# landing is the asked caption itself (as the tones' additive prediction is: their code is a sum)
EXACT = 1e-9


def _margin(mse: torch.Tensor, i: int) -> float:
    """MSE to the nearest caption other than i, over MSE to caption i, minus 1 (inf: on caption i)."""
    nearest_other = torch.cat([mse[:i], mse[i + 1:]]).min()
    if mse[i] <= EXACT * nearest_other:
        return math.inf
    return float(nearest_other / mse[i] - 1)


def additive_prediction(targets: torch.Tensor, names: list[dict[str, str]], held: list[bool]) -> torch.Tensor:
    """(C, ...) each caption's conditioning predicted as a sum of one vector per attribute value,
    fitted by least squares over the seen captions only."""
    values = sorted({(k, v) for n in names for k, v in n.items()})
    design = torch.zeros(len(names), 1 + len(values))
    design[:, 0] = 1
    for row, n in enumerate(names):
        for kv in n.items():
            design[row, 1 + values.index(kv)] = 1
    seen = [k for k, h in enumerate(held) if not h]
    coef = torch.linalg.lstsq(design[seen], targets.flatten(1)[seen]).solution
    return (design @ coef).reshape(targets.shape)


def additive_margins(targets: torch.Tensor, names: list[dict[str, str]], held: list[bool]) -> list[float]:
    """How far the decoder's conditionings compose from their words: each caption's
    `additive_prediction`'s margin among all captions' conditionings. Where a held-out caption's
    additive prediction lands nearer another caption, a projection that composes colour and shape
    (or pitch and timbre) as the seen captions do would land it there too."""
    flat = targets.flatten(1)  # (C, Q*D)
    predicted = additive_prediction(targets, names, held).flatten(1)
    return [_margin((flat - predicted[k]).pow(2).mean(1), k) for k in range(len(names))]


def captions(modality: str) -> list[tuple[str, dict[str, str]]]:
    """Every caption of the world a decoder can be asked for, with the attributes it names."""
    if modality == "image":
        return [(world.article(f"a {c} {s}"), {"colour": c, "shape": s}) for c, s in world.shape_pairs(None)]
    return [(f"a {p} {t} tone", {"pitch": p, "timbre": t}) for p, t in world.tone_pairs(None)]


def held_out(modality: str, names: dict[str, str]) -> bool:
    if modality == "image":
        return (names["colour"], names["shape"]) in world.HELD_OUT_SHAPES
    return (names["pitch"], names["timbre"]) in world.HELD_OUT_TONES


@torch.no_grad()
def reference_conditioning(modality: str, model, pairs: list[tuple[str, dict[str, str]]]) -> torch.Tensor:
    """(C, ...) what each caption should condition the decoder on. For images, the decoder's own
    text encoder of the caption. For tones, the attribute code the audio decoder's CLAP encoder was
    held to (`decoders.code_target`): that encoder meets held-out captions only at eval and puts
    them far from their code (session 13: 0.76 and 0.55, seen captions 0.10-0.14), at a point the
    decoder plays wrong, while the code itself plays right."""
    if modality == "audio":
        return torch.stack([code_target(names.values()) for _, names in pairs])
    return caption_conditioning(modality, model.decoders[modality].pipe, [t for t, _ in pairs]).float().cpu()


def caption_references(model, modality: str) -> tuple[list[tuple[str, dict[str, str]]], list[bool], torch.Tensor]:
    """A modality's captions, which of them are held out, and their reference conditionings (C, ...)."""
    pairs = captions(modality)
    return pairs, [held_out(modality, n) for _, n in pairs], reference_conditioning(modality, model, pairs)


def played_right(model, cond: torch.Tensor, pitch: str, plays: int) -> int:
    """Decode a tone request's landing `plays` times (seeds 0, 1, ...) with the model's audio
    decoder at its defaults: how many have the asked pitch (spectral peak). Separates a landing
    the decoder plays wrong from a decoder that composes wrong (compare the attribute code)."""
    from . import measure

    decoder = model.decoders["audio"]
    waves = decoder(cond.reshape(1, -1).expand(plays, -1), decoder.defaults, seeds=list(range(plays)))
    return sum(measure.pitch_class(w) == pitch for w in waves)


def drawn_right(model, cond: torch.Tensor, colour: str, shape: str, plays: int) -> int:
    """Decode an image conditioning (Q, D) `plays` times (seeds 0, 1, ...) with the model's image
    decoder at its defaults: how many show the asked colour and shape."""
    from . import measure

    decoder = model.decoders["image"]
    images = decoder(cond[None].expand(plays, -1, -1), decoder.defaults, seeds=list(range(plays)))
    return sum(measure.dominant_colour(im) == colour and measure.shape_of(im) == shape for im in images)


def decoded_right(model, modality: str, cond: torch.Tensor, names: dict[str, str], plays: int) -> int:
    if modality == "audio":
        return played_right(model, cond, names["pitch"], plays)
    return drawn_right(model, cond, names["colour"], names["shape"], plays)


@dataclass
class Ceiling:
    """What a decoder makes of a request's ideal landings, out of `plays` decodings: its caption's
    reference conditioning (where the output projection is trained to land, for seen captions)
    and that conditioning's additive prediction (where a projection that composes lands)."""

    modality: str
    asked: str
    held_out: bool
    from_reference: int
    from_additive: int
    plays: int


@torch.no_grad()
def decoder_ceilings(model, plays: int) -> list[Ceiling]:
    """Every caption's two ideal landings decoded: for a held-out pair, the most that any output
    projection landing on it can score, before the LLM or the projection miss anything (session
    21: the image decoder draws "a purple circle"'s own conditioning square 7 times in 8)."""
    out = []
    for modality in ("image", "audio"):
        pairs, held, targets = caption_references(model, modality)
        predicted = additive_prediction(targets, [n for _, n in pairs], held)
        for k, (text, n) in enumerate(pairs):
            out.append(Ceiling(modality, text, held[k], decoded_right(model, modality, targets[k], n, plays),
                               decoded_right(model, modality, predicted[k], n, plays), plays))
    return out


@torch.no_grad()
def land(model, modality: str, prompt: str, asked: str, names: dict[str, str], is_held_out: bool,
         texts: list[str], targets: torch.Tensor, additive: float, seed: int = 0, plays: int = 0) -> Landing:
    from models.generate import SamplingParams
    from models.types import Message

    from .eval import judge_answer

    lang = model.language([Message("user", prompt)], required=[modality],
                          sampling=SamplingParams(max_new_tokens=48, seed=seed))
    cond = lang.conditions[modality].float().cpu().reshape(1, *targets.shape[1:])  # (1, ...), beside the targets
    mse = (targets - cond).pow(2).flatten(1).mean(1)  # (C,)
    order = mse.argsort().tolist()
    i = texts.index(asked)
    played = played_right(model, lang.conditions[modality], names["pitch"], plays) if plays and modality == "audio" else None
    return Landing(modality, asked, is_held_out, judge_answer(lang.text, names), order.index(i) + 1,
                   texts[order[0]], _margin(mse, i), additive, played)


def diagnose(model, seed: int = 0, plays: int = 0) -> list[Landing]:
    """One request per caption of the image and audio decoders (held-out pairs marked); with
    `plays`, each tone request's landing also decoded that many times."""
    landings = []
    for modality in ("image", "audio"):
        pairs, held, targets = caption_references(model, modality)
        texts = [t for t, _ in pairs]
        additive = additive_margins(targets, [n for _, n in pairs], held)
        for k, (text, names) in enumerate(pairs):
            if modality == "image":
                prompt = world.article(dialogue.DRAW[k % len(dialogue.DRAW)].format(**names))
            else:
                prompt = dialogue.PLAY[k % len(dialogue.PLAY)].format(desc=f"{names['pitch']} {names['timbre']}")
            landings.append(land(model, modality, prompt, text, names, held[k], texts, targets, additive[k], seed, plays))
    return landings


def main(argv: list[str] | None = None) -> int:
    from models.nextgpt import NextGPT

    from ..presets import preset_dir

    p = argparse.ArgumentParser(prog="python -m weights.nano.diagnose_projection", description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", nargs="?", type=Path, default=preset_dir("nano"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--play", type=int, default=0, metavar="N",
                   help="also decode each tone request's landing N times and count the asked pitch")
    p.add_argument("--ceilings", type=int, default=0, metavar="N",
                   help="also decode every caption's reference conditioning and its additive prediction "
                        "N times each: what the decoders make of an ideal landing")
    args = p.parse_args(argv)
    model = NextGPT.from_pretrained(args.model_dir)
    print("| asked | held out | answer names it | rank | nearest | margin | additive target's margin | played right |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in diagnose(model, args.seed, args.play):
        played = "-" if r.played is None else f"{r.played}/{args.play}"
        print(f"| {r.asked} | {'yes' if r.held_out else ''} | {'yes' if r.named else 'NO'} | {r.rank} | "
              f"{r.nearest} | {r.margin:+.2f} | {r.additive_margin:+.2f} | {played} |")
    if args.ceilings:
        print("\n| caption | held out | decoded right from its reference | from its additive prediction |\n"
              "|---|---|---|---|")
        for c in decoder_ceilings(model, args.ceilings):
            print(f"| {c.asked} | {'yes' if c.held_out else ''} | {c.from_reference}/{c.plays} | "
                  f"{c.from_additive}/{c.plays} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
