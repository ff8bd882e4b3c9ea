"""Between HTTP and the model: admission, stages, deadlines, cancellation.

- Admission: at most `queue_size` requests are in the system (running or waiting); the next one
  gets 429 with Retry-After, before any of its media is decoded.
- Stages: `language` (encode media, prompt, generate text, project signal states) and one per
  decoder (`image`, `audio`, `video`), run by a `StageBackend` (server/stages.py). The default,
  `ThreadStages`, gives each stage worker threads taking calls in FIFO order, so the model never
  runs on the event loop, one call at a time per stage, and stages of different requests overlap:
  request B's LLM runs while request A's image decoder draws. A batching decoder stage has as
  many workers as its batcher takes at once. `RayStages` (server/ray_serve/) runs the same stage
  functions in Ray Serve deployments instead.
- Events: each request is a `Job` whose worker-thread callbacks (text deltas, decoder steps)
  reach the event loop through `loop.call_soon_threadsafe`; consumers iterate `job.events()`.
  Text is streamed by the language stage itself, so it never waits for a decoder.
- Deadline and cancellation: `job.should_stop()` is the model's `should_stop`; it turns true when
  the client cancels or goes away, or when the deadline passes. The model then raises
  `GenerationCancelled` at its next token or decoder step. The awaiting side also gives up at the
  deadline on its own (504), even while a stage is busy with something that cannot be stopped.
"""
from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from models.acceleration import prepare_thread_for_cuda_graphs
from models.generate import GenerationCancelled
from models.types import LanguageOutput

from .errors import APIError, Cancelled, DeadlineExceeded, QueueFull, as_api_error
from .metrics import Metrics
from .stages import StageBackend, Turn, decode_stage, language_stage  # noqa: F401 (Turn re-exported)

log = logging.getLogger("nextgpt.server")
DECODER_STAGES = ("image", "audio", "video")
LLM_PRIORITY_MAX_WAIT_S = 30.0  # a decoder never waits longer than this for the LLM to finish


# --------------------------------------------------------------------------- what runs

@dataclass
class TextDelta:
    text: str


@dataclass
class LanguageDone:
    output: LanguageOutput


@dataclass
class Progress:
    modality: str
    step: int
    total: int


@dataclass
class MediaReady:
    modality: str
    value: Any  # PIL image | waveform | GeneratedVideo


@dataclass
class MediaFailed:
    modality: str
    reason: str


@dataclass
class Finished:
    pass


@dataclass
class Failed:
    error: APIError | Cancelled


Event = TextDelta | LanguageDone | Progress | MediaReady | MediaFailed | Finished | Failed


# --------------------------------------------------------------------------- a request

class Job:
    def __init__(self, loop: asyncio.AbstractEventLoop, admitted: float, deadline_s: float):
        self.loop = loop
        self.admitted = admitted
        self.deadline_s = deadline_s
        self.deadline = admitted + deadline_s
        self.reason: str | None = None  # why it was stopped: "client", "cancel", "deadline"
        self.done = False
        self._stop = threading.Event()
        self._events: asyncio.Queue[Event] = asyncio.Queue()

    def cancel(self, reason: str = "client") -> None:
        if not self._stop.is_set() and not self.done:
            self.reason = reason
            self._stop.set()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    def should_stop(self) -> bool:
        """The model's `should_stop`; safe from any thread."""
        if self._stop.is_set():
            return True
        if time.monotonic() > self.deadline:
            self.cancel("deadline")
            return True
        return False

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def emit(self, event: Event) -> None:
        """From any thread: hand an event to the loop."""
        try:
            self.loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def stopped_error(self) -> APIError | Cancelled:
        if self.reason == "deadline":
            return DeadlineExceeded(self.deadline_s)
        return Cancelled(self.reason or "cancelled")

    async def wait(self, future: Future) -> Any:
        """Await a stage call, giving up at the deadline (the worker stops at its next check)."""
        return await self.wait_for(asyncio.wrap_future(future))

    async def wait_for(self, waiter: Any) -> Any:
        """Await a stage's future or task (not cancelling it) until the deadline: then 504."""
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout=max(self.remaining(), 0.0))
        except asyncio.TimeoutError:
            self.cancel("deadline")
            raise self.stopped_error() from None
        except GenerationCancelled:
            raise self.stopped_error() from None

    async def events(self) -> AsyncIterator[Event]:
        """Every event of this job, ending with `Finished` or `Failed`."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, (Finished, Failed)):
                return


class Stage:
    """One model stage: worker threads, calls served in arrival order. The language stage has
    one; a decoder stage has as many as its batcher takes at once, so that concurrent requests'
    calls can meet in the model's BatchingDecoder and share one pipeline call."""

    def __init__(self, name: str, metrics: Metrics, workers: int = 1):
        self.name = name
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"nextgpt-{name}",
                                           initializer=prepare_thread_for_cuda_graphs)

    async def call(self, job: Job, fn: Callable[..., Any], *args: Any) -> Any:
        depth = self.metrics.stage_depth.labels(self.name)
        depth.inc()

        def run() -> Any:
            try:
                if job.should_stop():  # cancelled or expired while waiting for the stage
                    raise GenerationCancelled()
                start = time.perf_counter()
                try:
                    return fn(*args)
                finally:
                    self.metrics.stage_latency.labels(self.name).observe(time.perf_counter() - start)
            finally:
                depth.dec()

        return await job.wait(self.executor.submit(run))

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class TextFirst:
    """Counts the language calls waiting for the LLM or running on it. A decoder that shares the
    LLM's device waits at its pause points while any is: from the moment a request asks for text,
    not only once its prefill runs, so a first token never queues behind a denoising step."""

    def __init__(self, max_wait_s: float = LLM_PRIORITY_MAX_WAIT_S):
        self.max_wait_s = max_wait_s
        self._lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Event()
        self._idle.set()

    def enter(self) -> None:
        with self._lock:
            self._pending += 1
            self._idle.clear()

    def leave(self) -> None:
        with self._lock:
            self._pending = max(0, self._pending - 1)  # a call that outlives release_all
            if self._pending == 0:
                self._idle.set()

    @property
    def idle(self) -> bool:
        return self._idle.is_set()

    def give_way(self) -> None:
        """A decoder's pause point: return at once, or when no text is pending (at most max_wait_s)."""
        self._idle.wait(self.max_wait_s)

    def release_all(self) -> None:
        with self._lock:
            self._pending = 0
            self._idle.set()


