"""The video decoder's second stage: make it move the shape the way its caption says.

After `video_unet` the decoder draws the right shape and colour in every frame but moves it at
random. Two measured causes (docs/nano-history.md): the text encoder gives "moving left" and
"moving right" the same conditioning (image captions never name a direction), and the UNet3D
barely knows which frame it draws (Zeroscope's temporal layers have no position embedding), so
its first guess from noise does not travel. This stage fine-tunes the decoder with the diffusion
loss plus three terms, each dropped after training (the saved pipeline is a stock one):

- *direction*: a cosine classifier names the direction from the text encoder's output at the
  direction word and the end token, so the four captions stop coinciding;
- *caption mean*: at high noise the best estimate of the clean clip is the mean clip of the
  caption, a low-variance target that only a UNet reading the direction can meet;
- *frame index*: a linear head names each frame's index from the mid and up-block features.
  In session 6's experiments this was the term that made the first guess travel the named way.
"""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import TextToVideoSDPipeline

from . import config, world
from .common import Context, train_loop
from .decoders import clip_encode, clip_ids, drop_captions, noise_schedule
from .video import is_temporal, unet_groups, video_batch, video_latents

DIRECTIONS = list(world.DIRECTIONS)
# session 6's. The first two terms' losses are near 0 within 90 steps; the caption-mean term still
# falls when the rate decays, and it is steps (600, from 450), not its weight (0.3 tried), that
# made the first guess travel on every seed tried (docs/nano-history.md, session 37)
WEIGHTS = {"direction": 0.05, "mean": 0.1, "frame_index": 0.05}
HIGH_NOISE_SHARE = 0.5  # of the diffusion loss's timesteps drawn from the upper half: the motion is set there
# where the caption's mean clip is the best estimate of the clean one; half of each batch is noised
# into it, so that one UNet pass serves both terms (a second pass on the whole batch, until
# session 25, cost 3.8 s a step of 450 against about 2.2 s: docs/nano-history.md, sessions 8 and 25)
MEAN_T = (800, 1000)
MEAN_CLIPS = 48  # clips averaged per caption
COSINE_SCALE = 10.0  # the direction classifier's logit scale


class MotionHeads(torch.nn.Module):
    """The training-only heads: direction prototypes on the text side, frame index on the UNet."""

    def __init__(self, text_width: int, unet_channels: tuple[int, ...], frames: int):
        super().__init__()
        self.direction = torch.nn.Parameter(torch.randn(len(DIRECTIONS), text_width) * 0.1)
        self.frame_index = torch.nn.Linear(unet_channels[-1] + unet_channels[-2], frames)


def direction_positions(tokenizer, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, 77) and, per caption, the positions of its last word and its end token (B, 2).

    Located from the end token, not fixed: a colour or shape of two pieces moves them."""
    ids = clip_ids(tokenizer, captions)
    end = (ids == tokenizer.eos_token_id).int().argmax(dim=1)  # the first end token (padding repeats it)
    return ids, torch.stack([end - 1, end], dim=1)


def direction_loss(tokenizer, text, heads: MotionHeads, rng: random.Random, n_pairs: int) -> torch.Tensor:
    """Cross-entropy of the direction named by every caption of `n_pairs` colour/shape pairs."""
    pairs = [rng.choice(world.shape_pairs()) for _ in range(n_pairs)]
    captions = [world.article(f"a {c} {s} moving {d}") for c, s in pairs for d in DIRECTIONS]
    ids, pos = direction_positions(tokenizer, captions)
    h = text(ids)[0]  # (B, 77, D)
    h = h.gather(1, pos.unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # (B, 2, D)
    logits = COSINE_SCALE * F.normalize(h, dim=-1) @ F.normalize(heads.direction, dim=-1).T  # (B, 2, 4)
    labels = torch.arange(len(DIRECTIONS)).repeat(n_pairs).repeat_interleave(2)
    return F.cross_entropy(logits.flatten(0, 1), labels)


@torch.no_grad()
def caption_means(vae, rng: random.Random, clips: int) -> dict[str, torch.Tensor]:
    """Every seen caption's mean latent clip (4, F, h, w); "" (a dropped caption) gets the mean of all."""
    means = {}
    for colour, shape in world.shape_pairs():
        for d in DIRECTIONS:
            samples = [world.random_video(rng, [(colour, shape)], directions=(d,)) for _ in range(clips)]
            x = np.stack([s.frames().astype(np.float32) for s in samples]) / 127.5 - 1
            x = torch.from_numpy(x).permute(0, 1, 4, 2, 3)  # (n, F, 3, H, W)
            means[samples[0].caption] = video_latents(vae, x).mean(0)
    means[""] = torch.stack(list(means.values())).mean(0)
    return means


