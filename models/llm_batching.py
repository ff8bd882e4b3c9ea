"""Continuous batching of token generation across concurrent requests.

Callers (one thread per request) submit prompt embeddings; one worker runs every admitted
request's next token in ONE forward pass. A request joins the running batch as soon as a row is
free (its prompt is prefilled alone, then its KV cache is merged in, left-padded to the batch's
length) and leaves it the moment it ends, so a short answer never waits for a long one and a
slot never idles while someone waits. Each row samples with its own generator from its own
logits, so a batched result equals the unbatched `generate` for the same seed.

Layout of the shared cache: every layer's keys and values are (B, heads, T, head_dim), each row's
real positions packed to the right; `mask` (B, T) marks them. Padding is only ever added on the
left (a longer newcomer pads the others, a shorter one pads itself), so a row's real positions
are always its last `mask[row].sum()` ones, and its next position id is that count.
"""
from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from .call_queue import CallQueue, cancelled
from .generate import (Generation, GenerationCancelled, SamplingParams, accept_token, forward_embeds,
                       seeded_generator)
from .solo_decode import SoloCache, SoloSpec

log = logging.getLogger(__name__)


@dataclass
class _Request:
    embeds: torch.Tensor  # (1, T, H) the prompt
    params: SamplingParams
    stop_ids: set[int]
    on_token: Callable[[int], None] | None
    should_stop: Callable[[], bool] | None
    future: Future = field(default_factory=Future)
    result: Generation = field(default_factory=lambda: Generation(ids=[]))
    logits: torch.Tensor | None = None  # (1, V): what it samples its next token from
    generator: torch.Generator | None = None

    def cancelled(self) -> bool:
        return cancelled(self)