class Ticket:
    """An admitted request's place in the queue; released exactly once."""

    def __init__(self, scheduler: "Scheduler"):
        self.scheduler = scheduler
        self.admitted = time.monotonic()
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.scheduler._release(time.monotonic() - self.admitted)


# --------------------------------------------------------------------------- the scheduler

class ThreadStages:
    """The in-process backend: the stage functions on this process's model, in `Stage` threads."""

    def __init__(self, model: Any, metrics: Metrics, decoder_workers: int = 1):
        self.model = model
        self.metrics = metrics
        batched = model.batchers  # only a batching decoder may run calls side by side
        # the language stage likewise: as many calls at once as the LLM's batch has rows, each
        # encoding its media and projecting its outputs alone and generating in the shared batch
        rows = model.llm_batcher.max_batch if model.llm_batcher is not None else 1
        self.stages = {"language": Stage("language", metrics, rows)}
        for name in DECODER_STAGES:
            self.stages[name] = Stage(name, metrics, decoder_workers if name in batched else 1)
        # Text first: a decoder sharing the LLM's device pauses between its steps (and, on a CPU,
        # between its UNet's blocks) while text is pending, so a request's first token never
        # waits behind another request's drawing; its batcher forms no batch meanwhile, so the
        # requests still in the LLM join the next batch.
        self.text_first = TextFirst()
        self.yields_to_llm = {m: str(d.device) == str(model.llm.device) for m, d in model.decoders.items()}
        self.pause_hooks = [hook for m, decoder in model.decoders.items()
                            if self.yields_to_llm[m] and decoder.device.type == "cpu"
                            for hook in decoder.pause_inside_steps(self.text_first.give_way)]
        for m, batcher in model.batchers.items():
            if self.yields_to_llm.get(m):
                batcher.before_batch = self.text_first.give_way

    async def language(self, job: Job, turn: Turn) -> LanguageOutput:
        self.text_first.enter()
        try:  # the stage call returns when its thread is done (a deadline: within a token of it)
            return await self.stages["language"].call(job, self._language, job, turn)
        finally:
            self.text_first.leave()

    async def decode(self, job: Job, turn: Turn, modality: str, condition: Any) -> Any:
        return await self.stages[modality].call(job, self._decode, job, turn, modality, condition)

    # ------------------------------------------------------------------ run in the stage threads

    def _language(self, job: Job, turn: Turn) -> LanguageOutput:
        return language_stage(self.model, turn, first_token_timer(job, self.metrics), job.should_stop)

    def _decode(self, job: Job, turn: Turn, modality: str, condition: Any) -> Any:
        def on_step(step: int, total: int) -> None:
            job.emit(Progress(modality, step, total))
            if self.yields_to_llm.get(modality):
                self.text_first.give_way()

        return decode_stage(self.model, turn, modality, condition, on_step, job.should_stop)

    def shutdown(self) -> None:
        for hook in self.pause_hooks:  # the model may outlive this backend (tests, restarts)
            hook.remove()
        for batcher in self.model.batchers.values():
            batcher.before_batch = None
        self.text_first.release_all()
        for stage in self.stages.values():
            stage.shutdown()


