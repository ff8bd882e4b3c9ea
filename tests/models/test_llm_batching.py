"""Continuous batching of generation: batched results equal unbatched ones, requests join and
leave the running batch, cancelled requests free their row."""
import threading

import pytest
import torch
from transformers import DynamicCache

from models.generate import GenerationCancelled, SamplingParams, generate
from models.llm_batching import BatchingGenerator, SharedCache
from models.types import Message
from tests.models.test_batching import run_in_threads, wait_until

CASES = [  # prompt length, sampling
    (5, SamplingParams(max_new_tokens=20, seed=1)),  # the demo's near-greedy nucleus
    (9, SamplingParams(max_new_tokens=7, top_p=0.9, seed=2)),
    (3, SamplingParams(max_new_tokens=30, temperature=0.8, top_p=0.95, seed=3)),
    (12, SamplingParams(max_new_tokens=12, temperature=0.0)),
]


def prompts(lm, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, n, lm.config.hidden_size, generator=g) * 0.05 for n in lengths]


def assert_same(alone, batched):
    (g1, c1), (g2, c2) = alone, batched
    assert g2.ids == g1.ids and g2.finish_reason == g1.finish_reason
    assert len(g2.hidden) == len(g1.hidden)
    for a, b in zip(g1.hidden, g2.hidden):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert c2.get_seq_length() == c1.get_seq_length()
    for l1, l2 in zip(c1.layers, c2.layers):
        torch.testing.assert_close(l2.keys, l1.keys, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(l2.values, l1.values, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_batched_equals_unbatched(lm, stop_ids):
    embeds = prompts(lm, [n for n, _ in CASES])
    alone = [generate(lm, e, p, stop_ids) for e, (_, p) in zip(embeds, CASES)]
    batcher = BatchingGenerator(lm, max_batch=8, start=False)
    threads, results = run_in_threads(lambda e, p: batcher(e, p, stop_ids), [(e, p) for e, (_, p) in zip(embeds, CASES)])
    wait_until(lambda: batcher.queue_depth == len(CASES))
    batcher.start()
    for t in threads:
        t.join(60)
    assert batcher.largest_batch == len(CASES)
    assert batcher.steps_run < sum(len(g.ids) for g, _ in alone)  # tokens shared forward passes
    for a, b in zip(alone, results):
        assert_same(a, b)
    batcher.close()


@torch.inference_mode()
def test_a_request_joins_a_running_batch_and_leaves_it_when_done(lm, stop_ids):
    long_embeds, short_embeds = prompts(lm, [4, 11], seed=1)
    long_params = SamplingParams(max_new_tokens=60, temperature=0.0)
    short_params = SamplingParams(max_new_tokens=5, top_p=0.9, seed=7)
    alone = [generate(lm, long_embeds, long_params, set()), generate(lm, short_embeds, short_params, set())]
    batcher = BatchingGenerator(lm, max_batch=4)
    tokens = []
    ten = threading.Event()

    def on_token(t):
        tokens.append(t)
        if len(tokens) == 10:
            ten.set()

    threads, results = run_in_threads(lambda: batcher(long_embeds, long_params, set(), on_token), [()])
    assert ten.wait(30)  # the long request is ten tokens in when the short one arrives
    short = batcher(short_embeds, short_params, set())
    assert len(tokens) < 60  # the short one finished while the long one was still generating
    threads[0].join(60)
    assert batcher.largest_batch == 2
    assert_same(alone[0], results[0])
    assert_same(alone[1], short)
    assert tokens == alone[0][0].ids  # streamed as generated
    batcher.close()


@torch.inference_mode()
def test_cancelling_a_running_request_frees_its_row(lm, stop_ids):
    first, second = prompts(lm, [6, 8], seed=2)
    params = SamplingParams(max_new_tokens=200, temperature=0.0)
    expected = generate(lm, second, SamplingParams(max_new_tokens=15, temperature=0.0), set())
    batcher = BatchingGenerator(lm, max_batch=1)
    stop = threading.Event()
    count = [0]

    def on_token(_):
        count[0] += 1
        if count[0] == 3:
            stop.set()

    threads, results = run_in_threads(lambda: batcher(first, params, set(), on_token, stop.is_set), [()])
    wait_until(lambda: batcher.steps_run >= 1)
    waiting = batcher(second, SamplingParams(max_new_tokens=15, temperature=0.0), set())
    threads[0].join(30)
    assert isinstance(results[0], GenerationCancelled)
    assert count[0] == 3  # stopped at its next step, not at the end of its 200 tokens
    assert_same(expected, waiting)
    batcher.close()


def test_a_request_cancelled_while_waiting_leaves_the_queue(lm):
    batcher = BatchingGenerator(lm, max_batch=1, start=False)
    stop = threading.Event()
    threads, results = run_in_threads(
        lambda: batcher(prompts(lm, [3])[0], SamplingParams(max_new_tokens=5), set(), None, stop.is_set), [()])
    wait_until(lambda: batcher.queue_depth == 1)
    stop.set()
    threads[0].join(10)
    assert isinstance(results[0], GenerationCancelled) and batcher.queue_depth == 0
    batcher.close()


def test_closing_answers_every_waiting_caller(lm):
    batcher = BatchingGenerator(lm, max_batch=1, start=False)
    threads, results = run_in_threads(lambda: batcher(prompts(lm, [3])[0], SamplingParams(max_new_tokens=5), set()),
                                      [()])
    wait_until(lambda: batcher.queue_depth == 1)
    batcher.close()
    threads[0].join(10)
    assert isinstance(results[0], GenerationCancelled)
    with pytest.raises(RuntimeError, match="closed"):
        batcher(prompts(lm, [3])[0], SamplingParams(max_new_tokens=5), set())


@torch.inference_mode()
def test_a_prompt_that_fails_fails_alone(lm):
    good, = prompts(lm, [4])
    bad = torch.randn(1, 4, lm.config.hidden_size + 1)  # the wrong width: the prefill raises
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    expected = generate(lm, good, params, set())
    batcher = BatchingGenerator(lm, max_batch=4, start=False)
    threads, results = run_in_threads(lambda e: batcher(e, params, set()), [(bad,), (good,)])
    wait_until(lambda: batcher.queue_depth == 2)
    batcher.start()
    for t in threads:
        t.join(30)
    assert isinstance(results[0], RuntimeError)
    assert_same(expected, results[1])
    assert batcher(good, params, set())[0].ids == expected[0].ids  # and the worker serves on
    batcher.close()


def single(length: int, value: float) -> DynamicCache:
    k = torch.full((1, 2, length, 4), value)
    return DynamicCache([(k, k + 100)])


def test_shared_cache_pads_on_the_left_and_gives_each_row_back_unpadded():
    shared = SharedCache()
    shared.add(single(3, 1.0))
    shared.add(single(5, 2.0))  # longer: the first row is padded
    shared.add(single(2, 3.0))  # shorter: it pads itself
    assert shared.mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]
    assert shared.positions().flatten().tolist() == [3, 5, 2]
    for row, (length, value) in enumerate([(3, 1.0), (5, 2.0), (2, 3.0)]):
        cache = shared.row(row)
        assert cache.get_seq_length() == length
        assert torch.equal(cache.layers[0].keys, torch.full((1, 2, length, 4), value))
        assert torch.equal(cache.layers[0].values, torch.full((1, 2, length, 4), value + 100))
    shared.keep([0, 2])  # the longest row leaves: columns no row uses go too
    assert shared.mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert torch.equal(shared.row(1).layers[0].keys, torch.full((1, 2, 2, 4), 3.0))
    shared.keep([])
    assert shared.rows == 0


def test_language_through_the_batcher_equals_the_direct_path(tiny_dir):
    from models.nextgpt import NextGPT

    model = NextGPT.from_pretrained(tiny_dir)
    messages = [[Message("user", f"Tell me about number {i}.")] for i in range(3)]
    sampling = SamplingParams(max_new_tokens=12, seed=5)
    direct = [model.language(m, sampling=sampling, required=["image"]) for m in messages]
    model.enable_llm_batching(4)
    threads, batched = run_in_threads(lambda m: model.language(m, sampling=sampling, required=["image"]),
                                      [(m,) for m in messages])
    for t in threads:
        t.join(60)
    model.close()
    for a, b in zip(direct, batched):
        assert b.text == a.text and b.ids == a.ids
        torch.testing.assert_close(b.conditions["image"], a.conditions["image"], atol=1e-4, rtol=1e-4)
