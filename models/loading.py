"""Loading a model directory into its stages: the body of `NextGPT.from_pretrained`.

Each stage loads onto its own device and dtype. A `Placement` (models/placement.py) overrides the
devices and adds what a small GPU needs: the LLM's weights quantized by bitsandbytes on load, and
decoders run with diffusers' CPU offload instead of being moved onto their GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CHECKPOINT_FILE, load_release_checkpoint
from .config import ModelConfig
from .decoders import PARAMS_OF, Decoder
from .encoder import ImageBindEncoder
from .llm import LanguageModel, LoraSettings
from .output_proj import OutputProjection, OutputProjectionConfig
from .placement import Placement, StagePlan, bnb_config
from .signals import MODALITIES

STAGES = ("encoder", "llm", "image", "audio", "video")


def default_dtype(device: str) -> torch.dtype:
    return torch.float16 if str(device).startswith("cuda") else torch.float32


def quiet_loading() -> None:
    """Loading a model is one step for our callers: no per-file progress bars from the libraries."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def build_projections(config: ModelConfig, hidden: int) -> nn.ModuleDict:
    return nn.ModuleDict({
        m: OutputProjection(OutputProjectionConfig(in_dim=hidden, **config.projections[m].model_dump()))
        for m in MODALITIES
    })


def stage_devices(devices: dict[str, str] | str) -> dict[str, str]:
    """One device for every stage (see STAGES): a single device, or a map whose gaps mean the CPU."""
    if isinstance(devices, str):
        return {s: devices for s in STAGES}
    return {s: devices.get(s, "cpu") for s in STAGES}


@dataclass
class LoadedParts:
    config: ModelConfig
    encoder: ImageBindEncoder | None  # None: that stage was not asked for (see `stages`)
    llm: LanguageModel | None
    projections: nn.ModuleDict
    decoders: dict[str, Decoder]


def load_parts(path: str | Path, devices: dict[str, str] | str = "cpu",
               placement: Placement | None = None, stages: tuple[str, ...] = STAGES) -> LoadedParts:
    """The stages (see STAGES) of the model directory at `path`; `placement`, when given,
    overrides `devices`. A process serving one stage (a Ray Serve replica) loads only that one."""
    path = Path(path)
    config = ModelConfig.load(path)
    quiet_loading()
    plans = placement.stages if placement is not None else {}
    place = stage_devices(placement.devices if placement is not None else devices)
    parts = config.components
    encoder = llm = None
    projections = nn.ModuleDict()
    if "encoder" in stages:
        encoder = ImageBindEncoder.from_pretrained(path / parts.encoder, place["encoder"],
                                                   default_dtype(place["encoder"]))
    if "llm" in stages:
        llm, projections = load_language(path, config, place["llm"], plans.get("llm"))
    decoders = load_decoders(path, config, place, plans, [m for m in MODALITIES if m in stages])
    return LoadedParts(config, encoder, llm, projections, decoders)


def decoders_present(path: str | Path) -> list[str]:
    """The decoders a model directory holds (one fetched with --only serves what is there)."""
    path = Path(path)
    parts = ModelConfig.load(path).components
    return [m for m in MODALITIES if (path / getattr(parts, m)).is_dir()]


def load_language(path: Path, config: ModelConfig, device: str,
                  plan: StagePlan | None = None) -> tuple[LanguageModel, nn.ModuleDict]:
    """The LoRA LLM with the release checkpoint in it, and the output projections (on the CPU:
    NextGPT moves them next to the LLM). A plan with `quantize` loads the base through
    bitsandbytes straight onto the GPU, in float16 compute: no fp32 copy on the host."""
    parts = config.components
    lora = LoraSettings(r=config.lora.r, alpha=config.lora.alpha, dropout=config.lora.dropout)
    quantize = plan.quantize if plan is not None else None
    if quantize:
        llm = LanguageModel.from_pretrained(path / parts.llm, path / parts.nextgpt, config.media_dim, lora,
                                            device=device, dtype=torch.float16,
                                            quantization_config=bnb_config(quantize))
    else:
        llm = LanguageModel.from_pretrained(path / parts.llm, path / parts.nextgpt, config.media_dim, lora,
                                            device="cpu", dtype=torch.float32)
    projections = build_projections(config, llm.lm.config.hidden_size)
    load_release_checkpoint(path / parts.nextgpt / CHECKPOINT_FILE, llm, dict(projections))
    if not quantize:  # a quantized model refuses .to(dtype); it is on its device already
        llm = llm.to(device, default_dtype(device)).eval()
    return llm, projections


def load_decoders(path: Path, config: ModelConfig, place: dict[str, str],
                  plans: dict[str, StagePlan], wanted: tuple[str, ...] | list[str] = MODALITIES) -> dict[str, Decoder]:
    """The decoders the directory holds (one fetched with --only serves what is there)."""
    parts = config.components
    decoders = {}
    for m in wanted:
        folder = path / getattr(parts, m)
        if not folder.is_dir():
            continue
        defaults = PARAMS_OF[m](**config.decoder_defaults.get(m, {}))
        offload = plans[m].offload if m in plans else None
        decoders[m] = Decoder.from_pretrained(m, folder, defaults, place[m], default_dtype(place[m]), offload=offload)
    return decoders
