"""The released NExT-GPT's architectures at real size with RANDOM weights, built from configs
written here: the GPU machine has no hub access, and speed does not depend on weight values.

Every value below is copied from the named source (config files of the hub repos the release
uses, or the conversion code that produced them); nothing is guessed. `tiny=True` gives the same
classes at toy sizes so the whole bench runs on a CPU in seconds (`--tiny-cpu`).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

# --- LLM: Vicuna-7B v0 = LLaMA-1 7B. Source: huggyllama/llama-7b config.json (LLaMA-1 7B, the base
# Vicuna v0's delta applies to); vocab 32038 = the release's tokenizer (shared/NEXTGPT.md).
LLAMA_7B = dict(vocab_size=32038, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
                rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)
LLAMA_TINY = dict(LLAMA_7B, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4)

# --- Stable Diffusion v1.5. Source: stable-diffusion-v1-5/stable-diffusion-v1-5
# unet/config.json, vae/config.json, text_encoder/config.json, scheduler/scheduler_config.json.
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 norm_num_groups=32, norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0)
SD_VAE = dict(sample_size=512, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
              block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, act_fn="silu",
              scaling_factor=0.18215)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                 projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1)
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                      steps_offset=1, set_alpha_to_one=False)  # (its clip_sample=false is not a PNDM argument)

# --- Zeroscope v2 576w (ModelScope T2V architecture). Source: cerspense/zeroscope_v2_576w and
# damo-vilab/text-to-video-ms-1.7b unet/config.json (same UNet3D config); text_encoder/config.json
# (OpenCLIP ViT-H text tower as in SD 2: 1024 wide, 23 layers); vae = the SD VAE config above;
# scheduler: DDIMScheduler (zeroscope model_index.json) with the SD betas.
ZEROSCOPE_UNET = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
                      block_out_channels=(320, 640, 1280, 1280), attention_head_dim=64, cross_attention_dim=1024,
                      down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D",
                                        "DownBlock3D"),
                      up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
                      norm_num_groups=32, norm_eps=1e-5, act_fn="silu")
OPENCLIP_H_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                       num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
                       bos_token_id=0, eos_token_id=2, pad_token_id=1)
ZEROSCOPE_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                           set_alpha_to_one=False, steps_offset=1)

# --- AudioLDM-l-full. Source: haoheliu/AudioLDM audioldm/utils.py default_audioldm_config() with its
# "-l-" override (model_channels 256, num_head_channels 64; channel_mult [1,2,3,5], attention at
# resolutions [8,4,2], extra_film_condition_dim 512, 8 latent channels), turned into diffusers
# configs exactly as diffusers' scripts/convert_original_audioldm_to_diffusers.py does
# (create_unet_diffusers_config / create_vae_diffusers_config / create_transformers_vocoder_config,
# image_size 512). That script leaves attention_head_dim at the diffusers default (8).
AUDIOLDM_L_UNET = dict(sample_size=128, in_channels=8, out_channels=8, layers_per_block=2,
                       block_out_channels=(256, 512, 768, 1280),
                       down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                         "CrossAttnDownBlock2D"),
                       up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                       cross_attention_dim=(256, 512, 768, 1280), class_embed_type="simple_projection",
                       projection_class_embeddings_input_dim=512, class_embeddings_concat=True)
AUDIOLDM_VAE = dict(sample_size=512, in_channels=1, out_channels=1, latent_channels=8, layers_per_block=2,
                    block_out_channels=(128, 256, 512), down_block_types=("DownEncoderBlock2D",) * 3,
                    up_block_types=("UpDecoderBlock2D",) * 3, scaling_factor=1.0)
# CLAP text tower: the script loads ClapTextConfig from laion/clap-htsat-unfused, whose text config is
# transformers' ClapTextConfig defaults (RoBERTa-base, 512-d projection); written out here.
CLAP_TEXT = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, projection_dim=512,
                 projection_hidden_act="relu", hidden_act="gelu", pad_token_id=1, bos_token_id=0, eos_token_id=2)
HIFIGAN_16K = dict(model_in_dim=64, sampling_rate=16000, upsample_initial_channel=1024,
                   upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[16, 16, 8, 4, 4],
                   resblock_kernel_sizes=[3, 7, 11], resblock_dilation_sizes=[[1, 3, 5]] * 3, normalize_before=False)
AUDIOLDM_SCHEDULER = dict(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear", steps_offset=1,
                          clip_sample=False, set_alpha_to_one=False)


# --- toy sizes: the same classes, first and last block types, a few channels (--tiny-cpu, tests) -------
def _tiny_unet(cfg: dict, cross) -> dict:
    return dict(cfg, block_out_channels=(16, 32), norm_num_groups=8, layers_per_block=1, sample_size=8,
                down_block_types=(cfg["down_block_types"][0], cfg["down_block_types"][-1]),
                up_block_types=(cfg["up_block_types"][0], cfg["up_block_types"][-1]),
                cross_attention_dim=cross, attention_head_dim=8)


TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)


def _tiny_vae(cfg: dict) -> dict:
    return dict(cfg, block_out_channels=(16, 16), norm_num_groups=8, layers_per_block=1,
                down_block_types=cfg["down_block_types"][:2], up_block_types=cfg["up_block_types"][:2])


def sd_configs(tiny: bool) -> tuple[dict, dict, dict]:
    if not tiny:
        return SD15_UNET, SD_VAE, SD15_TEXT
    return _tiny_unet(SD15_UNET, 32), _tiny_vae(SD_VAE), dict(SD15_TEXT, **TINY_TEXT)


def zeroscope_configs(tiny: bool) -> tuple[dict, dict, dict]:
    if not tiny:
        return ZEROSCOPE_UNET, SD_VAE, OPENCLIP_H_TEXT
    return _tiny_unet(ZEROSCOPE_UNET, 32), _tiny_vae(SD_VAE), dict(OPENCLIP_H_TEXT, **TINY_TEXT)


def audioldm_configs(tiny: bool) -> tuple[dict, dict, dict, dict]:
    if not tiny:
        return AUDIOLDM_L_UNET, AUDIOLDM_VAE, CLAP_TEXT, HIFIGAN_16K
    vocoder = dict(HIFIGAN_16K, upsample_initial_channel=16, upsample_rates=[8, 4, 5],
                   upsample_kernel_sizes=[16, 8, 10], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]])
    return _tiny_unet(AUDIOLDM_L_UNET, (16, 32)), _tiny_vae(AUDIOLDM_VAE), dict(CLAP_TEXT, **TINY_TEXT), vocoder


@contextmanager
def building_on(device, dtype: torch.dtype):
    """Allocate (and randomly initialise) parameters directly on `device` in `dtype`: a 7B model
    built on the host in fp32 would need 27 GB and a minute; on the GPU in fp16 it takes seconds."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_llama(tiny: bool, device="cpu", dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**(LLAMA_TINY if tiny else LLAMA_7B))
    config._attn_implementation = "sdpa"
    with building_on(device, dtype):
        model = LlamaForCausalLM(config)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def build_sd(tiny: bool, device="cpu", dtype=torch.float32):
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_cfg, vae_cfg, text_cfg = sd_configs(tiny)
    with building_on(device, dtype):
        unet, vae = UNet2DConditionModel(**unet_cfg), AutoencoderKL(**vae_cfg)
        text = CLIPTextModel(CLIPTextConfig(**text_cfg))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=None, unet=unet,
                                   scheduler=PNDMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    return _finish(pipe, device, dtype)


