"""LLM decode speed, one stream: HF generate (the stock way), the project's generate() (DynamicCache,
eager), and a static KV cache with a torch.compile'd decode step (gpt-fast style).

The static way: prefill runs eager into a transformers StaticCache; each later token is one call of
a compiled `decode_step` (mode "reduce-overhead": CUDA graphs), tokens stay on the GPU, and the
loop syncs once at the end. The "streamed" variant syncs every token, as a server streaming text
must. One stream is memory-bandwidth bound: every token reads every weight once, so
tokens/s <= bandwidth / weight bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import StaticCache

# HBM bandwidth by device name (first match wins), TB/s: vendors' datasheets.
BANDWIDTH_TBS = (("GH200", 4.0), ("H200", 4.8), ("H100 NVL", 3.9), ("H100 PCIe", 2.0), ("H100", 3.35),
                 ("A100-SXM4-80GB", 2.039), ("A100 80GB PCIe", 1.935), ("A100", 1.555), ("L40S", 0.864),
                 ("RTX 4090", 1.008), ("A10G", 0.6), ("L4", 0.3))


def bandwidth_tbs(device_name: str) -> float | None:
    for key, tbs in BANDWIDTH_TBS:
        if key in device_name:
            return tbs
    return None


def bytes_read_per_token(model) -> int:
    """Every weight except the input embedding table (of which one row is read per token)."""
    embed = model.get_input_embeddings().weight
    return sum(p.numel() * p.element_size() for p in model.parameters() if p is not embed)


def decode_step(model, token: torch.Tensor, position: torch.Tensor, cache: StaticCache) -> torch.Tensor:
    """One generated token: (1, 1) id at `position` -> the next greedy id (1, 1), KV written in place."""
    out = model(input_ids=token, position_ids=position, cache=cache, use_cache=True)
    return out.logits[:, -1].argmax(dim=-1, keepdim=True)


@dataclass
class StaticDecoder:
    """A StaticCache sized once and a compiled decode step reused for every generation (under
    no_grad, as gpt-fast and transformers' generate run compiled steps, not inference_mode)."""

    model: object
    max_len: int
    compile_backend: str | None = "inductor"  # None: eager; "eager": dynamo tracing only (CPU checks)
    compile_mode: str | None = "reduce-overhead"

    def __post_init__(self):
        self.cache = StaticCache(config=self.model.config, max_cache_len=self.max_len)
        self.step = decode_step
        if self.compile_backend:
            mode = self.compile_mode if self.compile_backend == "inductor" else None
            self.step = torch.compile(decode_step, backend=self.compile_backend, mode=mode, fullgraph=True)

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        self.cache.reset()
        positions = torch.arange(ids.shape[1], device=ids.device)[None]
        out = self.model(input_ids=ids, position_ids=positions, cache=self.cache, use_cache=True)
        return out.logits[:, -1].argmax(dim=-1, keepdim=True)

    @torch.no_grad()
    def decode(self, first: torch.Tensor, start: int, n: int, stream: bool = False) -> torch.Tensor:
        """n tokens after `first` (at position `start`); `stream` syncs each token to the host."""
        out = torch.empty((1, n), dtype=torch.long, device=first.device)
        token, position = first, torch.tensor([[start]], device=first.device)
        for i in range(n):
            token = self.step(self.model, token, position, self.cache).clone()  # CUDA-graph outputs are reused
            out[:, i] = token[:, 0]
            position += 1
            if stream:
                token.item()
        return out

    @torch.no_grad()
    def hidden_at(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Feed `ids` after the cached tokens (eager): last-layer states (1, N, H), as the server
        does for the signal tokens."""
        positions = torch.arange(start, start + ids.shape[1], device=ids.device)[None]
        return self.model.model(input_ids=ids, position_ids=positions, cache=self.cache,
                                use_cache=True).last_hidden_state


def hf_generate(model, ids: torch.Tensor, n: int) -> None:
    """The stock way: transformers' generate, greedy, dynamic cache, exactly n new tokens."""
    with torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                       do_sample=False, pad_token_id=0)


def project_generate(model, ids: torch.Tensor, n: int) -> None:
    """The project's own loop (models/generate.py): DynamicCache, eager, last hidden state kept."""
    from models.generate import SamplingParams, generate

    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        generate(model, embeds, SamplingParams(max_new_tokens=n, temperature=0.0), stop_ids=set())


def static_generate(dec: StaticDecoder, ids: torch.Tensor, n: int, stream: bool = False) -> torch.Tensor:
    first = dec.prefill(ids)
    return dec.decode(first, ids.shape[1], n - 1, stream)


def served_generate(batcher, embeds: torch.Tensor, n: int) -> None:
    """The server's way (models/llm_batching.py with models/solo_decode.py): a lone request, its
    prompt prefilled eager, then the static cache and compiled step, sampling on the host."""
    from models.generate import SamplingParams

    batcher(embeds, SamplingParams(max_new_tokens=n, temperature=0.0), stop_ids=set())
