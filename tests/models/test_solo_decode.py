"""A lone request's fast path (models/solo_decode.py): static KV cache and compiled step, here
compiled with dynamo's "eager" backend (the same whole-graph trace inductor compiles on a GPU, so
a graph break fails here too). Its results equal `generate`'s, and a row moves between the static
and the shared dynamic cache as requests join and leave."""
import threading

import torch

from models.generate import GenerationCancelled, SamplingParams, generate
from models.llm_batching import BatchingGenerator
from models.solo_decode import SoloSpec
from models.types import Message
from tests.models.test_batching import run_in_threads
from tests.models.test_llm_batching import CASES, assert_same, prompts

TRACED = SoloSpec(max_len=128, compile_backend="eager")


@torch.inference_mode()
def test_a_lone_request_on_the_static_path_equals_generate(lm, stop_ids):
    batcher = BatchingGenerator(lm, max_batch=4, solo=TRACED)
    for embeds, (_, params) in zip(prompts(lm, [n for n, _ in CASES]), CASES):
        alone = generate(lm, embeds, params, stop_ids)
        assert_same(alone, batcher(embeds, params, stop_ids))  # one after another: each alone
    assert batcher.solo_steps_run == batcher.steps_run > 0
    batcher.close()


@torch.inference_mode()
def test_the_lone_row_moves_to_the_shared_cache_when_another_joins_and_back(lm):
    long_embeds, short_embeds = prompts(lm, [4, 11], seed=1)
    long_params = SamplingParams(max_new_tokens=60, temperature=0.0)
    short_params = SamplingParams(max_new_tokens=5, top_p=0.9, seed=7)
    alone = [generate(lm, long_embeds, long_params, set()), generate(lm, short_embeds, short_params, set())]
    batcher = BatchingGenerator(lm, max_batch=4, solo=TRACED)
    tokens, ten = [], threading.Event()

    def on_token(t):
        tokens.append(t)
        if len(tokens) == 10:
            ten.set()

    threads, results = run_in_threads(lambda: batcher(long_embeds, long_params, set(), on_token), [()])
    assert ten.wait(60)  # ten tokens in, alone: on the static path
    solo_before = batcher.solo_steps_run
    short = batcher(short_embeds, short_params, set())
    threads[0].join(60)
    assert solo_before >= 9 and batcher.largest_batch == 2
    assert batcher.solo_steps_run > solo_before  # alone again after the short one left
    assert batcher.steps_run > batcher.solo_steps_run  # and batched while both ran
    assert_same(alone[0], results[0])
    assert_same(alone[1], short)
    assert tokens == alone[0][0].ids
    batcher.close()


@torch.inference_mode()
def test_a_request_longer_than_the_static_cache_decodes_on_the_dynamic_path(lm):
    embeds, = prompts(lm, [12], seed=3)
    params = SamplingParams(max_new_tokens=20, temperature=0.0)
    batcher = BatchingGenerator(lm, max_batch=2, solo=SoloSpec(max_len=16, compile_backend="eager"))
    assert_same(generate(lm, embeds, params, set()), batcher(embeds, params, set()))
    assert batcher.solo_steps_run == 0 and batcher.steps_run > 0
    batcher.close()


def test_the_model_turns_the_static_path_on_for_a_gpu_or_when_asked(tiny_dir):
    from models.nextgpt import NextGPT

    model = NextGPT.from_pretrained(tiny_dir)
    messages = [Message("user", "Tell me about number 3.")]
    sampling = SamplingParams(max_new_tokens=12, seed=5)
    direct = model.language(messages, sampling=sampling, required=["image"])
    model.enable_llm_batching(1, static="auto")  # on the CPU, one row: nothing to do
    assert model.llm_batcher is None
    model.enable_llm_batching(2, static="on", compile_backend="eager")
    fast = model.language(messages, sampling=sampling, required=["image"])
    assert model.llm_batcher.solo_steps_run > 0
    model.close()
    assert fast.text == direct.text and fast.ids == direct.ids
    torch.testing.assert_close(fast.conditions["image"], direct.conditions["image"], atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_a_failing_static_step_falls_back_to_the_dynamic_path(lm, monkeypatch):
    """A compile that fails on the first token (an unsupported layer, no compiler) costs nothing
    but the speed: the row goes back to the dynamic cache and the answer is the same."""
    from models import solo_decode

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(solo_decode, "solo_step", broken)
    embeds, = prompts(lm, [7], seed=4)
    params = SamplingParams(max_new_tokens=9, top_p=0.9, seed=11)
    batcher = BatchingGenerator(lm, max_batch=2, solo=SoloSpec(max_len=64, compile_backend=None))
    assert_same(generate(lm, embeds, params, set()), batcher(embeds, params, set()))
    assert batcher.solo_steps_run == 0 and batcher._solo is None
    assert_same(generate(lm, embeds, params, set()), batcher(embeds, params, set()))  # and it serves on
    batcher.close()


def test_merged_lora_serves_the_same_answers(tiny_dir):
    """The server folds the LoRA deltas into the base weights: same ids and conditions, the LoRA
    weights themselves untouched (the release checkpoint is what it was)."""
    from models.nextgpt import NextGPT

    model = NextGPT.from_pretrained(tiny_dir)
    lora_before = {k: v.clone() for k, v in model.llm.llama_model.state_dict().items() if "lora_" in k}
    messages = [Message("user", "Show me number 4.")]
    sampling = SamplingParams(max_new_tokens=12, seed=5)
    before = model.language(messages, sampling=sampling, required=["image"])
    assert model.merge_lora()
    after = model.language(messages, sampling=sampling, required=["image"])
    lora_after = {k: v for k, v in model.llm.llama_model.state_dict().items() if "lora_" in k}
    model.close()
    assert lora_before and all(torch.equal(lora_before[k], lora_after[k]) for k in lora_before)
    assert after.ids == before.ids
    torch.testing.assert_close(after.conditions["image"], before.conditions["image"], atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_cancelling_the_lone_request_frees_the_static_cache_for_the_next(lm):
    first, second = prompts(lm, [6, 8], seed=2)
    batcher = BatchingGenerator(lm, max_batch=1, solo=TRACED)
    stop, count = threading.Event(), [0]

    def on_token(_):
        count[0] += 1
        if count[0] == 3:
            stop.set()

    threads, results = run_in_threads(
        lambda: batcher(first, SamplingParams(max_new_tokens=200, temperature=0.0), set(), on_token, stop.is_set), [()])
    threads[0].join(60)
    assert isinstance(results[0], GenerationCancelled) and count[0] == 3
    assert not batcher._solo.active  # its columns are free
    params = SamplingParams(max_new_tokens=15, temperature=0.0)
    assert_same(generate(lm, second, params, set()), batcher(second, params, set()))
    assert batcher.solo_steps_run > 3  # the next request took the static path too
    batcher.close()
