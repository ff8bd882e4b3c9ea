"""Sizes of every nano component and the training budget of every stage.

`steps` are the optimiser steps of each stage at full quality; `--quick F` scales them all by F
(a smoke run of the whole chain). Everything is a pure function of the seed, so a stage run twice
with the same seed and steps gives the same weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from models.config import LoraSpec, ModelConfig

CONDITION_DIM = 64  # the image and video decoders' CLIP width; the audio decoder's CLAP width

IMAGEBIND = dict(  # ImageBindModel keyword arguments: what imagebind/config.json records
    kernel_size=[2, 32, 32], audio_kernel_size=16, audio_stride=16,
    out_embed_dim=128, vision_embed_dim=128, vision_num_blocks=3, vision_num_heads=4,
    audio_embed_dim=96, audio_num_blocks=3, audio_num_heads=4, audio_drop_path=0.0,
    text_embed_dim=64, text_num_blocks=2, text_num_heads=4,
    depth_embed_dim=16, depth_num_blocks=1, depth_num_heads=2, thermal_embed_dim=16, thermal_num_blocks=1,
    thermal_num_heads=2, imu_embed_dim=16, imu_num_blocks=1, imu_num_heads=2,
)
LLAMA = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=False)
LLAMA_VOCAB = 512  # SentencePiece pieces before NExT-GPT's added tokens
LORA = LoraSpec(r=16, alpha=32, dropout=0.05)
PROJECTION = dict(d_model=128, nhead=4, num_layers=2, dim_feedforward=256)

CLIP_MERGES = 4000  # CLIP's first merges: every word of the world is one or a few pieces
CLIP_TEXT = dict(intermediate=128, layers=2, heads=4)
CLAP_TEXT = dict(hidden=64, intermediate=128, layers=2, heads=4)
CLAP_VOCAB = 400

UNET_CHANNELS = (48, 96, 96)  # image UNet; the video UNet3D copies it
AUDIO_UNET_CHANNELS = (32, 64, 64)
VAE_BLOCKS = (32, 64)  # 2x down: 32x32 images -> 4x16x16 latents
AUDIO_VAE_BLOCKS = (32, 64)

# audio features: what the AudioLDM VAE reads and the vocoder inverts
N_MELS = 32
HOP = 256  # = the vocoder's total upsampling
N_FFT = 1024
# One upsampling layer of stride HOP and kernel 2*HOP: each mel frame adds learned 32-ms grains,
# overlapped by half (a multi-layer HiFi-GAN stack learns high tones far too slowly here).
VOCODER = dict(upsample_initial_channel=64, upsample_rates=[HOP], upsample_kernel_sizes=[2 * HOP],
               resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]])

# where each decoder stage writes its pipeline, under the work directory: what the video stage
# starts from, the output projections take their targets from and the model is assembled from
DECODER_STAGE_DIRS = {"image": "image_decoder", "audio": "audio_decoder", "video": "video_decoder"}
VIDEO_UNET_DIR = "video_unet_decoder"  # the video decoder after `video_unet`, before `video_motion`

DECODER_DEFAULTS = {  # nano's defaults: small and quick on a CPU
    "image": {"num_inference_steps": 20, "guidance_scale": 4.0, "height": 32, "width": 32},
    "audio": {"num_inference_steps": 20, "guidance_scale": 4.0, "audio_length_in_s": 1.024},
    "video": {"num_inference_steps": 20, "guidance_scale": 4.0, "num_frames": 8, "height": 32, "width": 32, "fps": 8},
}


@dataclass
class Budget:
    """Optimiser steps and batch size per stage (full quality)."""

    steps: dict[str, int] = field(default_factory=lambda: {
        "image_vae": 800, "image_unet": 1200, "vocoder": 800, "audio_vae": 400, "audio_unet": 1400,
        "video_unet": 500, "video_motion": 600, "imagebind": 1800, "llm": 1500, "align_input": 600,
        "align_output": 800, "instruct": 2500,
    })
    batch: dict[str, int] = field(default_factory=lambda: {
        "image_vae": 32, "image_unet": 32, "vocoder": 12, "audio_vae": 32, "audio_unet": 32,
        "video_unet": 8, "video_motion": 8, "imagebind": 32, "llm": 32, "align_input": 32, "align_output": 32,
        "instruct": 32,
    })

    def scaled(self, factor: float) -> "Budget":
        return Budget({k: max(2, int(v * factor)) for k, v in self.steps.items()}, dict(self.batch))


def nano_config() -> ModelConfig:
    from ..tiny import small_config

    return small_config("nextgpt-nano", IMAGEBIND["out_embed_dim"], LORA, CONDITION_DIM, PROJECTION, DECODER_DEFAULTS)
