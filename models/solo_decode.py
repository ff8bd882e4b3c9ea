"""The fast path of a lone request: a static KV cache and a compiled decode step (gpt-fast style).

One stream is memory-bandwidth bound on a GPU, and eager transformers spends most of each token
launching a 32-layer model's small kernels from Python. A `torch.compile`d step over a cache of
fixed shape (transformers' StaticCache, written in place) runs the token as one graph (with
"reduce-overhead", one CUDA-graph replay). The continuous batcher (models/llm_batching.py) uses it
while a single request is running, the latency case, and moves that row into its shared dynamic
cache the moment another request joins (and back when it is alone again): batches of changing
size and padding stay eager, where a fixed-shape graph would read every slot's cache each token.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformers import DynamicCache, StaticCache


@dataclass(frozen=True)
class SoloSpec:
    """How the lone request's steps run."""

    max_len: int  # cache columns: prompt + generated tokens of a request that takes the fast path
    compile_backend: str | None = "inductor"  # None: eager; "eager": dynamo tracing only (a CPU check)
    compile_mode: str | None = "reduce-overhead"  # CUDA graphs: one shape, one graph
    # gpt-fast's inductor setting, for this compile only: each batch-1 matrix-vector kernel's blocks
    # tuned (201.5 -> 217.6 tok/s on an H200, docs/gpu-bench.md); left on globally it stretches
    # the UNets' compiles past minutes
    tune_kernels: bool = True


def solo_step(model, embeds: torch.Tensor, position: torch.Tensor, cache: StaticCache):
    """One token: embeds (1, 1, H) at `position` (1, 1) -> last-layer state (1, H); the cache
    writes its keys and values in place at its own length, which is the position."""
    out = model(inputs_embeds=embeds, position_ids=position, cache=cache, use_cache=True)
    return out.last_hidden_state[:, -1]


class SoloCache:
    """One request's KV cache in static buffers of `spec.max_len` columns, and the compiled step."""

    def __init__(self, lm, spec: SoloSpec):
        self.lm = lm
        self.spec = spec
        with torch.inference_mode(False):  # plain tensors, whatever mode the caller builds it in
            self.cache = StaticCache(config=lm.config, max_cache_len=spec.max_len)
        self.length = 0  # columns in use; 0: holds no request
        self.step_fn = solo_step
        if spec.compile_backend:
            mode = spec.compile_mode if spec.compile_backend == "inductor" else None
            self.step_fn = torch.compile(solo_step, backend=spec.compile_backend, mode=mode, fullgraph=True)

    def _compile_settings(self):
        if self.spec.compile_backend == "inductor" and self.spec.tune_kernels:
            import torch._inductor.config as inductor_config

            return inductor_config.patch(coordinate_descent_tuning=True)
        return contextlib.nullcontext()

    @property
    def active(self) -> bool:
        return self.length > 0

    def fits(self, length: int, new_tokens: int) -> bool:
        return length + new_tokens <= self.spec.max_len

    @torch.inference_mode(False)  # the buffers and the graph are plain tensors, under no_grad
    @torch.no_grad()  # (as the measured bench and transformers' compiled generate run them)
    def load(self, row: DynamicCache) -> None:
        """Take a request's own cache (batch 1, no padding) into the static buffers."""
        layers = [(layer.keys, layer.values) for layer in row.layers]
        keys, values = layers[0]
        if not self.cache.is_initialized:
            self.cache.early_initialization(1, keys.shape[1], keys.shape[-1], keys.dtype, keys.device)
        n = keys.shape[-2]
        for layer, (k, v) in zip(self.cache.layers, layers):
            layer.keys[:, :, :n].copy_(k)
            layer.values[:, :, :n].copy_(v)
            layer.cumulative_length.fill_(n)  # in place: the compiled graph holds its address
        self.length = n

    def unload(self) -> DynamicCache:
        """The request's cache as `generate` would hold it; the buffers are free again."""
        row = self.row()
        self.clear()
        return row

    def row(self) -> DynamicCache:
        n = self.length
        return DynamicCache([(layer.keys[:, :, :n].clone(), layer.values[:, :, :n].clone())
                             for layer in self.cache.layers])

    def clear(self) -> None:
        self.length = 0

    @torch.inference_mode(False)
    @torch.no_grad()
    def step(self, token: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed `token` -> logits (1, V) and last-layer state (1, H)."""
        lm = self.lm
        device = lm.lm_head.weight.device
        embeds = lm.model.embed_tokens(torch.tensor([[token]], device=device))  # (1, 1, H)
        position = torch.tensor([[self.length]], device=device)
        with self._compile_settings():
            hidden = self.step_fn(lm.model, embeds, position, self.cache).clone()  # CUDA-graph outputs are reused
        self.length += 1
        return lm.lm_head(hidden).float(), hidden
