"""The analogy term and the composed tones of the language stages: built from seen pairs only,
and composing as their docstrings say."""
from __future__ import annotations

import random

import torch

from weights.nano import world
from weights.nano.analogy import SignalMemory, analogy_loss, caption_attributes, composed_tones


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


def test_analogies_sum_three_seen_states_into_a_fourth_seen_caption():
    memory, states = _memory_of_seen_captions()
    found = memory.analogies("image", 50)
    assert len(found) == 50
    held = {world.article(f"a {c} {s}") for c, s in world.HELD_OUT_SHAPES}
    for h, caption in found:
        assert caption in states and caption not in held
        torch.testing.assert_close(h, states[caption])  # additive states: the sum is d's own state
    assert memory.analogies("audio", 5) == []  # nothing stored for tones: no analogy to draw


def test_analogy_loss_is_zero_for_a_projection_that_maps_each_state_to_its_target():
    memory, states = _memory_of_seen_captions()
    captions = list(states)
    table = torch.stack([states[c].flatten() for c in captions])  # (C, 32)

    class Nearest(torch.nn.Module):  # the target of the stored state the input equals
        def forward(self, h, signal):
            rows = [(table - x.flatten()).norm(dim=1).argmin() for x in h]
            return torch.stack([torch.full((2, 3), float(r)) for r in rows])

    class Targets:
        def __call__(self, modality, caption):
            return torch.full((2, 3), float(captions.index(caption)))

        def norm(self, modality, target):
            return 1.0

    loss = analogy_loss(memory, {"image": Nearest()}, {"image": torch.zeros(1, 4, 8)}, Targets())
    assert float(loss) < 1e-6


def test_composed_tones_are_seen_pairs_made_of_three_bank_embeddings():
    rng = random.Random(0)
    items = [world.random_tone(rng, world.tone_pairs()) for _ in range(120)] + [world.unnamed_pitch_tone(rng)]
    g = torch.Generator().manual_seed(0)
    code = {v: torch.randn(16, generator=g) for v in list(world.PITCHES) + list(world.TIMBRES) + [None]}
    embeds = torch.stack([code[t.pitch] + code[t.timbre] for t in items])
    samples, rows = composed_tones(items, embeds, 30)
    assert len(samples) == 30 and rows.shape == (30, 16)
    for t, row in zip(samples, rows):
        assert (t.pitch, t.timbre) in world.tone_pairs() and t.freq < 0
        want = code[t.pitch] + code[t.timbre]
        torch.testing.assert_close(row / row.norm(), want / want.norm())
    torch.testing.assert_close(rows.norm(dim=1), embeds.norm(dim=1).mean().expand(30))
    assert len(set(samples)) == 30  # distinct samples: each has its own row in the bank's index
