"""The conversations NExT-GPT's stages train on: media from the bank, composed media of seen
combinations, and single questions about composed media at the lattice's unseen corners."""
from __future__ import annotations

import random

import pytest
import torch

from weights.nano import bank as media_bank
from weights.nano import world
from weights.nano.analogy import sample_attributes
from weights.nano.language import describe, generation

HELD_OUT = {"image": world.HELD_OUT_SHAPES, "video": world.HELD_OUT_SHAPES, "audio": world.HELD_OUT_TONES}


@pytest.fixture(scope="module")
def banked():
    """A bank of seen media with random embeddings, its composed samples, and its dialogues."""
    rng = random.Random(0)
    items = {"image": [world.random_shape(rng, world.shape_pairs()) for _ in range(90)],
             "video": [world.random_video(rng, world.shape_pairs()) for _ in range(240)],
             "audio": [world.random_tone(rng, world.tone_pairs()) for _ in range(60)]}
    g = torch.Generator().manual_seed(0)
    embeds = {m: torch.randn(len(v), 8, generator=g) for m, v in items.items()}
    plain = media_bank.Bank(items, embeds, {m: {s: k for k, s in enumerate(v)} for m, v in items.items()})
    bank, composed = media_bank.with_composed(plain)
    return items, bank, composed, media_bank.BankDialogues(bank, composed)


def _pair(modality, sample):
    return sample_attributes(modality, sample)[:2]


def test_bank_conversations_draw_composed_media_as_the_seen_combination_they_compose_to(banked):
    """NExT-GPT's stages talk about the bank's media and, a share `bank.COMPOSED` of the
    time, about composed ones, captioned as the seen combination they compose to (align_input's
    captions included); the held-out combinations stay out of every draw and caption."""
    items, bank, composed, d = banked
    rng = random.Random(1)
    draws = {"image": [d.shape(rng) for _ in range(3000)], "video": [d.video(rng) for _ in range(3000)],
             "audio": [d.tone(rng) for _ in range(3000)]}
    is_composed = {m: set(v) for m, v in composed.seen.items()}
    for m, drawn in draws.items():
        made = [s for s in drawn if s in is_composed[m]]
        assert abs(len(made) / len(drawn) - media_bank.COMPOSED[m]) < 0.03
        assert all(bank.index[m][s] >= len(items[m]) for s in made)  # its own row, after the bank's media
        assert all(bank.embedding(m, s).shape == (8,) for s in drawn)
        assert not {_pair(m, s) for s in drawn} & HELD_OUT[m]
    captions = [describe(random.Random(k), d) for k in range(300)]  # align_input's captioning
    for user, answer in captions:
        (m, s), = user.media.items()
        assert _pair(m, s) not in HELD_OUT[m]
        if s in is_composed[m]:
            assert answer.text.lower().startswith(world.article(f"a {sample_attributes(m, s)[0]}").lower())


def test_unseen_corners_are_the_held_out_pairs_each_with_its_own_bank_row(banked):
    items, bank, composed, _ = banked
    for m, share in media_bank.CORNERS.items():
        corners = composed.corners[m]
        if not share:  # not asked about, so not made
            assert corners == []
            continue
        assert len(corners) == media_bank.CORNERS_PER_MODALITY
        assert {_pair(m, s) for s in corners} == HELD_OUT[m]
        rows = [bank.index[m][s] for s in corners]
        assert len(set(rows)) == len(rows) and min(rows) >= len(items[m]) + len(composed.seen[m])
        assert not set(corners) & set(items[m])


def _answers(modality: str, sample) -> set[str]:
    """Every answer a single question about `sample` may get (200 draws cover them)."""
    rng = random.Random(0)
    return {media_bank.QUESTION[modality](rng, sample)[1] for _ in range(200)}


def test_unseen_corners_are_asked_as_their_combination_and_never_requested_or_followed_up(banked):
    """`instruct` asks a share `CORNERS` of single questions about a modality's media of its
    unseen corners' compositions, answered as the corner's combination. A held-out pair is spoken
    only there: never in a user turn, a follow-up or a request to a decoder, in any stage."""
    _, _, composed, d = banked
    corner = {m: set(v) for m, v in composed.corners.items()}
    rng = random.Random(2)
    singles = {m: 0 for m in corner}
    asked = {m: 0 for m in corner}
    spoken = [world.article(f"a {c} {s}").lower() for c, s in world.HELD_OUT_SHAPES]
    spoken += [f"{p} {t}" for p, t in world.HELD_OUT_TONES]
    answers = {}
    for _ in range(20000):
        conv = d.conversation(rng)
        media = [(k, m, s) for k, turn in enumerate(conv) for m, s in turn.media.items()]
        at_corner = [(k, m, s) for k, m, s in media if s in corner[m]]
        if at_corner:
            (k, m, s), = at_corner
            assert len(conv) == 2 and k == 0  # a single question, never a follow-up
            asked[m] += 1
            key = (m, sample_attributes(m, s))
            answers.setdefault(key, set()).add(conv[1].text)
            assert conv[1].text in _answers(m, s), conv
        for turn in conv[:1] if at_corner else conv:
            assert not any(phrase in turn.text.lower() for phrase in spoken), turn.text
            assert not turn.gen or all(phrase not in turn.gen[1] for phrase in spoken)
        if len(conv) == 2 and len(conv[0].media) == 1:
            singles[next(iter(conv[0].media))] += 1
    for m in corner:
        assert abs(asked[m] / singles[m] - media_bank.CORNERS[m]) < 0.03, (m, asked[m], singles[m])
    for pitch, timbre in world.HELD_OUT_TONES:  # described whole and asked each attribute
        assert {f"A {pitch} {timbre} tone.", f"It is a {pitch} tone.", f"It is a {timbre} tone."} <= answers[
            ("audio", (pitch, timbre))]
    for k in range(300):  # align_input's captions and align_output's requests never reach a corner
        conv = describe(random.Random(k), d) + generation(random.Random(k), d)
        assert not any(s in corner[m] for turn in conv for m, s in turn.media.items())
