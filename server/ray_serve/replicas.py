"""The stage deployments. Each replica loads only its own stage of the model and runs the stage
functions of server/stages.py, the very functions the in-process thread workers run.

Streaming: `language` and `decode` are async generators; a handle called with `stream=True`
receives, in order, `("replica", name)`, then `("text", delta)` or `("progress", step, total)`
items as the model reports them, then `("done", result)`. Tensors (the projected conditions,
the encodings) travel as Python objects through Ray's object store, never through files.

Cancellation: when the caller cancels its `DeploymentResponse`, Serve cancels the replica's
asyncio task; the generator's `finally` then sets the event that the model's `should_stop`
reads, so the LLM stops at its next token and a decoder at its next step.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable

from ray import serve

from ..engine import accelerate
from ..settings import Settings
from ..stages import Turn, decode_stage, encode_stage, language_stage

log = logging.getLogger("nextgpt.server")
Emit = Callable[[tuple], None]


def replica_name() -> str:
    """This replica's actor name (namespace "serve"): what metrics and operators see."""
    return serve.get_replica_context().replica_id.to_full_id_str()


def load_stage(settings: Settings, stages: tuple[str, ...], decoder_names: list[str] | None = None) -> Any:
    """A NextGPT holding only `stages` of the served weights, on the stage's device."""
    from models.loading import stage_devices
    from models.nextgpt import NextGPT

    from ..engine import resolve_weights

    path = resolve_weights(settings.weights)
    devices = stage_devices(settings.device_map())  # a GPU replica sees only the GPUs Ray gave it
    return NextGPT.from_pretrained(path, devices={s: devices[s] for s in stages}, limits=settings.decoder_limits(),
                                   stages=stages, decoder_names=decoder_names)


async def stream_from_thread(executor: Executor, work: Callable[[Emit, Callable[[], bool]], Any]) -> AsyncIterator[tuple]:
    """Run `work(emit, should_stop)` on `executor`; yield what it emits as it emits it, then
    `("done", its result)` (or raise its error). Leaving early (cancellation) stops it."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()
    finished = object()

    def emit(item: tuple) -> None:
        loop.call_soon_threadsafe(items.put_nowait, item)

    future = loop.run_in_executor(executor, work, emit, stop.is_set)
    # scheduled after every emit of the work (both go through the loop in order)
    future.add_done_callback(lambda _: items.put_nowait(finished))
    try:
        while (item := await items.get()) is not finished:
            yield item
        yield ("done", future.result())
    finally:
        stop.set()  # the model sees it at its next token or step


@serve.deployment
class EncoderStage:
    """ImageBind: media items -> embeddings, cached by content hash in this replica."""

    def __init__(self, settings: dict):
        self.encoder = load_stage(Settings(**settings), ("encoder",)).encoder
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="nextgpt-encoder")

    async def encode(self, items: list) -> list:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, encode_stage, self.encoder, items)


@serve.deployment
class LanguageStage:
    """The LLM and the output projections: a turn (media already encoded) -> text deltas, then
    the LanguageOutput with the decoders' conditions. Concurrent turns generate in one batch (the
    model's BatchingGenerator, up to `llm_max_batch`), as in the in-process server."""

    def __init__(self, settings: dict, decoder_names: list[str]):
        config = Settings(**settings)
        self.model = load_stage(config, ("llm",), decoder_names)
        accelerate(self.model, config)
        self.model.enable_llm_batching(config.llm_max_batch, config.llm_static_cache)
        workers = config.llm_max_batch
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="nextgpt-language")
        self.name = replica_name()

    async def language(self, turn: Turn) -> AsyncIterator[tuple]:
        yield ("replica", self.name)

        def work(emit: Emit, should_stop: Callable[[], bool]) -> Any:
            return language_stage(self.model, turn, lambda delta: emit(("text", delta)), should_stop)

        async for item in stream_from_thread(self.executor, work):
            yield item

    def __del__(self):
        model = getattr(self, "model", None)
        if model is not None:
            model.close()  # the generation worker thread ends with the replica


@serve.deployment
class DecoderStage:
    """One decoder (deployed once per modality, under that name): a condition -> the media,
    with its steps streamed. Concurrent calls with equal parameters share one pipeline call
    (the model's BatchingDecoder), as in the in-process server."""

    def __init__(self, settings: dict, modality: str):
        config = Settings(**settings)
        self.modality = modality
        self.model = load_stage(config, (modality,))
        accelerate(self.model, config)
        workers = 1
        if config.decoder_max_batch > 1:
            self.model.enable_batching(config.decoder_max_batch)
            workers = config.decoder_max_batch
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix=f"nextgpt-{modality}")
        self.name = replica_name()

    def describe(self) -> tuple[Any, int]:
        """What the ingress checks request parameters against: defaults and size multiple."""
        decoder = self.model.decoders[self.modality]
        return decoder.defaults, decoder.spatial_multiple

    async def decode(self, turn: Turn, condition: Any) -> AsyncIterator[tuple]:
        yield ("replica", self.name)

        def work(emit: Emit, should_stop: Callable[[], bool]) -> Any:
            on_step = lambda step, total: emit(("progress", step, total))  # noqa: E731
            return decode_stage(self.model, turn, self.modality, condition, on_step, should_stop)

        async for item in stream_from_thread(self.executor, work):
            yield item

    def __del__(self):
        model = getattr(self, "model", None)
        if model is not None:
            model.close()  # the batching worker threads end with the replica