def build_zeroscope(tiny: bool, device="cpu", dtype=torch.float32):
    from diffusers import AutoencoderKL, DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_cfg, vae_cfg, text_cfg = zeroscope_configs(tiny)
    with building_on(device, dtype):
        unet, vae = UNet3DConditionModel(**unet_cfg), AutoencoderKL(**vae_cfg)
        text = CLIPTextModel(CLIPTextConfig(**text_cfg))
    pipe = TextToVideoSDPipeline(vae=vae, text_encoder=text, tokenizer=None, unet=unet,
                                 scheduler=DDIMScheduler(**ZEROSCOPE_SCHEDULER))
    return _finish(pipe, device, dtype)


def build_audioldm(tiny: bool, device="cpu", dtype=torch.float32):
    from diffusers import AudioLDMPipeline, AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import ClapTextConfig, ClapTextModelWithProjection, SpeechT5HifiGan, SpeechT5HifiGanConfig

    unet_cfg, vae_cfg, text_cfg, vocoder_cfg = audioldm_configs(tiny)
    with building_on(device, dtype):
        unet, vae = UNet2DConditionModel(**unet_cfg), AutoencoderKL(**vae_cfg)
        text = ClapTextModelWithProjection(ClapTextConfig(**text_cfg))
        vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**vocoder_cfg))
    pipe = AudioLDMPipeline(vae=vae, text_encoder=text, tokenizer=None, unet=unet,
                            scheduler=DDIMScheduler(**AUDIOLDM_SCHEDULER), vocoder=vocoder)
    return _finish(pipe, device, dtype)


def _finish(pipe, device, dtype):
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    for name in ("unet", "vae", "text_encoder", "vocoder"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.eval().requires_grad_(False)
    return pipe


# NExT-GPT's output projections (shared/NEXTGPT.md): (decoder conditioning width D, queries Q); the
# transformer sizes are OutputProjectionConfig's defaults, which are the release's.
RELEASE_OUTPUTS = {"image": (768, 77), "video": (1024, 77), "audio": (512, 1)}


def build_projection(modality: str, hidden: int, device="cpu", dtype=torch.float32, out_dim: int | None = None,
                     tiny: bool = False):
    """The project's own output projection module for `modality` at release sizes (unless `tiny`);
    `out_dim` overrides the conditioning width (toy decoders are narrower)."""
    from models.output_proj import OutputProjection, OutputProjectionConfig

    width, queries = RELEASE_OUTPUTS[modality]
    sizes = dict(d_model=32, nhead=4, num_layers=1, dim_feedforward=64) if tiny else {}
    cfg = OutputProjectionConfig(in_dim=hidden, out_dim=out_dim or width, num_queries=queries, **sizes)
    with building_on(device, dtype):
        return OutputProjection(cfg).to(device=device, dtype=dtype).eval().requires_grad_(False)


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
