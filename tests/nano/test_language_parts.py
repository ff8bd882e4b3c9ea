"""The language stages' own parts, on the tiny model's real LanguageModel."""
from __future__ import annotations

import torch

from weights.nano import dialogue, world
from weights.nano.bank import Bank
from weights.nano.common import EMA
from weights.nano.language import INSTRUCT_EMA, MEDIA_NOISE, Batcher, jittered


def test_jitter_moves_an_embedding_by_the_share_of_its_norm_asked_for():
    torch.manual_seed(0)
    e = torch.randn(1024) * 3.0
    moved = torch.stack([jittered(e, 0.25) for _ in range(64)])  # (64, D)
    shares = (moved - e).norm(dim=1) / e.norm()
    assert abs(float(shares.mean()) - 0.25) < 0.01
    cosine = torch.nn.functional.cosine_similarity(moved, e[None], dim=1)
    assert 0.96 < float(cosine.mean()) < 0.98
    assert torch.equal(jittered(e, 0.0), e)


def _one_image_conversation(tiny_model):
    dim = tiny_model.llm.llama_proj.in_features
    sample = world.ShapeSample("red", "circle", 16.0, 16.0, 8.0)
    bank = Bank(items={"image": [sample]}, embeds={"image": torch.randn(1, dim)}, index={"image": {sample: 0}})
    conv = [dialogue.Turn("user", "What colour is it?", {"image": sample}), dialogue.Turn("assistant", "It is red.")]
    return bank, conv


@torch.no_grad()
def test_the_language_stages_read_each_media_embedding_jittered_and_the_text_as_it_is(tiny_model):
    bank, conv = _one_image_conversation(tiny_model)
    noisy = Batcher(tiny_model.llm, bank)
    assert noisy.media_noise == MEDIA_NOISE > 0
    a, b = noisy.example(conv), noisy.example(conv)
    assert a.labels == b.labels
    moved = (a.embeds - b.embeds).abs().sum(dim=1) > 0  # (T,): which positions differ between two reads
    assert int(moved.sum()) == 1  # the one media position, nothing else
    clean = Batcher(tiny_model.llm, bank, media_noise=0.0)
    assert torch.equal(clean.example(conv).embeds, clean.example(conv).embeds)


def test_an_average_without_warm_up_weighs_each_step_by_its_decay_from_the_first():
    """`instruct`'s weight average: decay d from the first step, so after k updates the starting
    weights keep d**k of the average and the window is about 1 / (1 - d) steps."""
    layer = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(layer.weight)
    average = EMA(layer, decay=0.9, warmup=False)
    for k in range(1, 4):
        with torch.no_grad():
            layer.weight.fill_(1.0)
        average.update()
        torch.testing.assert_close(average.shadow["weight"], torch.full((1, 2), 1 - 0.9 ** k))
    average.copy_to(layer)
    torch.testing.assert_close(layer.weight.detach(), torch.full((1, 2), 1 - 0.9 ** 3))
    assert 0 < INSTRUCT_EMA < 1
    torch.nn.init.zeros_(layer.weight)
    warmed = EMA(layer, decay=0.9)  # the decoder stages' average, as before: its first update keeps 2/11
    with torch.no_grad():
        layer.weight.fill_(1.0)
    warmed.update()
    torch.testing.assert_close(warmed.shadow["weight"], torch.full((1, 2), 1 - 2 / 11))
