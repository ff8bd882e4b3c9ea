"""The ingress side of the Ray backend.

`RayStages` is the scheduler's StageBackend when the stages are Ray Serve deployments: the same
two calls as `ThreadStages` (language, decode), made through deployment handles. A job's stop
(client cancel or disconnect, deadline, shutdown) cancels the `DeploymentResponse`, which
cancels the replica's task, which trips the model's `should_stop` (replicas.py).

Failures come back in the API's error shape, never as a hang: a replica that dies mid-call
(Ray restarts it) is a 503 naming the stage, a deployment whose queue is full
(`max_queued_requests`, BackPressureError) a 429 with Retry-After, the model's own input checks
a 400, anything else a logged 500.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
from ray.serve.exceptions import (BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError,
                                  RequestCancelledError)

from models.config import ModelConfig
from models.generate import GenerationCancelled, SamplingParams
from models.nextgpt import checked_decoder_params
from models.types import LanguageOutput, Message

from ..errors import APIError, Cancelled, QueueFull, as_api_error
from ..metrics import Metrics
from ..scheduler import Job, Progress, first_token_timer
from ..settings import Settings
from ..stages import Turn, unencoded_items, with_embeddings

STOP_POLL_S = 0.05  # how often a running call checks its job's should_stop (as the model does per token)
REPLICA_LOST = (RayActorError, ActorUnavailableError, ReplicaUnavailableError, DeploymentUnavailableError)


@dataclass
class StageHandles:
    encoder: Any  # DeploymentHandle of EncoderStage
    llm: Any  # LanguageStage
    decoders: dict[str, Any]  # modality -> DecoderStage


@dataclass
class DecoderSpec:
    """A decoder as the ingress knows it: enough to check a request's parameters."""

    defaults: Any
    spatial_multiple: int


class RemoteModel:
    """What the ingress needs of the model, which it never loads: its name, the decoders served
    and their parameter defaults (asked of the decoder deployments), and the warm-up."""

    def __init__(self, config: ModelConfig, decoders: dict[str, DecoderSpec], settings: Settings,
                 handles: StageHandles):
        self.config = config
        self.decoders = decoders
        self.limits = settings.decoder_limits()
        self.handles = handles
        self.encoder = None  # the encoder's cache counters live in its replicas
        self.batchers: dict[str, Any] = {}

    @classmethod
    async def connect(cls, settings: Settings, handles: StageHandles) -> "RemoteModel":
        from ..engine import resolve_weights

        config = ModelConfig.load(resolve_weights(settings.weights))
        specs = {m: DecoderSpec(*await h.describe.remote()) for m, h in handles.decoders.items()}
        return cls(config, specs, settings, handles)

    def decoder_params(self, modality: str, overrides: dict | None = None) -> Any:
        return checked_decoder_params(self.decoders, self.limits, modality, overrides)

    def warm_up(self) -> None:
        """One short turn through the LLM and every decoder deployment (from a worker thread:
        the handles' blocking calls)."""
        outputs = set(self.decoders)
        turn = Turn([Message("user", "Hello")], {"text", *outputs}, outputs, SamplingParams(max_new_tokens=4, seed=0),
                    {m: self.decoder_params(m, {"num_inference_steps": 1}) for m in outputs})
        lang = final_item(self.handles.llm.options(stream=True).language.remote(turn))
        for modality, condition in lang.conditions.items():
            final_item(self.handles.decoders[modality].options(stream=True).decode.remote(turn, condition))

    def close(self) -> None:
        pass


def final_item(stream: Any) -> Any:
    """The result of a stage's stream, read synchronously."""
    result = None
    for kind, *rest in stream:
        if kind == "done":
            result = rest[0]
    return result


class RayStages:
    def __init__(self, handles: StageHandles, settings: Settings, metrics: Metrics | None = None):
        self.handles = handles
        self.retry_after_s = settings.retry_after_s
        self.metrics = metrics or Metrics()  # create_app's registry is set by the ingress

    async def language(self, job: Job, turn: Turn) -> LanguageOutput:
        messages = turn.messages
        items = unencoded_items(messages)
        if items:  # media go to the encoder; the LLM gets embeddings, not pixels
            response = self.handles.encoder.encode.remote(items)
            embeddings = await self._call(job, "encoder", response, response)
            messages = with_embeddings(messages, embeddings)
        on_text = first_token_timer(job, self.metrics)
        stream = self.handles.llm.options(stream=True).language.remote(replace(turn, messages=messages, params={}))
        return await self._call(job, "language", stream, self._consume(stream, "language", on_text))

    async def decode(self, job: Job, turn: Turn, modality: str, condition: Any) -> Any:
        lean = replace(turn, messages=[], params={modality: turn.params[modality]})
        stream = self.handles.decoders[modality].options(stream=True).decode.remote(lean, condition)
        report = lambda step, total: job.emit(Progress(modality, step, total))  # noqa: E731
        return await self._call(job, modality, stream, self._consume(stream, modality, report))

    async def _consume(self, stream: Any, stage: str, on_item: Callable[..., None]) -> Any:
        result = None
        async for kind, *rest in stream:
            if kind == "done":
                result = rest[0]
            elif kind == "replica":
                self.metrics.replica_calls.labels(stage, rest[0]).inc()
            else:
                on_item(*rest)
        return result

    async def _call(self, job: Job, stage: str, response: Any, work: Any) -> Any:
        """Await `work` (a stage call's result) for `job`: cancelled when the job stops, 504 at
        its deadline, every failure as an API error."""
        depth = self.metrics.stage_depth.labels(stage)
        depth.inc()
        start = time.perf_counter()
        task = asyncio.ensure_future(work)
        watcher = asyncio.create_task(cancel_when_stopped(job, response, task))
        try:
            return await job.wait_for(task)
        except Exception as exc:
            raise self._api_error(job, stage, exc) from None
        finally:
            watcher.cancel()
            if not task.done():  # gave up (deadline): the replica stops too
                response.cancel()
                task.cancel()
            depth.dec()
            self.metrics.stage_latency.labels(stage).observe(time.perf_counter() - start)

    def _api_error(self, job: Job, stage: str, exc: BaseException) -> BaseException:
        if isinstance(exc, (APIError, Cancelled)):
            return exc
        cause = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
        if job.cancelled or isinstance(cause, (GenerationCancelled, RequestCancelledError, asyncio.CancelledError)):
            return job.stopped_error()
        if isinstance(cause, BackPressureError):
            retry = max(self.retry_after_s, int(cause.retry_after_s or 0))
            return QueueFull(retry)
        if isinstance(cause, REPLICA_LOST):
            return APIError(503, f"the {stage} stage failed while working on this request (its replica is "
                                 "being restarted); retry it", code="stage_unavailable", type="server_error",
                            headers={"Retry-After": str(self.retry_after_s)})
        return as_api_error(cause)

    def shutdown(self) -> None:
        pass  # the deployments belong to Serve; running calls are cancelled with their jobs


async def cancel_when_stopped(job: Job, response: Any, task: asyncio.Future) -> None:
    """Cancel the stage call once its job should stop (the thread backend's `should_stop`)."""
    while not task.done():
        if job.should_stop():
            response.cancel()
            return
        await asyncio.sleep(STOP_POLL_S)
