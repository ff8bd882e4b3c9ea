"""The analogy term of the language stages: the output projections held to compose.

A held-out request ("Draw an orange square.") reaches the output projection as hidden states the
seen requests never produced. If the LLM writes them as it writes the seen ones, about additively
in colour and shape, then h(orange square) ~ h(orange circle) + h(red square) - h(red circle), and a
projection that maps such sums as it maps the seen requests lands the held-out one on its caption.
Nothing in the plain MSE asks that of it: fitted to the seen requests alone, it is free to map
every point between them to the nearest seen caption (session 20: an orange square drawn round).

So each step also feeds the projection sums h_a + h_b - h_c of seen requests a, b, c whose
attributes make a parallelogram with a fourth combination d (each attribute of c is a's or b's, d
takes the other). Where d is a seen request, the target is d's own decoder conditioning. Where no
request for d was ever seen (the lattice's corners the training never shows, which in this world
are the held-out pairs), the target is t_a + t_b - t_c, the same sum of the seen requests'
conditionings: the projection is asked to be affine over the lattice of seen states, not to
snap a corner onto its nearest seen neighbour (session 33: with additive states an orange square
still landed on "an orange circle"). Only seen requests' states and seen captions'
conditionings are ever used: no held-out caption is encoded, and no media of a held-out pair is
made in any stage.

The input side has the same gap: the input projection and the LLM, fitted to the seen
combinations' embeddings, may read a held-out one as its nearest seen neighbour. So the language
stages also talk about composed media (`composed_samples`): ImageBind embeddings e_a + e_b - e_c
of seen a, b, c, captioned as the seen d they make a parallelogram with; and `instruct` asks some
questions about tones of such sums whose d is a corner no sample has, answered as d
(`bank.CORNERS`). No media of a held-out pair is ever made or embedded.
"""
from __future__ import annotations

import random
from typing import NamedTuple

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


def parallelogram(a: tuple, b: tuple, rng: random.Random) -> tuple[tuple, tuple]:
    """The other two corners (c, d) of a parallelogram on attribute tuples a and b: each of c's
    attributes is a's or b's at random, d takes the other, so that a + b = c + d attribute-wise."""
    mask = [rng.random() < 0.5 for _ in a]
    c = tuple(x if m else y for x, y, m in zip(a, b, mask))
    d = tuple(y if m else x for x, y, m in zip(a, b, mask))
    return c, d


class Analogy(NamedTuple):
    state: torch.Tensor  # (N, H): h_a + h_b - h_c
    target: tuple[tuple[int, str], ...]  # (sign, seen caption): the target is the signed sum of their conditionings


class SignalMemory:
    """The latest signal hidden states (detached, (N, H)) of every caption seen in training."""

    def __init__(self, seed: int = 0):
        self.states: dict[str, dict[tuple, tuple[str, torch.Tensor]]] = {m: {} for m in ATTRIBUTES}
        self.rng = random.Random(f"analogy:{seed}")  # its own stream: the stage's data stay as without it

    def add(self, modality: str, caption: str, hidden: torch.Tensor) -> None:
        """Keep a caption's signal states (N, H), detached: the term moves the projection only."""
        self.states[modality][caption_attributes(modality, caption)] = (caption, hidden.detach())

    def analogies(self, modality: str, k: int) -> list[Analogy]:
        """Up to k analogies of distinct seen a, b, c and a fourth corner d, seen or not."""
        states = self.states[modality]
        keys = list(states)
        out = []
        for _ in range(8 * k):
            if len(out) == k or len(keys) < 4:
                break
            a, b = self.rng.sample(keys, 2)
            c, d = parallelogram(a, b, self.rng)
            if len({a, b, c, d}) < 4 or c not in states:
                continue
            state = states[a][1] + states[b][1] - states[c][1]
            if d in states:
                out.append(Analogy(state, ((1, states[d][0]),)))
            elif None not in d:  # a corner naming no value ("a tone") is no request anyone makes
                out.append(Analogy(state, ((1, states[a][0]), (1, states[b][0]), (-1, states[c][0]))))
        return out


