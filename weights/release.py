"""Where each part of the released NExT-GPT 7b_tiva_v0 comes from, under which licence.

A `Release` is data: the fetch, assembly and listing code read it, and tests swap in the same
release at tiny sizes (same repositories and file names, tiny architecture constants).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from models.config import Components, LoraSpec, ModelConfig, RELEASE_PROJECTIONS

GROUPS = ("llm", "image", "audio", "video")  # what `--only` selects; `llm` is the core every answer needs
IMAGEBIND_URL = "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"

LLAMA_LICENCE = ("LLaMA-7B (and Vicuna, a LLaMA derivative): Meta's LLaMA licence, a non-commercial research "
                 "licence; you must have been granted access to LLaMA by Meta to use these weights. "
                 "Vicuna's authors add: non-commercial use only.")
IMAGEBIND_LICENCE = "ImageBind-huge: CC BY-NC-SA 4.0 (non-commercial, share-alike), Meta AI."


@dataclass(frozen=True)
class HubPart:
    """One Hugging Face repository and which of its files the server needs."""

    name: str  # the download folder and what messages call it
    repo_id: str
    group: str  # one of GROUPS
    kind: str  # "files": exactly `files`; "transformers": root config + weights; "diffusers": a pipeline
    licence: str
    files: tuple[str, ...] = ()
    skip_components: tuple[str, ...] = ()  # diffusers components the server never loads
    revision: str = "main"


@dataclass(frozen=True)
class UrlPart:
    """A file outside the hub, fetched over plain HTTPS with resume."""

    name: str
    url: str
    filename: str
    group: str
    licence: str
    sha256: str | None = None  # only when the publisher states one; Meta publishes none for ImageBind


@dataclass(frozen=True)
class Release:
    name: str
    hub_parts: tuple[HubPart, ...]
    url_parts: tuple[UrlPart, ...]
    # Functions, not values: what they import (torch, diffusers) stays out of `nextgpt --help`.
    imagebind_kwargs: Callable[[], dict] = dict  # ImageBindModel keyword arguments
    config: Callable[[], ModelConfig] = None  # nextgpt.json of the assembled directory
    components: Components = field(default_factory=Components)  # where each part goes (as in `config`)

    def parts(self, groups) -> list[HubPart | UrlPart]:
        return [p for p in (*self.hub_parts, *self.url_parts) if p.group in groups]

    def with_url(self, name: str, url: str) -> "Release":
        """The same release with one URL part served elsewhere (a mirror, or a test server)."""
        parts = tuple(dataclasses.replace(p, url=url) if p.name == name else p for p in self.url_parts)
        return dataclasses.replace(self, url_parts=parts)


def imagebind_huge() -> dict:
    from models.encoder import IMAGEBIND_HUGE

    return dict(IMAGEBIND_HUGE)


def release_config() -> ModelConfig:
    """nextgpt.json of the assembled release: NEXTGPT.md's shapes and the reference demo's defaults."""
    from models.decoders import PARAMS_OF

    return ModelConfig(
        name="nextgpt-7b-tiva-v0",
        media_dim=1024,
        lora=LoraSpec(r=32, alpha=32, dropout=0.1),
        projections=dict(RELEASE_PROJECTIONS),
        decoder_defaults={m: dataclasses.asdict(cls()) for m, cls in PARAMS_OF.items()},
        components=Components(),
    )


NEXTGPT_7B_TIVA_V0 = Release(
    name="nextgpt-7b-tiva-v0",
    hub_parts=(
        HubPart("nextgpt", "ChocoWu/nextgpt_7b_tiva_v0", "llm", "files",
                "NExT-GPT: BSD 3-Clause code licence; its authors state research, non-commercial use only.",
                files=("pytorch_model.pt", "tokenizer.model", "tokenizer_config.json",
                       "special_tokens_map.json", "added_tokens.json")),
        HubPart("llama", "huggyllama/llama-7b", "llm", "transformers", LLAMA_LICENCE),
        HubPart("vicuna_delta", "lmsys/vicuna-7b-delta-v0", "llm", "transformers", LLAMA_LICENCE),
        HubPart("image", "stable-diffusion-v1-5/stable-diffusion-v1-5", "image", "diffusers",
                "Stable Diffusion v1.5: CreativeML OpenRAIL-M (use-based restrictions).",
                skip_components=("safety_checker",)),
        HubPart("audio", "cvssp/audioldm-l-full", "audio", "diffusers",
                "AudioLDM-L: CC BY-NC-SA 4.0 (non-commercial), see the model card."),
        HubPart("video", "cerspense/zeroscope_v2_576w", "video", "diffusers",
                "Zeroscope v2 576w: CC BY-NC 4.0 (non-commercial), see the model card."),
    ),
    url_parts=(UrlPart("imagebind", IMAGEBIND_URL, "imagebind_huge.pth", "llm", IMAGEBIND_LICENCE),),
    imagebind_kwargs=imagebind_huge,
    config=release_config,
)

RELEASES = {NEXTGPT_7B_TIVA_V0.name: NEXTGPT_7B_TIVA_V0}

# Parameters of each stage of the release, for GPU-memory estimates before anything is on disk
# (`nextgpt weights list` recounts them from the files once fetched).
# encoder and llm: counted on the meta device from the architecture (tests/weights recount them);
# the decoders: counted the same way from their published configurations; AudioLDM's UNet is the
# paper's 739M (AudioLDM-L), so its total is approximate.
RELEASE_PARAMS = {
    "encoder": 719_065_089,  # ImageBind-huge, vision (632.8M) + audio (86.2M) towers only
    "llm": 6_872_317_184,  # Vicuna-7B with the release's 32038-row embed_tokens/lm_head, LoRA r=32, llama_proj, output projections
    "image": 1_066_235_307,  # SD 1.5: UNet 859.5M + VAE 83.7M + CLIP ViT-L text 123.1M
    "audio": 975_000_000,  # AudioLDM-L: UNet ~739M + CLAP text 125.3M + VAE 55.4M + HiFi-GAN 55.3M (approx.)
    "video": 1_835_275_563,  # Zeroscope v2: UNet3D 1411.2M + VAE 83.7M + OpenCLIP-H text 340.4M
}
