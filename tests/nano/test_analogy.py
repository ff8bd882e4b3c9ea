"""The analogy term and the composed tones of the language stages: built from seen pairs only,
and composing as their docstrings say."""
from __future__ import annotations

import itertools
import random

import pytest
import torch

from weights.nano import world
from weights.nano.analogy import (ATTRIBUTES, SignalMemory, analogy_loss, caption_attributes, composed_samples,
                                  sample_attributes)


def test_captions_read_as_attribute_tuples_with_none_for_what_they_do_not_name():
    assert caption_attributes("image", "an orange square") == ("orange", "square")
    assert caption_attributes("audio", "a buzzy tone") == (None, "buzzy")
    assert caption_attributes("audio", "a high tone") == ("high", None)
    assert caption_attributes("video", "a red circle moving up") == ("red", "circle", "up")


def _memory_of_seen_captions() -> tuple[SignalMemory, dict[str, torch.Tensor]]:
    """Hidden states that are exactly additive in their attributes: one vector per value."""
    g = torch.Generator().manual_seed(0)
    vector = {v: torch.randn(4, 8, generator=g) for v in list(world.COLOURS) + list(world.SHAPES)}
    memory, states = SignalMemory(), {}
    for c, s in world.shape_pairs():
        caption = world.article(f"a {c} {s}")
        states[caption] = vector[c] + vector[s]
        memory.add("image", caption, states[caption])
    return memory, states


def test_analogies_sum_three_seen_states_into_a_fourth_corner_seen_or_not():
    memory, states = _memory_of_seen_captions()
    found = memory.analogies("image", 50)
    assert len(found) == 50
    held = {world.article(f"a {c} {s}") for c, s in world.HELD_OUT_SHAPES}
    corners = [a for a in found if len(a.target) == 3]
    assert 0 < len(corners) < 50  # both kinds turn up
    for analogy in found:
        assert all(caption in states and caption not in held for _, caption in analogy.target)
        target_state = sum(sign * states[caption] for sign, caption in analogy.target)
        torch.testing.assert_close(analogy.state, target_state)  # additive states: the sum is d's own state
    for analogy in corners:  # a corner no request was seen for: one of the held-out pairs
        assert [sign for sign, _ in analogy.target] == [1, 1, -1]
        attrs = [caption_attributes("image", caption) for _, caption in analogy.target]
        corner = tuple(x if x != z else y for x, y, z in zip(*attrs))
        assert corner in world.HELD_OUT_SHAPES
    assert memory.analogies("audio", 5) == []  # nothing stored for tones: no analogy to draw


class _CaptionTargets:
    """A decoder's conditioning stand-in: one fixed (2, 3) tensor per caption."""

    def __init__(self, table: dict[str, torch.Tensor]):
        self.table = table

    def __call__(self, modality, caption):
        return self.table[caption]

    def norm(self, modality, target):
        return 1.0


def test_analogy_loss_is_zero_for_an_affine_projection_of_additive_states():
    """States and conditionings both additive, the projection linear: every analogy, the corners
    that are held-out pairs included, lands exactly on its target."""
    memory, states = _memory_of_seen_captions()
    weight = torch.randn(32, 6, generator=torch.Generator().manual_seed(1))

    class Linear(torch.nn.Module):
        def forward(self, h, signal):  # (k, 4, 8) -> (k, 2, 3)
            return (h.flatten(1) @ weight).view(-1, 2, 3)

    targets = _CaptionTargets({c: Linear()(h[None], None)[0] for c, h in states.items()})
    loss = analogy_loss(memory, {"image": Linear()}, {"image": torch.zeros(1, 4, 8)}, targets)
    assert float(loss) < 1e-10


def test_analogy_loss_penalises_a_projection_that_snaps_a_corner_to_a_seen_caption():
    """Mapping each state to the target of the seen state nearest it fits every seen request, yet
    lands a held-out corner on a seen neighbour: the term is what tells the two apart."""
    memory, states = _memory_of_seen_captions()
    captions = list(states)
    table = torch.stack([states[c].flatten() for c in captions])  # (C, 32)

    class Nearest(torch.nn.Module):
        def forward(self, h, signal):
            rows = [(table - x.flatten()).norm(dim=1).argmin() for x in h]
            return torch.stack([torch.full((2, 3), float(r)) for r in rows])

    targets = _CaptionTargets({c: torch.full((2, 3), float(i)) for i, c in enumerate(captions)})
    seen_only = [a for a in memory.analogies("image", 200) if len(a.target) == 1]
    assert all(float(Nearest()(a.state[None], None)[0, 0, 0]) == captions.index(a.target[0][1]) for a in seen_only)
    assert float(analogy_loss(memory, {"image": Nearest()}, {"image": torch.zeros(1, 4, 8)}, targets)) > 0.01


@pytest.mark.parametrize("modality", ["audio", "image", "video"])
def test_composed_samples_are_combinations_made_of_three_seen_bank_embeddings(modality):
    """With embeddings that add up by construction (one code per attribute value), each composed
    row is its own combination's code, a seen one, or with `unseen` a held-out one (the lattice's
    corners no bank sample has); tones at unnamed pitches take no part."""
    rng = random.Random(0)
    if modality == "audio":
        items = [world.random_tone(rng, world.tone_pairs()) for _ in range(120)] + [world.unnamed_pitch_tone(rng)]
        seen = set(world.tone_pairs())
    elif modality == "image":
        items = [world.random_shape(rng, world.shape_pairs()) for _ in range(120)]
        seen = set(world.shape_pairs())
    else:
        items = [world.random_video(rng, world.shape_pairs()) for _ in range(200)]
        seen = {(c, s, d) for c, s in world.shape_pairs() for d in world.DIRECTIONS}
    g = torch.Generator().manual_seed(0)
    values = list(world.PITCHES) + list(world.TIMBRES) + list(world.COLOURS) + list(world.SHAPES) + list(world.DIRECTIONS)
    code = {v: torch.randn(16, generator=g) for v in values}

    def code_of(sample):
        attrs = sample_attributes(modality, sample) or ("low", "pure")  # unnamed: any code
        return sum(code[a] for a in attrs)

    embeds = torch.stack([code_of(s) for s in items])
    present = {sample_attributes(modality, s) for s in items} - {None}
    lattice = set(itertools.product(*ATTRIBUTES[modality]))
    assert present <= seen
    if modality != "video":  # a few videos leave some seen triples out of the bank
        assert lattice - present == set(world.tone_pairs(True) if modality == "audio" else world.shape_pairs(True))
    for unseen, corners in ((False, present), (True, lattice - present)):  # seen combinations; unseen corners
        samples, rows = composed_samples(modality, items, embeds, 30, unseen=unseen)
        assert len(samples) == 30 and rows.shape == (30, 16)
        assert {sample_attributes(modality, s) for s in samples} <= corners
        for sample, row in zip(samples, rows):
            want = code_of(sample)
            torch.testing.assert_close(row / row.norm(), want / want.norm())
        torch.testing.assert_close(rows.norm(dim=1), embeds.norm(dim=1).mean().expand(30))
        assert len(set(samples)) == 30 and not set(samples) & set(items)  # each has its own row in the bank's index


def test_a_bank_with_no_parallelogram_composes_nothing():
    rng = random.Random(0)
    items = [world.random_shape(rng, [("red", "circle"), ("blue", "square")]) for _ in range(10)]
    samples, rows = composed_samples("image", items, torch.randn(10, 4), 5)
    assert samples == [] and rows.shape == (0, 4)
