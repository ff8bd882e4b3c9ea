"""Every server setting in one place: pydantic-settings, env prefix `NEXTGPT_`.

Routes read the settings through the `get_settings` dependency (tests override it per test);
nothing deeper than the server reads the environment. List settings take JSON
(`["a","b"]`) or a comma-separated string (`a,b`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from starlette.requests import HTTPConnection
from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.decoders import DecoderLimits
from models.media import MediaLimits
from weights.presets import DEFAULT_PRESET

MiB = 1024 * 1024
StrList = Annotated[list[str], NoDecode]


class RayDeploymentSettings(BaseModel):
    """One stage's Ray Serve deployment: its share of a node and how many copies of it run."""

    num_replicas: int = Field(1, ge=1, description="replicas when not autoscaling")
    min_replicas: int | None = Field(None, ge=0, description="with max_replicas: autoscale between these")
    max_replicas: int | None = Field(None, ge=1, description="with min_replicas: autoscale between these")
    target_ongoing_requests: float = Field(2.0, gt=0, description="autoscaling aims at this many requests per replica")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (fractions share a GPU)")
    num_cpus: float = Field(1.0, ge=0, description="CPUs per replica (Ray's logical CPUs)")
    max_ongoing_requests: int = Field(8, ge=1, description="requests one replica works on at once")
    max_queued_requests: int = Field(64, ge=-1, description="requests waiting for a replica; more get 429; -1: no limit")


def _stage(**changes: Any) -> Any:
    return Field(default_factory=lambda: RayDeploymentSettings(**changes))


