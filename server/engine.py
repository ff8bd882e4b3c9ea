"""The loaded model and its life: load in the background, warm up, then ready (or failed).

`/health` answers while this loads; `/ready` and the API answer 503 until it is ready.
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from .errors import NotReady
from .settings import Settings

log = logging.getLogger("nextgpt.server")


def resolve_weights(spec: str) -> Path:
    """A preset name or a model directory -> the model directory (building `tiny` if missing)."""
    from weights.presets import resolve

    return Path(resolve(spec))


RELEASE_NAME = "nextgpt-7b-tiva-v0"
RELEASE_HIDDEN_SIZE = 4096  # Vicuna-7B


def is_release(path: Path) -> bool:
    """The real release (or a model of its size): what the placement's memory estimates describe.
    The tiny and nano presets are not: they keep the plain 'cuda'/'cpu' of devices 'auto'."""
    import json

    from models.config import ModelConfig

    config = ModelConfig.load(path)
    if config.name == RELEASE_NAME:
        return True
    llm_config = path / config.components.llm / "config.json"
    try:
        return json.loads(llm_config.read_text()).get("hidden_size") == RELEASE_HIDDEN_SIZE
    except (OSError, ValueError):
        return False


def plan_for(settings: Settings) -> Any:
    """The placement of the release's stages over the GPUs present, logged as a table."""
    from models.placement import bitsandbytes_available, detect_gpus, plan_placement

    placement = plan_placement(detect_gpus(), settings.gpu_budget, settings.quantize,
                               can_quantize=bitsandbytes_available())
    log.info("%s", placement.describe())
    for warning in placement.warnings:
        log.warning("%s", warning)
    return placement


def load_model(settings: Settings) -> Any:
    from models.nextgpt import NextGPT

    path = resolve_weights(settings.weights)
    if settings.wants_placement() and is_release(path):
        placement = plan_for(settings)
        log.info("loading %s with the planned placement", path)
        model = NextGPT.from_pretrained(path, placement=placement, limits=settings.decoder_limits())
    else:
        if settings.quantize:
            log.warning("quantize=%s is ignored: it applies to the automatic placement of the real release "
                        "(devices 'auto')", settings.quantize)
        log.info("loading %s on %s", path, settings.device_map())
        model = NextGPT.from_pretrained(path, devices=settings.device_map(), limits=settings.decoder_limits())
    accelerate(model, settings)
    if settings.decoder_max_batch > 1:
        model.enable_batching(settings.decoder_max_batch)
    model.enable_llm_batching(settings.llm_max_batch, settings.llm_static_cache)
    return model


def accelerate(model: Any, settings: Settings) -> None:
    """The LLM's LoRA merged; the decoders' speed-ups, before the warm-up compiles them at the
    shapes in use."""
    if model.merge_lora():
        log.info("LoRA merged into the LLM's weights")
    sped = model.accelerate_decoders(settings.accelerate_decoders, settings.compile_mode)
    if sped:
        log.info("decoders sped up (channels_last, fused QKV, compiled UNet): %s", ", ".join(sped))


def warm_up(model: Any) -> None:
    """One short turn through every stage: first-call costs are paid before /ready says 200.
    A model whose stages run elsewhere (server/ray_serve/backend.py) warms them up its own way."""
    if hasattr(model, "warm_up"):
        return model.warm_up()
    from models.generate import SamplingParams
    from models.types import Message

    outputs = tuple(model.decoders)
    model.chat([Message("user", "Hello")], modalities=("text", *outputs), required=outputs,
               sampling=SamplingParams(max_new_tokens=4, seed=0),
               decoder_params={m: {"num_inference_steps": 1} for m in outputs})


class ModelHost:
    def __init__(self, model: Any = None):
        self.model = model
        self.state = "loading"  # "loading" | "ready" | "failed"
        self.error: str | None = None
        self.model_id = "nextgpt"
        self.created = int(time.time())
        self.load_seconds = 0.0

    async def start(self, settings: Settings) -> None:
        start = time.perf_counter()
        try:
            if self.model is None:
                self.model = await asyncio.to_thread(load_model, settings)
            self.model_id = settings.model_name or getattr(self.model.config, "name", "nextgpt")
            if settings.warmup:
                await asyncio.to_thread(warm_up, self.model)
        except Exception as e:
            self.state, self.error = "failed", f"{type(e).__name__}: {e}"
            log.exception("the model failed to load")
            return
        self.load_seconds = time.perf_counter() - start
        self.state = "ready"
        log.info("model %s ready in %.1f s", self.model_id, self.load_seconds)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def require_ready(self) -> Any:
        if self.state == "failed":
            raise NotReady(f"the model failed to load: {self.error}")
        if self.state != "ready":
            raise NotReady()
        return self.model
