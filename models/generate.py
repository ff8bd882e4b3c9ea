"""Token generation with a KV cache, gpt-fast style: prefill, decode_one_token, sample.

Only the last layer's post-norm hidden state is kept, and only for generated positions: the
reference kept every layer's states and attentions of every step to read a handful of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import DynamicCache


class GenerationCancelled(Exception):
    """Raised inside generation or decoding when the caller asked to stop."""


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 246  # the reference demo's default
    temperature: float = 1.0
    top_p: float = 0.01  # the demo's value: effectively greedy
    seed: int | None = None


@dataclass
class Generation:
    ids: list[int]  # generated ids, stop token excluded
    hidden: list[torch.Tensor] = field(default_factory=list)  # hidden[i]: (H,) at ids[i] as input
    finish_reason: str = "stop"  # "stop" | "length"


def forward_embeds(lm, embeds: torch.Tensor, cache: DynamicCache) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, T, H) embeddings -> (logits of the last position (1, V), last-layer states (1, T, H))."""
    out = lm.model(inputs_embeds=embeds, cache=cache, use_cache=True)
    hidden = out.last_hidden_state  # (1, T, H), after the final RMSNorm
    return lm.lm_head(hidden[:, -1]).float(), hidden


def prefill(lm, inputs_embeds: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
    logits, _ = forward_embeds(lm, inputs_embeds, cache)
    return logits  # (1, V)


def decode_one_token(lm, token: int, cache: DynamicCache) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[token]], device=lm.lm_head.weight.device)
    logits, hidden = forward_embeds(lm, lm.model.embed_tokens(ids), cache)
    return logits, hidden[0, -1]  # (1, V), (H,)


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """Nucleus sampling; temperature 0 or a nucleus of one token is greedy."""
    if temperature <= 0:
        return int(logits.argmax(dim=-1))
    probs = torch.softmax(logits[0] / temperature, dim=-1)  # (V,)
    sorted_probs, order = torch.sort(probs, descending=True)
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    keep = cumulative - sorted_probs < top_p  # always keeps the most likely token
    sorted_probs = sorted_probs * keep
    choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
    return int(order[choice])


def seeded_generator(params: SamplingParams, device) -> torch.Generator | None:
    if params.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(params.seed)


def accept_token(result: Generation, logits: torch.Tensor, params: SamplingParams, stop_ids: set[int],
                 generator: torch.Generator | None, on_token: Callable[[int], None] | None = None) -> bool:
    """Sample the next token from `logits` (1, V) into `result`. True while it must be fed to the
    model: False at a stop token (not kept) or once `max_new_tokens` are out (the last one is
    never fed: nothing would read its output)."""
    if len(result.ids) >= params.max_new_tokens:
        result.finish_reason = "length"
        return False
    token = sample(logits, params.temperature, params.top_p, generator)
    if token in stop_ids:
        return False
    result.ids.append(token)
    if on_token is not None:
        on_token(token)
    if len(result.ids) >= params.max_new_tokens:
        result.finish_reason = "length"
        return False
    return True


def generate(
    lm,
    inputs_embeds: torch.Tensor,
    params: SamplingParams,
    stop_ids: set[int],
    on_token: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[Generation, DynamicCache]:
    """Generate from prompt embeddings; every generated token except possibly the last is fed."""
    generator = seeded_generator(params, inputs_embeds.device)
    cache = DynamicCache()
    logits = prefill(lm, inputs_embeds, cache)
    result = Generation(ids=[])
    while True:
        if should_stop is not None and should_stop():
            raise GenerationCancelled()
        if not accept_token(result, logits, params, stop_ids, generator, on_token):
            return result, cache
        logits, hidden = decode_one_token(lm, result.ids[-1], cache)
        result.hidden.append(hidden)


def feed_tokens(lm, ids: list[int], cache: DynamicCache) -> torch.Tensor:
    """Run `ids` through the model after what the cache holds; their last-layer states (N, H)."""
    t = torch.tensor([ids], device=lm.lm_head.weight.device)
    _, hidden = forward_embeds(lm, lm.model.embed_tokens(t), cache)
    return hidden[0]