def first_token_timer(job: Job, metrics: Metrics) -> Callable[[str], None]:
    """The language stage's `on_text`: each delta to the job, the first one timed (TTFT)."""
    first = [True]

    def on_text(delta: str) -> None:
        if first[0]:
            first[0] = False
            metrics.ttft.observe(time.monotonic() - job.admitted)
        job.emit(TextDelta(delta))

    return on_text


class Scheduler:
    def __init__(self, model: Any, metrics: Metrics, decoder_workers: int = 1, backend: StageBackend | None = None):
        self.model = model
        self.metrics = metrics
        self.backend = backend or ThreadStages(model, metrics, decoder_workers)
        self.active = 0
        self.mean_duration = 1.0  # seconds, moving average: sizes Retry-After
        self.jobs: set[Job] = set()

    def admit(self, queue_size: int, min_retry_after: int = 1) -> Ticket:
        """Called on the event loop; raises QueueFull (429) when `queue_size` are in flight."""
        if self.active >= queue_size:
            self.metrics.rejected.labels("queue_full").inc()
            waits = self.mean_duration * max(1, self.active - queue_size + 1)
            raise QueueFull(max(min_retry_after, math.ceil(waits)))
        self.active += 1
        self.metrics.queue_depth.set(self.active)
        return Ticket(self)

    def _release(self, duration: float) -> None:
        self.active -= 1
        self.metrics.queue_depth.set(self.active)
        self.mean_duration = 0.8 * self.mean_duration + 0.2 * duration

    def start(self, ticket: Ticket, turn: Turn, deadline_s: float) -> Job:
        """Run `turn` in the stages; the ticket is released when the job ends."""
        job = Job(asyncio.get_running_loop(), ticket.admitted, deadline_s)
        self.jobs.add(job)
        task = asyncio.create_task(self._drive(job, turn, ticket))
        task.add_done_callback(lambda _: self.jobs.discard(job))
        return job

    async def _drive(self, job: Job, turn: Turn, ticket: Ticket) -> None:
        try:
            lang = await self.backend.language(job, turn)
            self._count_language(lang)
            job.emit(LanguageDone(lang))
            # each output in its own stage: a request's image, sound and video are drawn side by side
            outcomes = await asyncio.gather(*(self._decode_one(job, turn, m, c) for m, c in lang.conditions.items()),
                                            return_exceptions=True)
            for outcome in outcomes:  # every decoder has ended: report the first failure, if any
                if isinstance(outcome, BaseException):
                    raise outcome
            job.emit(Finished())
        except (Cancelled, DeadlineExceeded, asyncio.CancelledError) as exc:
            error = exc if not isinstance(exc, asyncio.CancelledError) else Cancelled("shutdown")
            self.metrics.cancelled.labels(job.reason or "shutdown").inc()
            job.emit(Failed(error))
        except Exception as exc:  # the model's input checks (400) or a bug (500, logged)
            job.emit(Failed(as_api_error(exc)))
        finally:
            job.done = True
            ticket.release()

    async def _decode_one(self, job: Job, turn: Turn, modality: str, condition: Any) -> None:
        try:
            value = await self.backend.decode(job, turn, modality, condition)
        except (Cancelled, DeadlineExceeded):
            raise
        except Exception as exc:
            if modality in turn.required:
                raise
            log.error("the %s decoder failed", modality, exc_info=(type(exc), exc, exc.__traceback__))
            job.emit(MediaFailed(modality, f"the {modality} decoder failed ({type(exc).__name__})"))
            return
        self.metrics.media_out.labels(modality).inc()
        job.emit(MediaReady(modality, value))

    def _count_language(self, lang: LanguageOutput) -> None:
        m = self.metrics
        m.prompt_tokens.inc(lang.usage.prompt_tokens)
        m.generated_tokens.inc(lang.usage.completion_tokens)
        for stage, key in (("encode", "encode"), ("generate", "llm"), ("projection", "projection")):
            if key in lang.timings:
                m.stage_latency.labels(stage).observe(lang.timings[key])
        seconds = lang.timings.get("llm", 0.0)
        if lang.usage.completion_tokens and seconds > 0:
            m.tokens_per_second.observe(lang.usage.completion_tokens / seconds)

    def shutdown(self) -> None:
        for job in list(self.jobs):
            job.cancel("shutdown")
        self.backend.shutdown()
