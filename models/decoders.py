"""The three decoders: stock diffusers pipelines called with `prompt_embeds`, never forked.

Each is a component with its own device and dtype. The negative-prompt embedding ("" through
the pipeline's own text encoder) is computed once at load, not per call; the seed reaches the
pipeline through per-item generators; progress and cancellation go through the step callback.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import AudioLDMPipeline, StableDiffusionPipeline, TextToVideoSDPipeline

from .acceleration import Acceleration, accelerate_pipeline, uncompiled
from .generate import GenerationCancelled
from .placement import apply_offload


class ParameterError(ValueError):
    """A decoder parameter outside its limits; `param` names it (e.g. `image.height`)."""

    def __init__(self, param: str, message: str):
        self.param = param
        super().__init__(f"{param}: {message}")


@dataclass(frozen=True)
class ImageParams:
    num_inference_steps: int = 50  # the reference demo's defaults
    guidance_scale: float = 7.5
    height: int = 512
    width: int = 512


@dataclass(frozen=True)
class AudioParams:
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    audio_length_in_s: float = 9.0


@dataclass(frozen=True)
class VideoParams:
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    num_frames: int = 24
    height: int = 320
    width: int = 576
    fps: int = 8  # of the encoded MP4; the decoder itself does not use it


PARAMS_OF = {"image": ImageParams, "audio": AudioParams, "video": VideoParams}
PIPELINE_OF = {"image": StableDiffusionPipeline, "audio": AudioLDMPipeline, "video": TextToVideoSDPipeline}


def load_pipeline(modality: str, path: Path, dtype: torch.dtype):
    """The stock pipeline of `modality` from a diffusers folder, at `dtype`, without SD's safety
    checker (NExT-GPT's decoders ship none)."""
    kwargs = {"safety_checker": None, "requires_safety_checker": False} if modality == "image" else {}
    return PIPELINE_OF[modality].from_pretrained(str(path), dtype=dtype, **kwargs)


@dataclass(frozen=True)
class DecoderLimits:
    max_steps: int = 100
    max_guidance: float = 30.0
    max_side: int = 1024  # pixels, height and width each
    max_audio_seconds: float = 30.0
    min_frames: int = 1
    max_frames: int = 32
    max_fps: int = 60


def _check_range(param: str, value, low, high) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= value <= high):
        raise ParameterError(param, f"must be a number between {low} and {high}, got {value!r}")


def validate_params(modality: str, params, limits: DecoderLimits, multiple_of: int):
    """Check every field against the limits; return the params unchanged."""
    p = modality
    _check_range(f"{p}.num_inference_steps", params.num_inference_steps, 1, limits.max_steps)
    if not isinstance(params.num_inference_steps, int):
        raise ParameterError(f"{p}.num_inference_steps", "must be an integer")
    _check_range(f"{p}.guidance_scale", params.guidance_scale, 0.0, limits.max_guidance)
    if modality in ("image", "video"):
        for side in ("height", "width"):
            value = getattr(params, side)
            _check_range(f"{p}.{side}", value, multiple_of, limits.max_side)
            if not isinstance(value, int) or value % multiple_of:
                raise ParameterError(f"{p}.{side}", f"must be an integer multiple of {multiple_of}")
    if modality == "audio":
        _check_range(f"{p}.audio_length_in_s", params.audio_length_in_s, 0.1, limits.max_audio_seconds)
    if modality == "video":
        _check_range(f"{p}.num_frames", params.num_frames, limits.min_frames, limits.max_frames)
        _check_range(f"{p}.fps", params.fps, 1, limits.max_fps)
    return params


