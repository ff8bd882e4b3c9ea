"""How additive the LLM's signal states are for a held-out draw request, and where the output
projection lands them, read from a language stage's weights in a training work directory.

For "Draw a green triangle." the states at the four image signal tokens (last layer, mean over
three phrasings) are compared with h_a + h_b - h_c of the seen requests that make a
parallelogram with it ("a green circle" + "a blue triangle" - "a blue circle", ...). After
`align_output`, where the LLM body is frozen, the gap is a few percent; session 33 measured it
growing to 17-32% as `instruct`'s LoRA trains, while the held-out landing wandered from caption to
caption and every analogy sum kept landing on the asked one: the diagnosis of a held-out pair
drawn in the wrong colour that `diagnose_projection` (which reads an assembled model) cannot
give, since it does not see the states.

    python -m weights.nano.diagnose_signals WORK [--stage instruct]
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from . import dialogue, world

Pair = tuple[str, str]  # (colour, shape)


def analogy_sums(states: dict[Pair, torch.Tensor], pair: Pair) -> list[torch.Tensor]:
    """h(colour, s) + h(c, shape) - h(c, s) for every other colour c and shape s whose three
    requests are seen: what `pair`'s states would be if the LLM wrote them additively."""
    colour, shape = pair
    sums = []
    for c, s in itertools.product(world.COLOURS, world.SHAPES):
        corners = ((colour, s), (c, shape), (c, s))
        if c == colour or s == shape or any(p in world.HELD_OUT_SHAPES for p in corners):
            continue
        sums.append(states[corners[0]] + states[corners[1]] - states[corners[2]])
    return sums


def relative_gap(state: torch.Tensor, sums: list[torch.Tensor]) -> float:
    """|h - mean of its analogy sums| / |h|: 0 for states that add up exactly."""
    return float((state - torch.stack(sums).mean(0)).norm() / state.norm())


@torch.no_grad()
def draw_states(batcher, pair: Pair) -> torch.Tensor:
    """The last-layer states (N, H) at the image signal tokens of a draw request and its answer,
    mean over the first three phrasings, laid out by the language stages' own `Batcher` (no
    media, so no noise)."""
    colour, shape = pair
    n = len(batcher.llm.signal_ids["image"])
    states = []
    for phrasing in dialogue.DRAW[:3]:
        ask = world.article(phrasing.format(colour=colour, shape=shape))
        example = batcher.example(list(dialogue.draw_turns(None, colour, shape, ask)))
        _, hidden = batcher.forward([example])
        states.append(hidden[0, example.gen[2]:example.gen[2] + n])
    return torch.stack(states).mean(0)


@torch.no_grad()
def nearest_captions(llm, projection, targets: torch.Tensor, state: torch.Tensor,
                     k: int = 2) -> list[tuple[str, float]]:
    """The k captions whose conditioning (targets (C, Q, D), in `world.shape_pairs(None)` order)
    the projection's landing of `state` is nearest, with the MSE."""
    signal = llm.embed_ids(torch.tensor([llm.signal_ids["image"]]))
    landing = projection(state[None], signal)[0]  # (Q, D)
    mse = (targets - landing[None]).pow(2).flatten(1).mean(1)  # (C,)
    pairs = world.shape_pairs(None)
    return [(" ".join(pairs[i]), round(float(mse[i]), 4)) for i in mse.argsort()[:k].tolist()]


def main(argv: list[str] | None = None) -> int:
    from .common import Context
    from .language import Batcher, Targets, load_language

    p = argparse.ArgumentParser(prog="python -m weights.nano.diagnose_signals", description=__doc__.split("\n\n")[0])
    p.add_argument("work", type=Path, help="a train-nano work directory whose language stages are done")
    p.add_argument("--stage", default="instruct", help="align_output or instruct: whose weights to read")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    ctx = Context(work=args.work)
    llm, projections = load_language(ctx, args.stage)
    llm.eval()
    projections.eval()
    conditioning = Targets(ctx)
    targets = torch.stack([conditioning("image", world.article(f"a {c} {s}")) for c, s in world.shape_pairs(None)])
    batcher = Batcher(llm, bank=None, media_noise=0.0)
    states = {pair: draw_states(batcher, pair) for pair in world.shape_pairs(None)}
    print("| held-out request | gap to its analogy sums | lands nearest | mean analogy sum lands nearest |\n"
          "|---|---|---|---|")
    for pair in sorted(world.HELD_OUT_SHAPES):
        sums = analogy_sums(states, pair)
        print(f"| {' '.join(pair)} | {relative_gap(states[pair], sums):.1%} | "
              f"{nearest_captions(llm, projections['image'], targets, states[pair])} | "
              f"{nearest_captions(llm, projections['image'], targets, torch.stack(sums).mean(0))} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
