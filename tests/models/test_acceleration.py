"""The decoders' speed-ups (models/acceleration.py) change no output: the tiny pipelines, sped up
with the same code the server runs on a GPU (compiled with dynamo's "eager" backend here, which
traces the UNet as inductor would and runs the traced graph), draw what the stock ones draw."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.acceleration import Acceleration, for_modality, uncompiled
from models.nextgpt import NextGPT

TRACED = Acceleration(compile_backend="eager")


@pytest.fixture(scope="module")
def stock(tiny_dir):
    model = NextGPT.from_pretrained(tiny_dir)
    yield model
    model.close()


def draw(model: NextGPT, modality: str) -> np.ndarray:
    dim = model.decoders[modality].negative.shape[-1]
    shape = (1, dim) if modality == "audio" else (1, 77, dim)
    condition = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    out = model.decode(modality, condition, model.decoder_params(modality, {"num_inference_steps": 3}), seed=7)
    pixels_or_samples = out.frames if modality == "video" else out  # PIL image / waveform
    return np.asarray(pixels_or_samples, dtype=np.float32)


@pytest.mark.parametrize("modality", ["image", "audio", "video"])
def test_a_sped_up_decoder_draws_what_the_stock_one_draws(tiny_dir, stock, modality):
    fast = NextGPT.from_pretrained(tiny_dir, stages=(modality,))
    try:
        acc = for_modality(modality)
        assert fast.decoders[modality].accelerate(Acceleration(fuse_qkv=acc.fuse_qkv, compile_backend="eager"))
        unet = fast.decoders[modality].pipe.unet
        assert unet is not uncompiled(unet)  # compiled
        fused = any(getattr(m, "fused_projections", False) for m in uncompiled(unet).modules())
        assert fused == (modality != "audio")
        a, b = draw(stock, modality), draw(fast, modality)
        tolerance = 2.0 if modality != "audio" else 1e-4  # 8-bit pixels may round the other way
        assert np.abs(a - b).max() <= tolerance, modality
    finally:
        fast.close()


def test_audioldm_keeps_separate_kv_weights():
    """Its cross-attention blocks attend to themselves (no encoder states): a fused K/V would not."""
    assert not for_modality("audio").fuse_qkv and for_modality("image").fuse_qkv and for_modality("video").fuse_qkv


def test_auto_speeds_up_only_decoders_on_a_gpu(tiny_dir):
    model = NextGPT.from_pretrained(tiny_dir, stages=("image",))
    try:
        assert model.accelerate_decoders("auto") == []  # on the CPU: the stock pipelines
        assert model.accelerate_decoders("off") == []
        assert uncompiled(model.decoders["image"].pipe.unet) is model.decoders["image"].pipe.unet
    finally:
        model.close()


def test_pause_points_are_for_an_eager_unet(tiny_dir):
    """On the CPU the scheduler hooks pauses between the UNet's blocks; a compiled UNet runs them
    as one graph, so it gets none (it still pauses between steps)."""
    model = NextGPT.from_pretrained(tiny_dir, stages=("image",))
    try:
        decoder = model.decoders["image"]
        calls = []
        handles = decoder.pause_inside_steps(lambda: calls.append(1))
        params = model.decoder_params("image", {"num_inference_steps": 2})
        condition = torch.zeros(1, 77, decoder.negative.shape[-1])
        model.decode("image", condition, params, seed=0)
        assert handles and len(calls) >= 2 * len(handles)
        for h in handles:
            h.remove()
        decoder.accelerate(TRACED)
        assert decoder.pause_inside_steps(lambda: calls.append(1)) == []
        model.decode("image", condition, params, seed=0)  # and it draws
    finally:
        model.close()


@pytest.mark.gpu
def test_on_a_gpu_the_server_speeds_up_every_decoder_and_the_lone_llm_row(tiny_dir):
    """What `auto` does on a GPU (inductor compiles here: the path the GPU bench measures)."""
    from models.generate import SamplingParams
    from models.types import Message

    model = NextGPT.from_pretrained(tiny_dir, devices="cuda")
    try:
        assert model.merge_lora()
        assert sorted(model.accelerate_decoders("auto")) == ["audio", "image", "video"]
        model.enable_llm_batching(4)
        assert model.llm_batcher._solo is not None
        out = model.chat([Message("user", "draw")], required=["image", "audio", "video"],
                         sampling=SamplingParams(max_new_tokens=6, seed=0),
                         decoder_params={m: {"num_inference_steps": 2} for m in ("image", "audio", "video")})
        assert out.image is not None and out.audio is not None and out.video is not None
        assert model.llm_batcher.solo_steps_run > 0
    finally:
        model.close()


def _cuda_graph_state_in_a_worker(start_worker) -> dict:
    """What a worker thread started by `start_worker(fn)` sees of CUDA-graph-tree state."""
    from torch._inductor import cudagraph_trees as trees

    main = trees.get_obj(trees.local, "tree_manager_containers")
    seen: dict = {}

    def work():
        seen["in_tls"] = torch._C._is_key_in_tls("tree_manager_containers")
        seen["own"] = trees.get_obj(trees.local, "tree_manager_containers") is not main

    start_worker(work)
    return seen


@pytest.fixture
def cuda_claimed(monkeypatch):
    """The helper prepares threads only where CUDA is; the state it sets up is CPU-side."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_the_server_s_worker_threads_get_their_own_cuda_graph_state(cuda_claimed):
    """torch < 2.13 asserts when a CUDA-graphed compiled function runs on a thread inductor did not
    set up (pytorch#123177: the GPU bench hit it in the LLM batcher's worker on torch 2.11). The
    batchers' worker threads and the server's stage threads prepare themselves first."""
    import threading

    from models.call_queue import CallQueue
    from server.metrics import Metrics
    from server.scheduler import Stage

    class Probe(CallQueue):
        def __init__(self, fn):
            self.fn = fn
            super().__init__("probe", start=False)

        def _loop(self):
            self.fn()

    def in_call_queue(fn):
        probe = Probe(fn)
        probe.start()
        probe._worker.join()

    def in_stage(fn):
        stage = Stage("probe", Metrics())
        stage.executor.submit(fn).result()
        stage.executor.shutdown()

    def in_plain_thread(fn):
        from models.acceleration import prepare_thread_for_cuda_graphs

        t = threading.Thread(target=lambda: (prepare_thread_for_cuda_graphs(), fn()))
        t.start()
        t.join()

    for start in (in_call_queue, in_stage, in_plain_thread):
        assert _cuda_graph_state_in_a_worker(start) == {"in_tls": True, "own": True}, start.__name__