def _pad_left(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """Zeros in front of `x` along `dim` (counted from the end: -2 for (B, h, T, d), -1 for (B, T))."""
    if n == 0:
        return x
    pad = [0, 0] * (-dim - 1) + [n, 0]
    return F.pad(x, pad)


class SharedCache:
    """The running rows' KV cache and the mask of their real positions. The DynamicCache itself is
    kept between steps (each step appends in place); it is rebuilt only when rows join or leave."""

    def __init__(self):
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (B, T) long, 1 at real positions

    @property
    def rows(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    @property
    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer: keys, values (B, h, T, d)."""
        return [] if self.cache is None else [(layer.keys, layer.values) for layer in self.cache.layers]

    def add(self, cache: DynamicCache) -> None:
        """Append one request's own cache (batch 1, no padding) as the last row."""
        new = [(layer.keys, layer.values) for layer in cache.layers]
        length = new[0][0].shape[-2]
        ones = torch.ones(1, length, dtype=torch.long, device=new[0][0].device)
        if self.mask is None:
            self.cache, self.mask = cache, ones
            return
        width = max(self.mask.shape[1], length)
        grow, short = width - self.mask.shape[1], width - length
        self.cache = DynamicCache([(torch.cat([_pad_left(k, grow, -2), _pad_left(nk, short, -2)]),
                                    torch.cat([_pad_left(v, grow, -2), _pad_left(nv, short, -2)]))
                                   for (k, v), (nk, nv) in zip(self.layers, new)])
        self.mask = torch.cat([_pad_left(self.mask, grow, -1), _pad_left(ones, short, -1)])

    def keep(self, rows: list[int]) -> None:
        """Drop every other row, then the leading columns that are padding in all that remain."""
        if not rows:
            self.cache, self.mask = None, None
            return
        index = torch.tensor(rows, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        start = int((mask.sum(0) > 0).nonzero()[0])  # first column some row still uses
        self.cache = DynamicCache([(k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
                                   for k, v in self.layers])
        self.mask = mask[:, start:]

    def row(self, i: int) -> DynamicCache:
        """Row i's own cache: its real positions only, batch 1, as `generate` would have left it."""
        n = int(self.mask[i].sum())
        return DynamicCache([(k[i:i + 1, :, -n:], v[i:i + 1, :, -n:]) for k, v in self.layers])

    def positions(self) -> torch.Tensor:
        return self.mask.sum(1, keepdim=True)  # (B, 1): each row's next position id


def decode_batch(lm, tokens: list[int], shared: SharedCache) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row through the model -> logits (B, V) and last-layer states (B, H); the
    shared cache grows by one position in place."""
    device = shared.mask.device
    ids = torch.tensor(tokens, device=device).unsqueeze(1)  # (B, 1)
    positions = shared.positions()
    mask = torch.cat([shared.mask, torch.ones_like(positions)], dim=1)  # (B, T + 1)
    out = lm.model(inputs_embeds=lm.model.embed_tokens(ids), attention_mask=mask, position_ids=positions,
                   cache=shared.cache, use_cache=True)
    shared.mask = mask
    hidden = out.last_hidden_state[:, -1]  # (B, H)
    return lm.lm_head(hidden).float(), hidden


class BatchingGenerator(CallQueue):
    """`generate` for many concurrent callers, run as one batch by a single worker thread."""

    def __init__(self, lm, max_batch: int = 8, start: bool = True, solo: SoloSpec | None = None):
        self.lm = lm
        self.max_batch = max_batch
        self.steps_run = 0  # batched decode steps
        self.solo_steps_run = 0  # steps of a lone request on the static, compiled path
        self.largest_batch = 0
        self._rows: list[_Request] = []  # in the order of the shared cache's rows
        self._shared = SharedCache()
        # a lone request's row lives here instead of in _shared (models/solo_decode.py)
        self._solo = SoloCache(lm, solo) if solo is not None else None
        super().__init__("llm-batch", start)

    def __call__(self, inputs_embeds: torch.Tensor, params: SamplingParams, stop_ids: set[int],
                 on_token: Callable[[int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> tuple[Generation, DynamicCache]:
        """What `generate` returns, for this caller alone; raises GenerationCancelled if stopped
        (a running request's row is dropped at the worker's next step)."""
        return self._submit(_Request(inputs_embeds, params, set(stop_ids), on_token, should_stop))

    # ------------------------------------------------------------------ the worker

    @torch.inference_mode()  # this thread's own mode: the callers' does not reach it
    def _loop(self) -> None:
        while self._wait_for_work():
            try:
                self._admit()
                self._sample_rows()
                if self._rows:
                    self._step()
            except BaseException as exc:  # every running caller learns it; the worker lives on
                self._fail_all(exc)

    def _has_work(self) -> bool:
        return bool(self._pending or self._rows)

    def _admit(self) -> None:
        """Prefill waiting requests, alone, while rows are free; each joins the shared cache."""
        while len(self._rows) < self.max_batch:
            with self._cv:
                if not self._pending:
                    return
                request = self._pending.popleft()
            if request.cancelled():
                request.future.set_exception(GenerationCancelled())
                continue
            try:
                cache = self._prefill(request)
            except Exception as exc:  # this request's prompt failed: the batch goes on without it
                request.future.set_exception(exc)
                continue
            self._leave_solo()
            self._shared.add(cache)
            self._rows.append(request)

    def _prefill(self, request: _Request) -> DynamicCache:
        request.generator = seeded_generator(request.params, request.embeds.device)
        cache = DynamicCache()
        request.logits, _ = forward_embeds(self.lm, request.embeds, cache)  # (1, V)
        return cache

    def _sample_rows(self) -> None:
        """Each row's next token, as `generate` samples it; rows that end leave the batch."""
        keep = []
        for i, request in enumerate(self._rows):
            try:
                if self._advance(request):
                    keep.append(i)
                    continue
                request.future.set_result((request.result, self._row_cache(i)))
            except BaseException as exc:  # this caller's callback failed or it was cancelled
                request.future.set_exception(exc)
        if len(keep) < len(self._rows):
            self._rows = [self._rows[i] for i in keep]
            self._keep_caches(keep)

    def _advance(self, request: _Request) -> bool:
        """Sample one token for `request`, as `generate` does; True while it must be fed."""
        if request.cancelled():
            raise GenerationCancelled()
        return accept_token(request.result, request.logits, request.params, request.stop_ids,
                            request.generator, request.on_token)

    def _solo_active(self) -> bool:
        return self._solo is not None and self._solo.active

    def _row_cache(self, i: int) -> DynamicCache:
        return self._solo.row() if self._solo_active() else self._shared.row(i)

    def _keep_caches(self, rows: list[int]) -> None:
        if not self._solo_active():
            self._shared.keep(rows)
        elif not rows:  # the lone row left
            self._solo.clear()

    def _take_solo(self) -> bool:
        """Move a lone row into the static cache (if it is not there yet and fits); True if it is there."""
        if self._solo is None or len(self._rows) != 1:
            return False
        if not self._solo.active:
            request = self._rows[0]
            length = int(self._shared.mask[0].sum())
            if not self._solo.fits(length, request.params.max_new_tokens - len(request.result.ids)):
                return False
            self._solo.load(self._shared.row(0))
            self._shared.keep([])
        return True

    def _leave_solo(self) -> None:
        """Back into the shared dynamic cache (empty while the row was away), before another row joins."""
        if self._solo_active():
            self._shared.add(self._solo.unload())

    def _solo_step(self, token: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            out = self._solo.step(token)
            self.solo_steps_run += 1
            return out
        except Exception:  # a compile that fails (an unsupported layer, no compiler): serve on, eager
            log.exception("the static decode path failed; decoding on the dynamic cache from now on")
            self._leave_solo()  # the row's columns before this token are intact
            self._solo = None
            return decode_batch(self.lm, [token], self._shared)

    def _step(self) -> None:
        tokens = [request.result.ids[-1] for request in self._rows]
        if self._take_solo():
            logits, hidden = self._solo_step(tokens[0])
        else:
            logits, hidden = decode_batch(self.lm, tokens, self._shared)
        self.steps_run += 1
        self.largest_batch = max(self.largest_batch, len(self._rows))
        for i, request in enumerate(self._rows):
            request.logits = logits[i:i + 1]
            request.result.hidden.append(hidden[i])

    def _fail_all(self, exc: BaseException) -> None:
        for request in self._rows:
            if not request.future.done():
                request.future.set_exception(exc)
        self._rows = []
        self._shared = SharedCache()
        if self._solo is not None:
            self._solo.clear()

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking work; callers still waiting or running get GenerationCancelled."""
        for request in self._stop_worker(timeout) + self._rows:
            if not request.future.done():
                request.future.set_exception(GenerationCancelled())
