"""The video decoder's stages: Zeroscope's UNet3D at nano size, trained on moving shapes.

`video_unet` starts the UNet3D from the image UNet (its temporal layers as identities) and trains
it, with the image text encoder, on the diffusion loss. At nano size and budget that teaches the
shape and colour of every frame but not the motion: `video_motion` (video_motion.py) teaches that.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from diffusers import StableDiffusionPipeline, TextToVideoSDPipeline, UNet2DConditionModel, UNet3DConditionModel

from . import config, world
from .common import EMA, Context, train_loop
from .decoders import clip_encode, diffusion_loss, drop_captions, noise_schedule, sampler


def video_batch(rng: random.Random, n: int) -> tuple[torch.Tensor, list[str]]:
    """(n, 8, 3, 32, 32) in [-1, 1] and their captions."""
    samples = [world.random_video(rng, world.shape_pairs()) for _ in range(n)]
    x = np.stack([s.frames().astype(np.float32) for s in samples]) / 127.5 - 1
    return torch.from_numpy(x).permute(0, 1, 4, 2, 3).contiguous(), [s.caption for s in samples]


def video_latents(vae, x: torch.Tensor) -> torch.Tensor:
    """(n, F, 3, H, W) frames -> (n, 4, F, h, w) scaled latents: the pipeline's layout."""
    b, f = x.shape[:2]
    with torch.no_grad():
        z = vae.encode(x.flatten(0, 1)).latent_dist.sample() * vae.config.scaling_factor  # (n*F, 4, h, w)
    return z.unflatten(0, (b, f)).permute(0, 2, 1, 3, 4)


def video_unet_from(image: UNet2DConditionModel) -> UNet3DConditionModel:
    """A UNet3D with the image UNet's spatial weights; its temporal layers start as identities."""
    ch = config.UNET_CHANNELS
    unet = UNet3DConditionModel(
        block_out_channels=ch, layers_per_block=1, sample_size=world.IMAGE_SIZE // 2, in_channels=4, out_channels=4,
        down_block_types=("DownBlock3D",) + ("CrossAttnDownBlock3D",) * (len(ch) - 1),
        up_block_types=("CrossAttnUpBlock3D",) * (len(ch) - 1) + ("UpBlock3D",),
        # UNet3D reads attention_head_dim as the width of a head, UNet2D as the number of heads:
        # 96 channels / 12 = the image UNet's 8 heads
        cross_attention_dim=config.CONDITION_DIM, attention_head_dim=ch[-1] // 8, norm_num_groups=16)
    spatial = image.state_dict()
    own = unet.state_dict()
    copied = {k: v for k, v in spatial.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in spatial if k not in copied]
    if missing:
        raise RuntimeError(f"image UNet weights with no place in the video UNet: {missing[:5]}")
    unet.load_state_dict(copied, strict=False)
    with torch.no_grad():  # temporal attention outputs start at zero (temporal convs already do)
        for name, module in unet.named_modules():
            if is_temporal(name) and name.endswith("proj_out"):
                module.weight.zero_()
                module.bias.zero_()
    return unet


def is_temporal(name: str) -> bool:
    """A UNet3D parameter or module of the temporal layers (the ones the image UNet does not have)."""
    return "temp_" in name or "transformer_in" in name


def unet_groups(unet: UNet3DConditionModel, slow_scale: float, fast=is_temporal, fast_scale: float = 1.0) -> list[dict]:
    """Two learning-rate groups: the parameters whose names `fast` picks (by default the temporal
    layers) at `fast_scale`, the rest (the spatial layers, from the image UNet) at `slow_scale`."""
    fast_params = [p for k, p in unet.named_parameters() if fast(k)]
    ids = {id(p) for p in fast_params}
    slow = [p for p in unet.parameters() if id(p) not in ids]
    return [{"params": fast_params, "lr_scale": fast_scale}, {"params": slow, "lr_scale": slow_scale}]


def stage_video_unet(ctx: Context) -> dict:
    stage = "video_unet"
    ctx.seed_torch(stage)
    rng = ctx.rng(stage)
    image = StableDiffusionPipeline.from_pretrained(str(ctx.work / config.DECODER_STAGE_DIRS["image"]),
                                                    safety_checker=None, requires_safety_checker=False)
    vae = image.vae.eval().requires_grad_(False)
    tokenizer, text = image.tokenizer, image.text_encoder.train()
    unet = video_unet_from(image.unet).train()
    sched = noise_schedule()
    emas = [EMA(unet, 0.995), EMA(text, 0.995)]
    n = ctx.batch(stage)

    def step(i):
        x, captions = video_batch(rng, n)  # (n, F, 3, H, W)
        z = video_latents(vae, x)
        cond = clip_encode(tokenizer, text, drop_captions(rng, captions))
        return {"loss": diffusion_loss(unet, z, sched, encoder_hidden_states=cond)}

    groups = unet_groups(unet, 0.3)
    groups[1]["params"] += list(text.parameters())
    info = train_loop(stage, ctx, None, step, lr=1e-3, ema=emas, param_groups=groups,
                      modules={"unet": unet, "text": text}, rng=rng)
    pipe = TextToVideoSDPipeline(vae=vae, text_encoder=emas[1].copy_to().eval(), tokenizer=tokenizer,
                                 unet=emas[0].copy_to().eval(), scheduler=sampler())
    pipe.save_pretrained(str(ctx.dir(config.VIDEO_UNET_DIR)))
    return info
