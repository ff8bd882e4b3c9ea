"""Toy-size Stable Diffusion, AudioLDM and Zeroscope, in diffusers' own on-disk layout."""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (AudioLDMPipeline, AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler,
                       PNDMScheduler, StableDiffusionPipeline, TextToVideoSDPipeline,
                       UNet2DConditionModel, UNet3DConditionModel)
from transformers import (ClapTextConfig, ClapTextModelWithProjection, CLIPTextConfig, CLIPTextModel,
                          SpeechT5HifiGan, SpeechT5HifiGanConfig)

from models.config import ModelConfig

from .corpus import tokenizer_corpus
from .tokenizers_local import clip_tokenizer, roberta_tokenizer


def clip_text(vocab_size: int, width: int, intermediate: int = 37, layers: int = 2, heads: int = 4) -> CLIPTextModel:
    """A CLIP text encoder (Stable Diffusion's and Zeroscope's conditioning) of width `width`."""
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=77, bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)).eval()


def clap_text(vocab_size: int, width: int, hidden: int = 32, intermediate: int = 37, layers: int = 2,
              heads: int = 4) -> ClapTextModelWithProjection:
    """AudioLDM's CLAP text tower, projecting to `width`."""
    return ClapTextModelWithProjection(ClapTextConfig(
        bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=hidden, intermediate_size=intermediate,
        num_attention_heads=heads, num_hidden_layers=layers, vocab_size=vocab_size, projection_dim=width)).eval()


def vae(channels: int, blocks: tuple[int, ...] = (32, 64), latent_channels: int = 4, groups: int = 8) -> AutoencoderKL:
    """An AutoencoderKL; each block after the first halves the resolution."""
    return AutoencoderKL(block_out_channels=list(blocks), in_channels=channels, out_channels=channels,
                         down_block_types=["DownEncoderBlock2D"] * len(blocks),
                         up_block_types=["UpDecoderBlock2D"] * len(blocks),
                         latent_channels=latent_channels, norm_num_groups=groups).eval()


def build_image(out: Path, width: int, seed: int) -> None:
    torch.manual_seed(seed)
    tokenizer = clip_tokenizer(out / "tokenizer_src")
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=width, norm_num_groups=8).eval()
    pipe = StableDiffusionPipeline(
        vae=vae(3), text_encoder=clip_text(len(tokenizer), width), tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(str(out))


def build_video(out: Path, width: int, seed: int) -> None:
    torch.manual_seed(seed)
    tokenizer = clip_tokenizer(out / "tokenizer_src")
    unet = UNet3DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=width, attention_head_dim=4, norm_num_groups=8).eval()
    scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = TextToVideoSDPipeline(vae=vae(3), text_encoder=clip_text(len(tokenizer), width),
                                 tokenizer=tokenizer, unet=unet, scheduler=scheduler)
    pipe.save_pretrained(str(out))


def build_audio(out: Path, width: int, seed: int) -> None:
    torch.manual_seed(seed)
    tokenizer = roberta_tokenizer(tokenizer_corpus(), out / "tokenizer_src")
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=(32, 64), class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=width, class_embeddings_concat=True, norm_num_groups=8).eval()
    text_encoder = clap_text(len(tokenizer), width)
    # 16 mel bins and 64x upsampling: one second of audio is 250 mel frames.
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=16, sampling_rate=16000, upsample_initial_channel=16, upsample_rates=[8, 8],
        upsample_kernel_sizes=[16, 16], resblock_kernel_sizes=[3, 7],
        resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], normalize_before=False)).eval()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False)
    pipe = AudioLDMPipeline(vae=vae(1), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                            scheduler=scheduler, vocoder=vocoder)
    pipe.save_pretrained(str(out))


def build_all(out: Path, config: ModelConfig, seed: int) -> None:
    parts = config.components
    for modality, build in (("image", build_image), ("audio", build_audio), ("video", build_video)):
        target = out / getattr(parts, modality)
        build(target, config.projections[modality].out_dim, seed)
        import shutil
        shutil.rmtree(target / "tokenizer_src", ignore_errors=True)
