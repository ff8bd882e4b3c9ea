"""Speed-ups of a stock diffusers pipeline where it runs on a GPU: channels_last memory, fused QKV
projections and a compiled UNet. The server applies them to its decoders
(`NextGPT.accelerate_decoders`),
and `server/bench/gpu.py` measures them against the stock pipeline, through this one function.

They change how the same arithmetic is laid out, not what it computes: fused QKV is one matmul
instead of three (outputs equal to rounding), channels_last and compilation reorder memory and
fuse kernels. A UNet under diffusers' CPU offload is left alone: its hooks move weights between
devices on every call, which neither a compiled graph nor a fixed memory layout survives.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Acceleration:
    """What to apply. The defaults are what pays on a CUDA GPU."""

    fuse_qkv: bool = True  # one (3C, C) matmul per attention instead of three: fewer, larger kernels
    channels_last: bool = True  # NHWC convolutions: cuDNN's fast layout for fp16 tensor cores
    compile_backend: str | None = "inductor"  # None: eager; "eager": tracing only (a CPU check of the path)
    # None: inductor's default (no CUDA graphs): a concurrent batch of any size reuses one graph
    # family. "reduce-overhead" adds CUDA graphs, faster still per step, but records one graph (and
    # its memory) per batch size and resolution.
    compile_mode: str | None = None


def prepare_thread_for_cuda_graphs() -> None:
    """Give the calling worker thread its own CUDA-graph-tree state.

    Before torch 2.13, inductor sets that state up only in the thread that imports it (and in
    autograd's threads), so a `reduce-overhead` compiled function called from any other thread
    fails on an assertion in `cudagraph_trees.get_obj` (pytorch#123177). The server runs the
    LLM's compiled decode step and the decoders on worker threads: each calls this first. Newer
    torch sets the state up lazily itself; on a machine without CUDA there is nothing to prepare.
    """
    if not torch.cuda.is_available():
        return
    from torch._inductor import cudagraph_trees as trees

    if hasattr(trees.local, "tree_manager_containers") or torch._C._is_key_in_tls("tree_manager_containers"):
        return
    trees.local.tree_manager_containers = {}  # one tree manager per device, this thread's own
    trees.local.tree_manager_locks = defaultdict(threading.Lock)
    torch._C._stash_obj_in_tls("tree_manager_containers", trees.local.tree_manager_containers)
    torch._C._stash_obj_in_tls("tree_manager_locks", trees.local.tree_manager_locks)


def for_modality(modality: str, compile_mode: str | None = None) -> Acceleration:
    """The speed-ups for one decoder. AudioLDM's UNet calls its cross-attention blocks without
    encoder states (it is conditioned through `class_labels`), so they attend to themselves
    through separate K and V weights, which a fused K/V projection would drop."""
    return Acceleration(fuse_qkv=modality != "audio", compile_mode=compile_mode)


def accelerate_pipeline(pipe, device: str | torch.device, acc: Acceleration = Acceleration()):
    """Apply `acc` to `pipe` in place (its UNet and VAE) and return it."""
    from diffusers import UNet3DConditionModel

    on_gpu = torch.device(device).type == "cuda"
    unet = pipe.unet
    if acc.channels_last and on_gpu:
        if not isinstance(unet, UNet3DConditionModel):  # a UNet3D's Conv3d weights are 5-D: no NHWC for them
            unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if acc.fuse_qkv:
        unet.fuse_qkv_projections()
    if acc.compile_backend:
        mode = acc.compile_mode if acc.compile_backend == "inductor" else None
        pipe.unet = torch.compile(unet, backend=acc.compile_backend, mode=mode)
    return pipe


def uncompiled(module):
    """The module a `torch.compile` wrapped (or the module itself)."""
    return getattr(module, "_orig_mod", module)