def _timesteps(n: int, high_share: float) -> torch.Tensor:
    t = torch.randint(0, 1000, (n,))
    return torch.where(torch.rand(n) < high_share, torch.randint(500, 1000, (n,)), t)


def _param_groups(unet, text, heads) -> list[dict]:
    """Temporal and cross-attention layers 3x the rate (they must learn the motion and read the
    caption's direction); the other spatial layers, which already draw shapes, 0.3x."""
    groups = unet_groups(unet, 0.3, fast=lambda name: is_temporal(name) or "attn2" in name, fast_scale=3.0)
    return groups + [{"params": list(text.parameters()) + list(heads.parameters()), "lr_scale": 1.0}]


def stage_video_motion(ctx: Context) -> dict:
    stage = "video_motion"
    ctx.seed_torch(stage)
    rng = ctx.rng(stage)
    pipe = TextToVideoSDPipeline.from_pretrained(str(ctx.work / config.VIDEO_UNET_DIR))
    tokenizer, vae = pipe.tokenizer, pipe.vae.eval().requires_grad_(False)
    text, unet = pipe.text_encoder.train(), pipe.unet.train()
    heads = MotionHeads(text.config.hidden_size, tuple(unet.config.block_out_channels), world.VIDEO_FRAMES)
    means = caption_means(vae, ctx.rng(stage, 1), MEAN_CLIPS)
    sched, n = noise_schedule(), ctx.batch(stage)
    alphas = sched.alphas_cumprod
    features = {}  # filled by the hooks on every UNet call: (B*F, C, h, w) each
    hooks = [block.register_forward_hook(lambda m, i, o, key=key: features.__setitem__(key, o[0] if isinstance(o, tuple) else o))
             for key, block in (("mid", unet.mid_block), ("up", unet.up_blocks[1]))]

    def step(i):
        x, captions = video_batch(rng, n)
        z = video_latents(vae, x)  # (n, 4, F, h, w)
        captions = drop_captions(rng, captions)
        cond = clip_encode(tokenizer, text, captions)
        # one UNet pass: the first half of the batch at MEAN_T, the rest at timesteps biased high
        hi = torch.arange(n) < n // 2
        noise, t = torch.randn_like(z), torch.where(hi, torch.randint(*MEAN_T, (n,)), _timesteps(n, HIGH_NOISE_SHARE))
        noisy = sched.add_noise(z, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=cond).sample  # (n, 4, F, h, w)
        diffusion = F.mse_loss(pred, noise)
        pooled = torch.cat([features["mid"].mean((-2, -1)), features["up"].mean((-2, -1))], dim=1)  # (n*F, C)
        frames = z.shape[2]
        index = F.cross_entropy(heads.frame_index(pooled), torch.arange(frames).repeat(n))
        # the caption's mean clip as the clean-clip estimate at high noise, from the same pass
        a = alphas[t[hi]].view(-1, 1, 1, 1, 1)
        x0 = (noisy[hi] - (1 - a).sqrt() * pred[hi]) / a.sqrt()
        mean = F.mse_loss(x0, torch.stack([means[c] for c, h in zip(captions, hi) if h]))
        direction = direction_loss(tokenizer, text, heads, rng, n)
        loss = (diffusion + WEIGHTS["direction"] * direction + WEIGHTS["mean"] * mean
                + WEIGHTS["frame_index"] * index)
        return {"loss": loss, "diffusion": diffusion.detach(), "direction": direction.detach(),
                "mean": mean.detach(), "frame_index": index.detach()}

    # no EMA: the direction appears late in the stage, and an average over its steps would dilute it
    info = train_loop(stage, ctx, None, step, lr=4e-4, param_groups=_param_groups(unet, text, heads),
                      modules={"unet": unet, "text": text, "heads": heads}, rng=rng)
    for h in hooks:
        h.remove()
    text.eval(), unet.eval()  # the pipeline's own modules, trained in place
    pipe.save_pretrained(str(ctx.dir(config.DECODER_STAGE_DIRS["video"])))
    return info
