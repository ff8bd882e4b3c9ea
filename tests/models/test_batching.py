"""Decoder batching across requests: same results as unbatched, cancelled requests leave."""
import threading

import numpy as np
import pytest
import torch

from models.batching import BatchingDecoder
from models.generate import GenerationCancelled


def wait_until(predicate, timeout=10.0):
    event = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        event.wait(0.01)
    raise AssertionError("condition not reached")


def run_in_threads(fn, args_list):
    results = [None] * len(args_list)

    def work(i, args):
        try:
            results[i] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc
    threads = [threading.Thread(target=work, args=(i, a)) for i, a in enumerate(args_list)]
    for t in threads:
        t.start()
    return threads, results


def test_batched_equals_unbatched(tiny_model):
    decoder = tiny_model.decoders["image"]
    params = tiny_model.decoder_params("image")
    torch.manual_seed(0)
    conditions = [torch.randn(1, 77, 32) for _ in range(3)]
    seeds = [1, 2, 3]
    alone = [decoder(c, params, [s])[0] for c, s in zip(conditions, seeds)]
    batcher = BatchingDecoder(decoder, max_batch=8, start=False)
    threads, results = run_in_threads(batcher, [(c, params, s) for c, s in zip(conditions, seeds)])
    wait_until(lambda: batcher.queue_depth == 3)
    batcher.start()
    for t in threads:
        t.join(60)
    assert batcher.batches_run == 1 and batcher.largest_batch == 3
    for a, b in zip(alone, results):
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1
    batcher.close()


def test_different_parameters_are_not_batched_together(tiny_model):
    decoder = tiny_model.decoders["image"]
    p1 = tiny_model.decoder_params("image")
    p2 = tiny_model.decoder_params("image", {"height": 16})
    batcher = BatchingDecoder(decoder, start=False)
    threads, results = run_in_threads(batcher, [(torch.randn(1, 77, 32), p, 0) for p in (p1, p2)])
    wait_until(lambda: batcher.queue_depth == 2)
    batcher.start()
    for t in threads:
        t.join(60)
    assert batcher.batches_run == 2 and {r.size for r in results} == {(32, 32), (32, 16)}
    batcher.close()


def test_cancelled_request_frees_its_slot(tiny_model):
    decoder = tiny_model.decoders["image"]
    params = tiny_model.decoder_params("image")
    stop = threading.Event()
    batcher = BatchingDecoder(decoder, start=False)
    threads, results = run_in_threads(batcher, [(torch.randn(1, 77, 32), params, 0, None, stop.is_set),
                                                (torch.randn(1, 77, 32), params, 1, None, None)])
    wait_until(lambda: batcher.queue_depth == 2)
    stop.set()
    threads[0].join(10)
    assert isinstance(results[0], GenerationCancelled)
    assert batcher.queue_depth == 1  # the cancelled request left the queue before any batch formed
    batcher.start()
    threads[1].join(60)
    assert results[1].size == (32, 32) and batcher.largest_batch == 1
    batcher.close()


def test_decoder_failure_reaches_every_waiter_and_worker_survives(tiny_model):
    decoder = tiny_model.decoders["image"]
    params = tiny_model.decoder_params("image")
    batcher = BatchingDecoder(decoder)
    with pytest.raises(Exception):
        batcher(torch.randn(1, 5, 7), params, 0)  # wrong conditioning width
    assert batcher(torch.randn(1, 77, 32), params, 0).size == (32, 32)
    batcher.close()


def test_decoder_pauses_inside_a_denoising_step(tiny_model):
    """A decoder sharing the CPU with the LLM can give way inside a step, not only between two."""
    decoder = tiny_model.decoders["video"]
    params = tiny_model.decoder_params("video", {"num_inference_steps": 2})
    entered, go = threading.Event(), threading.Event()
    calls = []

    def wait():
        calls.append(len(steps))
        entered.set()
        go.wait(60)

    steps = []
    hooks = decoder.pause_inside_steps(wait)
    try:
        threads, results = run_in_threads(
            lambda: decoder(torch.randn(1, 77, 32), params, [0], on_step=lambda s, n: steps.append(s)), [()])
        assert entered.wait(60)
        assert steps == []  # held inside the first step's UNet call
        go.set()
        threads[0].join(60)
    finally:
        for hook in hooks:
            hook.remove()
    assert steps == [1, 2] and not isinstance(results[0], BaseException)
    unet = decoder.pipe.unet
    per_call = len(unet.down_blocks) + 1 + len(unet.up_blocks)
    assert len(calls) == 2 * per_call and calls[0] == 0 and calls[-1] == 1  # every block of both steps
    calls.clear()
    decoder(torch.randn(1, 77, 32), params, [0])
    assert calls == []  # removed hooks stay removed


def test_a_batch_forms_only_after_before_batch_returns(tiny_model):
    """The server makes a decoder wait while text is pending, so requests still in the LLM join
    the next batch instead of queueing behind a batch of one."""
    decoder = tiny_model.decoders["image"]
    params = tiny_model.decoder_params("image")
    go, entered = threading.Event(), threading.Event()
    batcher = BatchingDecoder(decoder, max_batch=8, start=False)
    batcher.before_batch = lambda: (entered.set(), go.wait(60))
    batcher.start()
    first, results = run_in_threads(batcher, [(torch.randn(1, 77, 32), params, 0)])
    assert entered.wait(60)  # work arrived; the worker holds before taking it
    later, more = run_in_threads(batcher, [(torch.randn(1, 77, 32), params, s) for s in (1, 2)])
    wait_until(lambda: batcher.queue_depth == 3)
    go.set()
    for t in first + later:
        t.join(60)
    assert batcher.batches_run == 1 and batcher.largest_batch == 3
    assert all(r is not None and not isinstance(r, BaseException) for r in results + more)
    batcher.close()
