"""Contrastive alignment of media to captions that may name only some attributes, as ImageBind
aligned its towers to text: an item is a positive for every caption whose attributes it has ("a
low tone" for every low tone), so a partial caption is never a negative for its items. The
`imagebind` stage aligns its vision and audio towers this way; `audio_unet` takes its tone
captions (`tone_captions`) for the CLAP attribute code.

A tone at a pitch no caption names is still low, medium or high by the world's own measure
(`world.pitch_of`, what the eval reads a played tone's spectral peak by): a 2.6 kHz tone is high,
just never called so, as no stage pairs the held-out high buzzy words with media. So a caption
that would be its positive if that pitch were named ("a high tone") says nothing about it either
way (`unjudged`), while one naming another pitch or another timbre is a true negative. Counted
as negatives of "high" too, the buzzy tones of the unnamed bands beside it taught the towers
that a buzzy tone near either edge of "high" is not high, which the held-out high buzzy tones
there inherited (session 30: a linear pitch probe read them "low" or "medium").
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from . import world


def tone_captions(t: world.ToneSample, rng: random.Random, registers: bool = False) -> tuple[str, frozenset]:
    """A tone's caption, naming its pitch and timbre, its pitch alone or its timbre alone. A tone
    at a pitch no caption names is captioned by its timbre alone, or, with `registers` (the audio
    decoder's captions), as a named one with its band's register word (`world.REGISTERS`) for the
    pitch."""
    if t.pitch is None and not registers:
        return f"a {t.timbre} tone", frozenset({t.timbre})
    pitch = t.pitch or t.register
    r = rng.random()
    if r < 0.7:
        return f"a {pitch} {t.timbre} tone", frozenset({pitch, t.timbre})
    if r < 0.85:
        return f"a {pitch} tone", frozenset({pitch})
    return f"a {t.timbre} tone", frozenset({t.timbre})


def attributes(item) -> frozenset:
    if isinstance(item, world.VideoSample):
        return frozenset({item.colour, item.shape, item.direction, "moving"})
    if isinstance(item, world.ShapeSample):
        return frozenset({item.colour, item.shape})
    return frozenset({item.pitch, item.timbre, item.register}) - {None}


def unjudged(item, caption: frozenset) -> bool:
    """The item is a tone at a pitch no caption names, and the caption would be a positive for it
    if its pitch by the world's measure (`world.pitch_of` of its frequency) were named: "a high
    tone" for a 2.6 kHz tone, not "a high pure tone" for a buzzy one (that is a negative by timbre)."""
    if not isinstance(item, world.ToneSample) or item.pitch is not None:
        return False
    measured = world.pitch_of(item.freq)
    return measured in caption and caption <= attributes(item) | {measured}


def distinct_captions(caps: list[tuple[str, frozenset]]) -> list[tuple[str, frozenset]]:
    """The distinct (caption, attributes) pairs of a batch, in caption order (a fixed order
    whatever the hash seed, so that a stage re-run sums its terms in the same order)."""
    return sorted(set(caps), key=lambda c: c[0])


def caption_sets(items: list, caps: list[tuple[str, frozenset]]
                 ) -> tuple[list[str], list[int], torch.Tensor, torch.Tensor]:
    """-> the distinct caption texts (U), each item's own caption index, positives (n, U) bool:
    the item has every attribute the caption names, and unknown (n, U) bool: the caption says
    nothing about the item either way (`unjudged`)."""
    unique = distinct_captions(caps)
    index = {c: k for k, c in enumerate(unique)}
    pos = torch.tensor([[c[1] <= attributes(it) for c in unique] for it in items])
    unknown = torch.tensor([[unjudged(it, c[1]) for c in unique] for it in items])
    return [c[0] for c in unique], [index[c] for c in caps], pos, unknown


def contrast(media: torch.Tensor, text: torch.Tensor, own: list[int], pos: torch.Tensor, scale,
             unknown: torch.Tensor | None = None) -> torch.Tensor:
    """media (n, D), text (U, D) normalised; own[i]: item i's caption; pos (n, U) bool: item has
    every attribute of the caption; unknown (n, U) bool: pairs that count neither way. Media->text:
    CE on its own caption, other positives and unknown pairs masked; text->media: every positive
    item counts, unknown ones are left out of the normaliser."""
    logits = scale * media @ text.T  # (n, U)
    unknown = torch.zeros_like(pos) if unknown is None else unknown
    own_t = torch.tensor(own)
    mask = pos | unknown
    mask[torch.arange(len(own)), own_t] = False
    m2t = F.cross_entropy(logits.masked_fill(mask, -1e4), own_t)
    cols = pos.any(0)
    lt = logits.T[cols].masked_fill(unknown.T[cols], -1e4)  # (U', n)
    pt = pos.T[cols]
    t2m = -(torch.logsumexp(lt.masked_fill(~pt, -1e4), 1) - torch.logsumexp(lt, 1)).mean()
    return (m2t + t2m) / 2