def merge_params(modality: str, defaults, overrides: dict | None):
    """Per-call values over the model's defaults; unknown names are refused."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    known = {f.name for f in dataclasses.fields(PARAMS_OF[modality])}
    for name in overrides:
        if name not in known:
            raise ParameterError(f"{modality}.{name}", "unknown parameter")
    return dataclasses.replace(defaults, **overrides)


class Decoder:
    """One stock pipeline, warm, with its negative-prompt embedding computed once.

    `offload` ("model" | "sequential", from a Placement) keeps the pipeline's weights on the CPU
    and lets diffusers' hooks bring them onto `device` as they run, instead of moving it there;
    `device` stays the device the pipeline computes on (generators, embeddings). `lock`, when set
    (NextGPT shares one per GPU between its offloaded decoders), is held around each pipeline call.
    """

    def __init__(self, modality: str, pipe, defaults, device="cpu", dtype=torch.float32, offload: str | None = None):
        self.modality = modality
        # dtype is set at load (from_pretrained(dtype=...))
        self.pipe = apply_offload(pipe, offload, str(device)) if offload else pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.defaults = defaults
        self.device = torch.device(device)
        self.dtype = dtype
        self.offload = offload
        self.lock: threading.Lock | None = None
        self.negative = self._encode_empty_prompt()
        self._free_gpu()  # the text encoder the hooks brought in

    @classmethod
    def from_pretrained(cls, modality: str, path: Path, defaults, device="cpu", dtype=torch.float32,
                        offload: str | None = None) -> "Decoder":
        """The pipeline loads on the CPU; then it moves to `device`, or is offloaded onto it."""
        return cls(modality, load_pipeline(modality, path, dtype), defaults, device, dtype, offload)

    @contextlib.contextmanager
    def _exclusive(self, should_stop: Callable[[], bool] | None):
        """Hold `lock` (if any) for the pipeline call, and leave none of an offloaded pipeline's
        weights on the GPU after it, also when it fails or is cancelled (AudioLDM never frees its
        VAE and vocoder itself): the next decoder sharing the GPU gets the whole slot. A caller
        stopped while it waits for the lock gives up."""
        lock = self.lock
        if lock is not None:
            while not lock.acquire(timeout=0.05):
                if should_stop is not None and should_stop():
                    raise GenerationCancelled()
        try:
            yield
        finally:
            try:
                self._free_gpu()
            finally:
                if lock is not None:
                    lock.release()

    def _free_gpu(self) -> None:
        if self.offload == "model":  # back to the CPU, hooks re-armed (sequential offload keeps nothing)
            self.pipe.maybe_free_model_hooks()

    def accelerate(self, acc: Acceleration) -> bool:
        """channels_last, fused QKV, a compiled UNet (models/acceleration.py); not under CPU
        offload, whose hooks move the weights on every call. True when applied."""
        if self.offload:
            return False
        accelerate_pipeline(self.pipe, self.device, acc)
        return True

    def pause_inside_steps(self, wait: Callable[[], None]) -> list:
        """Call `wait` before each of the UNet's down, mid and up blocks, so that a decoder sharing
        a CPU with the LLM can give way inside a denoising step, not only between two: a step of a
        long video holds both cores for longer than a whole prefill. `wait` returns at once when
        there is nothing to give way to. CPU only: on a GPU the host merely queues kernels, so a
        pause there changes nothing, and a hook would split a compiled UNet's graph (so a compiled
        UNet, NEXTGPT_ACCELERATE_DECODERS=all, gets none). Returns the hooks' handles: `handle.remove()` takes each away again."""
        if self.device.type != "cpu":
            raise ValueError(f"pause points are for a decoder on the CPU, not {self.device}")
        unet = self.pipe.unet
        if uncompiled(unet) is not unet:  # a compiled graph runs its blocks as one: pauses between steps only
            return []
        blocks = [b for b in (*unet.down_blocks, unet.mid_block, *unet.up_blocks) if b is not None]
        return [b.register_forward_pre_hook(lambda module, args: wait()) for b in blocks]

    @property
    def spatial_multiple(self) -> int:
        return getattr(self.pipe, "vae_scale_factor", 8)

    @torch.inference_mode()
    def _encode_empty_prompt(self) -> torch.Tensor:
        if self.modality == "audio":  # AudioLDM: (1, D), L2-normalised CLAP text embedding
            return self.pipe._encode_prompt("", self.device, 1, False)
        embeds, _ = self.pipe.encode_prompt("", self.device, 1, False)
        return embeds  # (1, 77, D)

    def _generators(self, seeds: list[int | None]) -> list[torch.Generator]:
        gens = []
        for seed in seeds:
            if seed is None:
                seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
            gens.append(torch.Generator(device=self.device).manual_seed(seed))
        return gens

    def _step_kwargs(self, total: int, on_step, should_stop) -> dict:
        def report(step: int) -> None:
            if should_stop is not None and should_stop():
                raise GenerationCancelled()
            if on_step is not None:  # some schedulers run more steps than asked (PNDM: +1)
                on_step(step + 1, max(total, len(self.pipe.scheduler.timesteps)))

        if self.modality == "image":
            def on_end(pipe, step, timestep, kwargs):
                report(step)
                return kwargs
            return {"callback_on_step_end": on_end}
        return {"callback": lambda step, timestep, latents: report(step), "callback_steps": 1}

    @torch.inference_mode()
    def __call__(self, embeds: torch.Tensor, params, seeds: list[int | None],
                 on_step: Callable[[int, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> list:
        """embeds: (B, 77, D) or (B, D) for audio -> B outputs (PIL image / waveform / frames)."""
        batch = embeds.shape[0]
        embeds = embeds.to(self.device, self.dtype)
        common = dict(
            prompt_embeds=embeds,
            negative_prompt_embeds=self.negative.expand(batch, *self.negative.shape[1:]),
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            generator=self._generators(seeds),
            **self._step_kwargs(params.num_inference_steps, on_step, should_stop),
        )
        with self._exclusive(should_stop):
            return self._run(params, common)

    def _run(self, params, common: dict) -> list:
        if self.modality == "image":
            out = self.pipe(height=params.height, width=params.width, output_type="pil", **common)
            return list(out.images)
        if self.modality == "audio":
            out = self.pipe(audio_length_in_s=params.audio_length_in_s, output_type="np", **common)
            return [np.asarray(a, dtype=np.float32) for a in out.audios]  # (samples,) at 16 kHz
        out = self.pipe(num_frames=params.num_frames, height=params.height, width=params.width,
                        output_type="np", **common)
        frames = np.asarray(out.frames)  # (B, F, H, W, 3) in [0, 1]
        return [(np.clip(f, 0, 1) * 255).round().astype(np.uint8) for f in frames]
