"""The additivity measure of weights/nano/diagnose_signals.py on states built to add up, or not."""
from __future__ import annotations

import torch

from weights.nano import world
from weights.nano.diagnose_signals import analogy_sums, relative_gap


def _additive_states() -> dict[tuple[str, str], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    vector = {v: torch.randn(4, 8, generator=g) for v in list(world.COLOURS) + list(world.SHAPES)}
    return {(c, s): vector[c] + vector[s] for c, s in world.shape_pairs(None)}


def test_a_held_out_request_of_additive_states_is_its_analogy_sums_exactly():
    states = _additive_states()
    for pair in world.HELD_OUT_SHAPES:
        sums = analogy_sums(states, pair)
        assert len(sums) >= 6  # one per other colour and shape whose three requests are seen
        for total in sums:
            torch.testing.assert_close(total, states[pair])
        assert relative_gap(states[pair], sums) < 1e-6


def test_the_sums_read_seen_requests_only_and_the_gap_grows_with_a_held_out_state_moved():
    states = _additive_states()
    for pair in world.HELD_OUT_SHAPES:  # poison every held-out state: no sum may read one
        states[pair] = states[pair] * 100.0
    green_triangle = ("green", "triangle")
    sums = analogy_sums(states, green_triangle)
    moved = states[green_triangle] / 100.0 + 0.3 * states[("blue", "circle")]
    assert relative_gap(states[green_triangle] / 100.0, sums) < 1e-6
    assert relative_gap(moved, sums) > 0.1