class RaySettings(BaseModel):
    """`nextgpt serve --ray`: the ingress and each stage as Ray Serve deployments (server/ray_serve/)."""

    address: str | None = Field(None, description="Ray cluster to join ('auto', 'ray://head:10001', "
                                "'head:6379'); default: start a local Ray on this machine")
    app_name: str = Field("nextgpt", description="Serve application name")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs of a local Ray instance; default: this "
                                 "machine's, at least 8 (one replica of every stage fits)")
    ingress: RayDeploymentSettings = _stage(max_ongoing_requests=256, max_queued_requests=-1)
    encoder: RayDeploymentSettings = _stage()
    llm: RayDeploymentSettings = _stage()
    image: RayDeploymentSettings = _stage()
    audio: RayDeploymentSettings = _stage()
    video: RayDeploymentSettings = _stage()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NEXTGPT_", env_nested_delimiter="__", extra="ignore")

    # --- model ---------------------------------------------------------------------------------
    weights: str = Field(DEFAULT_PRESET, description="preset name or model directory to serve")
    model_name: str | None = Field(None, description="model id clients send; default: the weights' own name")
    devices: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', or JSON {stage: device}; 'auto' "
                         "with the real release plans a placement over the GPUs present (see gpu_budget, quantize)")
    gpu_budget: float = Field(0.9, gt=0, le=1, description="fraction of each GPU's memory the automatic placement "
                              "may plan for (devices 'auto', the real release only)")
    quantize: str | None = Field(None, description="'int8' or 'int4': force the LLM's weights to this bitsandbytes "
                                 "format in the automatic placement; default: the placement decides")
    warmup: bool = Field(True, description="run one small request through every stage before /ready")
    accelerate_decoders: Literal["auto", "all", "off"] = Field(
        "auto", description="channels_last, fused QKV and a torch.compile'd UNet for the decoders: 'auto' those on "
        "a GPU (not under CPU offload), 'all' on the CPU too, 'off' the stock pipelines")
    compile_mode: str | None = Field(None, description="torch.compile mode of the decoders' UNets: default "
                                     "inductor's; 'reduce-overhead' adds CUDA graphs (one per batch size and shape)")
    # --- network -------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=0, le=65535, description="port to bind")
    api_keys: StrList = Field(default_factory=list, description="accepted Bearer keys; empty: no auth")
    cors_origins: StrList = Field(default_factory=list, description="origins allowed by CORS; empty: none")
    public_base_url: str | None = Field(None, description="base of file URLs (behind a proxy); default: the request's")
    # --- scheduling ----------------------------------------------------------------------------
    queue_size: int = Field(32, ge=1, description="requests admitted at once (running or waiting); more get 429")
    request_deadline_s: float = Field(600.0, gt=0, description="a request still running after this gets 504")
    retry_after_s: int = Field(1, ge=1, description="minimum Retry-After of a 429")
    shutdown_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM, in-flight requests get this long to "
                                      "finish before they are cancelled (keep it under the orchestrator's grace period)")
    decoder_max_batch: int = Field(8, ge=1, description="concurrent requests' decoder calls with equal "
                                   "parameters share one pipeline call, up to this many; 1 turns batching off")
    llm_max_batch: int = Field(8, ge=1, description="concurrent requests generate their tokens together, one "
                               "forward pass per token for up to this many (continuous batching); 1 turns it off")
    llm_static_cache: Literal["auto", "on", "off"] = Field(
        "auto", description="a lone request decodes over a static KV cache with a torch.compile'd step (CUDA graphs on "
        "a GPU): 'auto' when the LLM is on a GPU, 'on' on the CPU too, 'off' never")
    # --- generated files -----------------------------------------------------------------------
    files_dir: Path | None = Field(None, description="where generated media are kept; default: a temp dir")
    file_ttl_s: float = Field(3600.0, gt=0, description="generated media are deleted this long after creation")
    # --- request limits ------------------------------------------------------------------------
    max_body_bytes: int = Field(64 * MiB, ge=1024, description="largest request body (HTTP) or WS message")
    max_media_items: int = Field(8, ge=0, description="media items in one request (all messages)")
    max_media_bytes: int = Field(20 * MiB, ge=1, description="largest single media item, decoded from base64")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="per image or video frame")
    max_audio_seconds: float = Field(60.0, gt=0, description="longest audio input")
    max_video_seconds: float = Field(60.0, gt=0, description="longest video input")
    max_video_frames: int = Field(1800, ge=1, description="most frames in a video input")
    max_tokens_limit: int = Field(1024, ge=1, description="the largest max_tokens a request may ask")
    default_max_tokens: int = Field(246, ge=1, description="max_tokens when the request gives none")
    default_modalities: StrList = Field(["text", "image", "audio", "video"],
                                        description="outputs accepted when a request gives no `modalities`")
    # --- decoder limits (per-request image/audio/video parameters; read when the model loads) --
    max_decoder_steps: int = Field(100, ge=1, description="most num_inference_steps a request may ask")
    max_guidance_scale: float = Field(30.0, ge=0, description="largest guidance_scale")
    max_image_side: int = Field(1024, ge=8, description="height and width of images and video frames")
    max_output_audio_seconds: float = Field(30.0, gt=0, description="longest audio_length_in_s")
    max_output_frames: int = Field(32, ge=1, description="most num_frames of a generated video")
    # --- remote media URLs ---------------------------------------------------------------------
    allow_remote_urls: bool = Field(False, description="fetch http(s) media URLs (public addresses only)")
    remote_timeout_s: float = Field(10.0, gt=0, description="time allowed to fetch one remote URL")
    remote_max_bytes: int = Field(20 * MiB, ge=1, description="largest remote file fetched")
    # --- WebSocket -----------------------------------------------------------------------------
    ws_max_turns: int = Field(16, ge=1, description="turns of history one socket keeps (oldest dropped)")
    log_level: str = Field("info", description="uvicorn and server log level")
    # --- Ray Serve (`nextgpt serve --ray`) -----------------------------------------------------
    ray: RaySettings = Field(default_factory=RaySettings, description="Ray Serve deployments: JSON, or one "
                             "field at a time as NEXTGPT_RAY__FIELD / NEXTGPT_RAY__STAGE__FIELD (see Scale out)")

    @field_validator("api_keys", "cors_origins", "default_modalities", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [v.strip() for v in text.split(",") if v.strip()]
        return value

    @field_validator("quantize", mode="before")
    @classmethod
    def _quantize_format(cls, value: Any) -> Any:
        from models.placement import QUANT_ALIASES

        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "fp16")):
            return None
        key = str(value).strip().lower()
        if key not in QUANT_ALIASES:
            raise ValueError(f"unknown quantize {value!r}: use int8 or int4 (or leave it unset)")
        return QUANT_ALIASES[key]

    @field_validator("default_modalities")
    @classmethod
    def _known_modalities(cls, value: list[str]) -> list[str]:
        unknown = set(value) - {"text", "image", "audio", "video"}
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}: use text, image, audio, video")
        return value

    def media_limits(self) -> MediaLimits:
        return MediaLimits(max_bytes=self.max_media_bytes, max_pixels=self.max_image_pixels,
                           max_audio_seconds=self.max_audio_seconds,
                           max_video_seconds=self.max_video_seconds,
                           max_video_frames=self.max_video_frames)

    def decoder_limits(self) -> DecoderLimits:
        return DecoderLimits(max_steps=self.max_decoder_steps, max_guidance=self.max_guidance_scale,
                             max_side=self.max_image_side, max_audio_seconds=self.max_output_audio_seconds,
                             max_frames=self.max_output_frames)

    def wants_placement(self) -> bool:
        """devices 'auto': a model the size of the real release gets a planned placement."""
        return self.devices.strip() == "auto"

    def device_map(self) -> str | dict[str, str]:
        text = self.devices.strip()
        if text.startswith("{"):
            import json

            return json.loads(text)
        if text == "auto":
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        return text


def get_settings(conn: HTTPConnection) -> Settings:
    """The dependency every route uses; tests replace it with `app.dependency_overrides`
    (an override takes no arguments)."""
    return conn.app.state.settings


def app_settings(app) -> Settings:
    """What `get_settings` gives the routes, for code outside them (the middlewares)."""
    override = app.dependency_overrides.get(get_settings)
    return override() if override is not None else app.state.settings