def analogy_loss(memory: SignalMemory, projections, signal_embeds: dict[str, torch.Tensor], targets,
                 k: int = 16) -> torch.Tensor:
    """Mean over modalities of the normalised MSE of the projection on k analogies against their targets."""
    losses = []
    for m, embeds in signal_embeds.items():
        found = memory.analogies(m, k)
        if not found:
            continue
        h = torch.stack([a.state for a in found])  # (k, N, H)
        out = projections[m](h, embeds.expand(len(found), -1, -1))  # (k, Q, D)
        tgt = torch.stack([sum(sign * targets(m, caption) for sign, caption in a.target) for a in found])  # (k, Q, D)
        losses.append(F.mse_loss(out, tgt) / targets.norm(m, tgt))
    return sum(losses) / len(losses) if losses else torch.zeros(())


def sample_attributes(modality: str, sample) -> tuple | None:
    """A bank sample's attributes, read from its caption as a request's are; None where the
    caption leaves one unnamed (a tone at a pitch no caption names is called by its register)."""
    attrs = caption_attributes(modality, sample.caption)
    return None if None in attrs else attrs


def _placeholder(modality: str, attrs: tuple, serial: int):
    """A sample of `attrs` no media was ever made of: its position (or frequency) is a negative
    serial, distinct from every other, so that it has its own row in the bank's index."""
    tag = -1.0 - serial
    if modality == "audio":
        return world.ToneSample(attrs[0], attrs[1], freq=tag, amplitude=0.0)
    if modality == "image":
        return world.ShapeSample(attrs[0], attrs[1], cx=tag, cy=0.0, half=0.0)
    return world.VideoSample(attrs[0], attrs[1], attrs[2], start=(tag, 0.0), travel=0.0, half=0.0)


def composed_samples(modality: str, items: list, embeds: torch.Tensor, n: int,
                     seed: int = 0, unseen: bool = False) -> tuple[list, torch.Tensor]:
    """Up to n samples seen as a composition: the ImageBind embedding e_a + e_b - e_c of three bank
    samples of seen combinations a, b, c that make a parallelogram with a seen combination d
    (each attribute of c is a's or b's, d takes the other), rescaled to the bank's mean norm, as
    a sample of d. A held-out combination's embedding lies close to such a sum (cosine 0.97-0.99
    for images, 0.8-0.9 for tones, session 29), so an input projection and LLM that read the sums
    right read it right too.

    With `unseen`, d is instead a corner of the lattice no bank sample has (in this world, a
    held-out pair): the sum is made of seen samples' embeddings only, as the analogy term's
    targets at those corners are made of seen captions' conditionings."""
    rng = random.Random(f"{'corner' if unseen else 'composed'}:{modality}:{seed}")
    by_key: dict[tuple, list[int]] = {}
    for row, sample in enumerate(items):
        key = sample_attributes(modality, sample)
        if key is not None:
            by_key.setdefault(key, []).append(row)
    keys = list(by_key)
    norm = embeds.norm(dim=-1).mean()
    samples, rows = [], []
    for _ in range(200 * n if len(keys) >= 4 else 0):  # a small bank may hold few parallelograms, or none
        if len(samples) == n:
            break
        a, b = rng.sample(keys, 2)
        c, d = parallelogram(a, b, rng)
        if len({a, b, c, d}) < 4 or c not in by_key or (d in by_key) == unseen:
            continue
        e = sum(sign * embeds[rng.choice(by_key[k])] for sign, k in ((1, a), (1, b), (-1, c)))
        rows.append(e / e.norm() * norm)
        samples.append(_placeholder(modality, d, len(samples)))
    return samples, torch.stack(rows) if rows else embeds.new_zeros((0, embeds.shape[-1]))

