"""Batching decoder calls across concurrent requests.

Callers (one thread per request) submit a condition; a single worker per decoder takes every
pending request whose parameters equal the first one's, up to `max_batch`, and runs ONE pipeline
call with per-item generators, so a batched result equals the unbatched one for the same seed.
A request cancelled while it waits leaves the queue at once (its slot goes to the next request);
one cancelled while its batch runs is answered at once and its share of the batch is dropped.
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import torch

from .call_queue import CallQueue, cancelled
from .decoders import Decoder
from .generate import GenerationCancelled


@dataclass
class _Job:
    condition: torch.Tensor  # (1, ...) decoder prompt embedding
    params: object
    seed: int | None
    on_step: Callable[[int, int], None] | None
    should_stop: Callable[[], bool] | None
    future: Future = field(default_factory=Future)

    def cancelled(self) -> bool:
        return cancelled(self)


class BatchingDecoder(CallQueue):
    def __init__(self, decoder: Decoder, max_batch: int = 8, start: bool = True):
        self.decoder = decoder
        self.max_batch = max_batch
        self.batches_run = 0
        self.largest_batch = 0
        # Called with no lock held before each batch is formed. The server sets it to wait while
        # text is pending: those requests' outputs come here next, and join this batch instead
        # of waiting behind a batch that would only pause for their text anyway.
        self.before_batch: Callable[[], None] | None = None
        super().__init__(f"decoder-{decoder.modality}", start)

    def __call__(self, condition, params, seed=None, on_step=None, should_stop=None):
        """Blocks until this request's output is ready; raises GenerationCancelled if stopped."""
        return self._submit(_Job(condition, params, seed, on_step, should_stop))

    def _take_batch(self) -> list[_Job]:
        with self._cv:
            if self._closed or not self._pending:  # all withdrawn while before_batch waited
                return []
            first = self._pending.popleft()
            batch = [first]
            for job in list(self._pending):
                if len(batch) >= self.max_batch:
                    break
                if job.params == first.params and job.condition.shape == first.condition.shape:
                    self._pending.remove(job)
                    batch.append(job)
            return batch

    def _loop(self) -> None:
        while True:
            if not self._wait_for_work():
                return
            if self.before_batch is not None:
                self.before_batch()
            batch = [job for job in self._take_batch() if not job.cancelled()]
            if self._closed:
                return
            if batch:
                self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        def on_step(step: int, total: int) -> None:
            for job in batch:
                if job.on_step is not None and not job.future.done():
                    job.on_step(step, total)

        def all_cancelled() -> bool:
            return all(job.cancelled() for job in batch)

        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        try:
            outputs = self.decoder(torch.cat([j.condition for j in batch]), batch[0].params,
                                   [j.seed for j in batch], on_step, all_cancelled)
        except BaseException as exc:  # every waiter learns what happened; the worker lives on
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        for job, out in zip(batch, outputs):
            if not job.future.done():
                job.future.set_result(out)

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking work; wait (bounded) for the batch in progress, if any, to end; callers
        still waiting get GenerationCancelled."""
        for job in self._stop_worker(timeout):
            if not job.future.done():
                job.future.set_exception(GenerationCancelled())
