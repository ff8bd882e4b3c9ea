"""The analogy term of the language stages: the output projections held to compose.

A held-out request ("Draw an orange square.") reaches the output projection as hidden states the
seen requests never produced. If the LLM writes them as it writes the seen ones, about additively
in colour and shape, then h(orange square) ~ h(orange circle) + h(red square) - h(red circle), and a
projection that maps such sums as it maps the seen requests lands the held-out one on its caption.
Nothing in the plain MSE asks that of it: fitted to the seen requests alone, it is free to map
every point between them to the nearest seen caption (session 20: an orange square drawn round).

So each step also feeds the projection sums h_a + h_b - h_c of seen requests whose attributes make
a parallelogram with a fourth seen request d (each attribute of c is a's or b's, d takes the
other), with d's own decoder conditioning as the target. Only seen captions are used, as a, b, c
and d: the held-out pairs stay unpaired with media in every stage.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from . import world

ATTRIBUTES = {  # per modality: the vocabularies a caption's attributes come from, in order
    "image": (tuple(world.COLOURS), world.SHAPES),
    "video": (tuple(world.COLOURS), world.SHAPES, tuple(world.DIRECTIONS)),
    "audio": (tuple(world.PITCHES), world.TIMBRES),
}


def caption_attributes(modality: str, caption: str) -> tuple[str | None, ...]:
    """("orange", "square") for "an orange square"; None where the caption names no value
    ("a buzzy tone": (None, "buzzy")), which composes like any other value."""
    words = caption.replace(".", " ").split()
    return tuple(next((w for w in words if w in vocab), None) for vocab in ATTRIBUTES[modality])


class SignalMemory:
    """The latest signal hidden states (detached, (N, H)) of every caption seen in training."""

    def __init__(self, seed: int = 0):
        self.states: dict[str, dict[tuple, tuple[str, torch.Tensor]]] = {m: {} for m in ATTRIBUTES}
        self.rng = random.Random(f"analogy:{seed}")  # its own stream: the stage's data stay as without it

    def add(self, modality: str, caption: str, hidden: torch.Tensor) -> None:
        """Keep a caption's signal states (N, H), detached: the term moves the projection only."""
        self.states[modality][caption_attributes(modality, caption)] = (caption, hidden.detach())

    def analogies(self, modality: str, k: int) -> list[tuple[torch.Tensor, str]]:
        """Up to k (h_a + h_b - h_c, caption of d) of distinct seen a, b, c, d."""
        states = self.states[modality]
        keys = list(states)
        out = []
        for _ in range(8 * k):
            if len(out) == k or len(keys) < 4:
                break
            a, b = self.rng.sample(keys, 2)
            mask = [self.rng.random() < 0.5 for _ in a]
            c = tuple(x if m else y for x, y, m in zip(a, b, mask))
            d = tuple(y if m else x for x, y, m in zip(a, b, mask))
            if len({a, b, c, d}) == 4 and c in states and d in states:
                out.append((states[a][1] + states[b][1] - states[c][1], states[d][0]))
        return out


def analogy_loss(memory: SignalMemory, projections, signal_embeds: dict[str, torch.Tensor], targets,
                 k: int = 16) -> torch.Tensor:
    """Mean over modalities of the normalised MSE of the projection on k analogies against d's target."""
    losses = []
    for m, embeds in signal_embeds.items():
        found = memory.analogies(m, k)
        if not found:
            continue
        h = torch.stack([x for x, _ in found])  # (k, N, H)
        out = projections[m](h, embeds.expand(len(found), -1, -1))  # (k, Q, D)
        tgt = torch.stack([targets(m, caption) for _, caption in found])  # (k, Q, D)
        losses.append(F.mse_loss(out, tgt) / targets.norm(m, tgt))
    return sum(losses) / len(losses) if losses else torch.zeros(())


def composed_tones(items: list, embeds: torch.Tensor, n: int, seed: int = 0) -> tuple[list, torch.Tensor]:
    """n tones heard as a composition: the ImageBind embedding e_a + e_b - e_c of three bank tones
    of seen pairs a, b, c making a parallelogram with a seen pair d, rescaled to the bank's mean
    norm, as a sample of d (its `freq` a negative serial: no wave was ever played)."""
    rng = random.Random(f"composed:{seed}")
    by_pair: dict[tuple, list[int]] = {}
    for row, t in enumerate(items):
        if t.pitch is not None:
            by_pair.setdefault((t.pitch, t.timbre), []).append(row)
    pairs = list(by_pair)
    norm = embeds.norm(dim=-1).mean()
    samples, rows = [], []
    while len(samples) < n:
        a, b = rng.sample(pairs, 2)
        c, d = (a[0], b[1]), (b[0], a[1])
        if len({a, b, c, d}) < 4 or c not in by_pair or d not in by_pair:
            continue
        e = sum(sign * embeds[rng.choice(by_pair[p])] for sign, p in ((1, a), (1, b), (-1, c)))
        rows.append(e / e.norm() * norm)
        samples.append(world.ToneSample(d[0], d[1], freq=-1.0 - len(samples), amplitude=0.0))
    return samples, torch.stack(rows)

