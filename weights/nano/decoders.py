"""Decoder stages: Stable Diffusion, AudioLDM and Zeroscope at nano size, trained on the world.

The text encoders are trained with their UNets (the conditioning they produce is what the
output projections later learn to imitate); captions are dropped 10% of the time so that
classifier-free guidance works. The audio decoder's CLAP text encoder is also held to a fixed
attribute code (`code_target`), so that the conditioning of a caption is the sum of its pitch's
and its timbre's. Every pipeline is a stock diffusers class saved with `save_pretrained`, so
`Decoder.from_pretrained` loads it as it loads the released decoders.
"""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (AudioLDMPipeline, AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler,
                       StableDiffusionPipeline, UNet2DConditionModel)
from transformers import AutoTokenizer, SpeechT5HifiGan, SpeechT5HifiGanConfig

from .. import tiny_decoders
from ..tokenizers_local import clip_tokenizer, llama_tokenizer, roberta_tokenizer
from . import audio, config, contrastive, dialogue, world
from .common import EMA, Context, train_loop

BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")  # Stable Diffusion's
CAPTION_DROP = 0.1
# `image_unet`'s loss weights: Min-SNR-gamma (Hang et al., 2023), each timestep's MSE times
# min(SNR, 5)/SNR, so that the nearly clean timesteps stop outweighing the ones where the shape is
# decided; squares drawn from their own captions 45/48 and 43/48 against 40/48 and 42/48 (session 24)
IMAGE_SNR_GAMMA = 5.0
# The share of the audio decoders' tones at pitches no caption names (world.UNNAMED_PITCHES),
# captioned by their band's register word and timbre (world.REGISTERS): the UNet then plays every
# timbre at every register, and learns "buzzy" and "beeping" apart from the pitches they come
# with in the named bands, which held-out pitch/timbre pairs ask for.
UNNAMED_TONES = 0.25


def noise_schedule() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, **BETAS)


def sampler() -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(num_train_timesteps=1000, **BETAS)


# ----------------------------------------------------------------------------------- tokenizers

def stage_tokenizers(ctx: Context) -> dict:
    out = ctx.dir("tokenizers")
    corpus = dialogue.corpus(seed=ctx.seed)
    llama_tokenizer(corpus, out / "llama", vocab_size=config.LLAMA_VOCAB)
    clip_tokenizer(out / "clip", num_merges=config.CLIP_MERGES)
    roberta_tokenizer(corpus, out / "clap", vocab_size=config.CLAP_VOCAB)
    return {}


def load_tokenizer(ctx: Context, name: str):
    return AutoTokenizer.from_pretrained(str(ctx.work / "tokenizers" / name))


# ----------------------------------------------------------------------------------- data

def image_batch(rng: random.Random, n: int, pairs=None) -> tuple[torch.Tensor, list[str]]:
    """(n, 3, 32, 32) in [-1, 1] and their captions."""
    samples = [world.random_shape(rng, pairs or world.shape_pairs()) for _ in range(n)]
    x = np.stack([np.asarray(s.image(), dtype=np.float32) for s in samples]) / 127.5 - 1
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), [s.caption for s in samples]


def tone_batch(rng: random.Random, n: int, drop_timbre: float = 0.0,
               unnamed: float = UNNAMED_TONES) -> tuple[torch.Tensor, list[str], list[world.ToneSample]]:
    """(n, samples) waves of training tones, their captions and the tones themselves; a share
    `unnamed` of them at pitches no caption names, captioned by their timbre alone."""
    samples = [world.training_tone(rng, unnamed, drop_timbre=drop_timbre) for _ in range(n)]
    return torch.from_numpy(np.stack([s.wave() for s in samples])), [s.caption for s in samples], samples


def drop_captions(rng: random.Random, captions: list[str]) -> list[str]:
    return ["" if rng.random() < CAPTION_DROP else c for c in captions]


def clip_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    """The token ids StableDiffusionPipeline.encode_prompt feeds its text encoder: (B, 77)."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def clip_encode(tokenizer, text_encoder, captions: list[str]) -> torch.Tensor:
    """What StableDiffusionPipeline.encode_prompt computes: (B, 77, D), on the encoder's device."""
    return text_encoder(clip_ids(tokenizer, captions).to(text_encoder.device))[0]


def clap_encode(tokenizer, text_encoder, captions: list[str]) -> torch.Tensor:
    """What AudioLDMPipeline._encode_prompt computes: (B, D), L2-normalised."""
    t = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                  return_tensors="pt").to(text_encoder.device)
    emb = text_encoder(t.input_ids, attention_mask=t.attention_mask).text_embeds
    return F.normalize(emb, dim=-1)


def caption_conditioning(modality: str, pipe, captions: list[str]) -> torch.Tensor:
    """What a decoder pipeline conditions on for `captions`: its CLIP states (B, 77, D) for the
    image and video decoders, its CLAP embedding (B, D) for the audio decoder."""
    encode = clap_encode if modality == "audio" else clip_encode
    return encode(pipe.tokenizer, pipe.text_encoder, captions)


# ----------------------------------------------------------------------------------- VAEs

def _train_vae(ctx: Context, stage: str, vae: AutoencoderKL, batch_fn) -> dict:
    ctx.seed_torch(stage)
    rng = ctx.rng(stage)
    vae.train()

    def step(i):
        x = batch_fn(rng)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        mse = F.mse_loss(rec, x)
        kl = post.kl().mean() / x[0].numel()
        return {"loss": mse + 0.5 * F.l1_loss(rec, x) + 1e-3 * kl, "mse": mse}

    info = train_loop(stage, ctx, vae.parameters(), step, lr=1e-3, modules={"vae": vae}, rng=rng)
    vae.eval()
    with torch.no_grad():  # scale latents to unit variance, as Stable Diffusion's 0.18215 does
        z = torch.cat([vae.encode(batch_fn(rng)).latent_dist.mean for _ in range(8)])
        x = batch_fn(rng)
        mse = F.mse_loss(vae.decode(vae.encode(x).latent_dist.mean).sample, x).item()
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    vae.save_pretrained(str(ctx.dir(stage)))
    return {**info, "scaling_factor": float(1.0 / z.std()), "eval_mse": mse}


def stage_image_vae(ctx: Context) -> dict:
    n = ctx.batch("image_vae")
    torch.manual_seed(ctx.seed)
    return _train_vae(ctx, "image_vae", tiny_decoders.vae(3, config.VAE_BLOCKS),
                      lambda rng: image_batch(rng, n)[0])


def stage_audio_vae(ctx: Context) -> dict:
    n = ctx.batch("audio_vae")
    torch.manual_seed(ctx.seed)
    return _train_vae(ctx, "audio_vae", tiny_decoders.vae(1, config.AUDIO_VAE_BLOCKS),
                      lambda rng: audio.log_mel(tone_batch(rng, n)[0]).unsqueeze(1))


# ----------------------------------------------------------------------------------- image

def image_unet() -> UNet2DConditionModel:
    ch = config.UNET_CHANNELS
    return UNet2DConditionModel(
        block_out_channels=ch, layers_per_block=1, sample_size=world.IMAGE_SIZE // 2, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(ch) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(ch) - 1) + ("UpBlock2D",),
        cross_attention_dim=config.CONDITION_DIM, attention_head_dim=8, norm_num_groups=16,
        use_linear_projection=True)  # as UNet3D's attention: the video UNet starts from these weights


def diffusion_loss(unet, latents: torch.Tensor, sched: DDPMScheduler, snr_gamma: float | None = None,
                   **cond) -> torch.Tensor:
    """The noise-prediction MSE at uniform timesteps; with `snr_gamma`, Min-SNR-gamma weighted."""
    noise = torch.randn_like(latents)
    t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],))
    pred = unet(sched.add_noise(latents, noise, t), t, **cond).sample
    if snr_gamma is None:
        return F.mse_loss(pred, noise)
    a = sched.alphas_cumprod[t]
    snr = a / (1 - a)  # (B,)
    weight = snr.clamp(max=snr_gamma) / snr  # (B,) Min-SNR-gamma, for a UNet predicting the noise
    return (weight * (pred - noise).pow(2).flatten(1).mean(1)).mean()  # per-example MSE (B,), weighted


def _prepare(ctx: Context, stage: str, vae_stage: str, build_text, build_unet):
    """A UNet stage's pieces: its data stream, the trained VAE (frozen), a new text encoder and
    UNet (built in this order from the stage's seed), the noise schedule and the two EMAs."""
    ctx.seed_torch(stage)
    rng = ctx.rng(stage)
    vae = AutoencoderKL.from_pretrained(str(ctx.work / vae_stage)).eval().requires_grad_(False)
    text = build_text().train()
    unet = build_unet().train()
    return rng, vae, text, unet, noise_schedule(), [EMA(unet), EMA(text)]


def stage_image_unet(ctx: Context) -> dict:
    stage = "image_unet"
    tokenizer = load_tokenizer(ctx, "clip")
    rng, vae, text, unet, sched, emas = _prepare(
        ctx, stage, "image_vae",
        lambda: tiny_decoders.clip_text(len(tokenizer), config.CONDITION_DIM, **config.CLIP_TEXT), image_unet)
    n, sf = ctx.batch(stage), vae.config.scaling_factor

    def step(i):
        x, captions = image_batch(rng, n)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample() * sf
        cond = clip_encode(tokenizer, text, drop_captions(rng, captions))
        return {"loss": diffusion_loss(unet, z, sched, snr_gamma=IMAGE_SNR_GAMMA, encoder_hidden_states=cond)}

    info = train_loop(stage, ctx, list(unet.parameters()) + list(text.parameters()), step, lr=5e-4, ema=emas,
                      modules={"unet": unet, "text": text}, rng=rng)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=emas[1].copy_to().eval(), tokenizer=tokenizer, unet=emas[0].copy_to().eval(),
        scheduler=sampler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(ctx.dir(config.DECODER_STAGE_DIRS["image"])))
    return info


# ----------------------------------------------------------------------------------- audio

def vocoder_model() -> SpeechT5HifiGan:
    return SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=config.N_MELS, sampling_rate=world.SAMPLE_RATE, normalize_before=False, **config.VOCODER))


def stage_vocoder(ctx: Context) -> dict:
    stage = "vocoder"
    ctx.seed_torch(stage)
    rng = ctx.rng(stage)
    voc = vocoder_model().train()
    n, frames = ctx.batch(stage), 32

    def step(i):
        waves, _, _ = tone_batch(rng, n)
        mels = audio.log_mel(waves)  # (n, 64, mels)
        starts = [rng.randrange(0, mels.shape[1] - frames + 1) for _ in range(n)]
        m = torch.stack([mels[k, s:s + frames] for k, s in enumerate(starts)])
        w = torch.stack([waves[k, s * config.HOP:(s + frames) * config.HOP] for k, s in enumerate(starts)])
        m = m + 0.05 * torch.randn_like(m)  # decoded mels are never exact
        return {"loss": audio.vocoder_loss(voc(m), w)}

    info = train_loop(stage, ctx, voc.parameters(), step, lr=3e-3, betas=(0.8, 0.99), modules={"vocoder": voc}, rng=rng)
    voc.eval().save_pretrained(str(ctx.dir(stage)))
    with torch.no_grad():  # how well it plays whole tones: pitch class of the spectral peak, loudness
        rng = ctx.rng(stage, 1)
        tones = [world.random_tone(rng, world.tone_pairs()) for _ in range(24)]
        waves = torch.from_numpy(np.stack([t.wave() for t in tones]))
        out = voc(audio.log_mel(waves)).numpy()
        ok = sum(world.pitch_of(audio.spectral_peak(o)) == t.pitch for o, t in zip(out, tones))
        loudness = np.mean([audio.rms(o) / audio.rms(w) for o, w in zip(out, waves.numpy())])
    return {**info, "pitch_match": ok / len(tones), "rms_ratio": float(loudness)}


def audio_unet() -> UNet2DConditionModel:
    ch = config.AUDIO_UNET_CHANNELS
    return UNet2DConditionModel(
        block_out_channels=ch, layers_per_block=1, sample_size=(32, config.N_MELS // 2), in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D",) + ("AttnDownBlock2D",) * (len(ch) - 1),
        up_block_types=("AttnUpBlock2D",) * (len(ch) - 1) + ("UpBlock2D",),
        mid_block_type="UNetMidBlock2D", attention_head_dim=8, norm_num_groups=16,
        class_embed_type="simple_projection", projection_class_embeddings_input_dim=config.CONDITION_DIM,
        class_embeddings_concat=True)


# A fixed direction per attribute, the same in every run: a design choice of the conditioning
# space, not a trained value, so it does not follow the training seed.
ATTRIBUTE_CODE_SEED = 1234


def attribute_code(dim: int = config.CONDITION_DIM) -> dict[str, torch.Tensor]:
    """One orthonormal (dim,) direction per pitch, timbre and register name. The registers' are
    drawn after the others and made orthogonal to them, which keeps the pitches' and timbres' as
    they were before registers were named."""
    g = torch.Generator().manual_seed(ATTRIBUTE_CODE_SEED)
    names = [*world.PITCHES, *world.TIMBRES]
    basis, _ = torch.linalg.qr(torch.randn(dim, len(names), generator=g))  # (dim, 6)
    extra = torch.randn(dim, len(world.REGISTERS), generator=g)
    extra, _ = torch.linalg.qr(extra - basis @ (basis.T @ extra))
    return {name: column for name, column in zip([*names, *world.REGISTERS], torch.cat([basis, extra], 1).T)}


ATTRIBUTE_CODE = attribute_code()


# A pitch's (or register's) direction in the code weighs three times a timbre's: the audio UNet
# then plays every caption's pitch from its code, held-out pairs included, and a held-out tone's
# pitch, which the eval measures, decides most of where its conditioning lies (decoder ceilings,
# held-out pairs played at their pitch from their code: equal weights 7 of 8, session 21; twice,
# 55 of 64 on a fresh chain; three times, 63 of 64 with seen pairs' timbres played as at twice,
# session 31). The committed model's audio decoder predates the last change: it was trained at
# twice (59 of 64).
PITCH_CODE_WEIGHT = 3.0


def code_target(attributes) -> torch.Tensor:
    """Where the CLAP text encoder puts a caption naming `attributes`: the normalised sum of their
    directions (D,), a pitch's weighted PITCH_CODE_WEIGHT. "a low beeping tone" sits between every
    low and every beeping caption (nearer low), as a caption naming two attributes should, whether
    or not it was ever trained on."""
    return F.normalize(sum(_code_weight(a) * ATTRIBUTE_CODE[a] for a in sorted(attributes)), dim=-1)


def _code_weight(name: str) -> float:
    """A pitch's (or register's) direction weighs PITCH_CODE_WEIGHT against a timbre's 1."""
    return PITCH_CODE_WEIGHT if name in world.PITCHES or name in world.REGISTERS else 1.0


def audio_unet_losses(tokenizer, vae, text, unet, sched: DDPMScheduler, rng: random.Random, n: int) -> dict:
    """One `audio_unet` batch's loss terms (with their graphs): the diffusion loss on world captions
    (30% naming the pitch alone, 10% dropped for guidance); `code`, the CLAP text embedding's
    squared distance to `code_target` of its caption's attributes, on captions naming pitch and
    timbre, or one of them; `empty_apart`, keeping "" (the unconditional caption of guidance)
    off the named captions (lower: further apart).

    The UNet's loss alone collapses the pooled CLAP embedding (every caption at cosine 0.999).
    A term that spread every caption apart kept them distinct but gave each its own code, so a
    held-out caption's conditioning was no composition of its attributes' and the output
    projection could not land it; contrasting the text with the audio as CLAP does composed
    hardly better (docs/nano-history.md, "Held-out pitches asked for"). With the code, the
    conditioning of every caption is its attributes' sum by construction."""
    waves, captions, samples = tone_batch(rng, n, drop_timbre=0.3)
    with torch.no_grad():  # the VAE is frozen: z carries no graph
        z = vae.encode(audio.log_mel(waves).unsqueeze(1)).latent_dist.sample() * vae.config.scaling_factor
    cond = clap_encode(tokenizer, text, drop_captions(rng, captions))
    diffusion = diffusion_loss(unet, z, sched, encoder_hidden_states=None, class_labels=cond)
    caps = contrastive.distinct_captions([contrastive.tone_captions(t, rng, registers=True) for t in samples])
    named = clap_encode(tokenizer, text, [caption for caption, _ in caps])  # (U, D)
    targets = torch.stack([code_target(attributes) for _, attributes in caps])  # (U, D)
    code = (named - targets).pow(2).sum(-1).mean()
    empty = clap_encode(tokenizer, text, [""])
    empty_apart = (empty - named).pow(2).sum(-1).mul(-2).exp().mean().log()
    return {"loss": diffusion + code + 0.1 * empty_apart, "diffusion": diffusion, "code": code,
            "empty_apart": empty_apart}


def stage_audio_unet(ctx: Context) -> dict:
    stage = "audio_unet"
    tokenizer = load_tokenizer(ctx, "clap")
    rng, vae, text, unet, sched, emas = _prepare(
        ctx, stage, "audio_vae",
        lambda: tiny_decoders.clap_text(len(tokenizer), config.CONDITION_DIM, **config.CLAP_TEXT), audio_unet)
    n = ctx.batch(stage)

    def step(i):
        out = audio_unet_losses(tokenizer, vae, text, unet, sched, rng, n)
        return {k: v if k == "loss" else v.detach() for k, v in out.items()}

    info = train_loop(stage, ctx, [*unet.parameters(), *text.parameters()], step, lr=5e-4, ema=emas,
                      modules={"unet": unet, "text": text}, rng=rng)
    vocoder = SpeechT5HifiGan.from_pretrained(str(ctx.work / "vocoder")).eval()
    pipe = AudioLDMPipeline(vae=vae, text_encoder=emas[1].copy_to().eval(), tokenizer=tokenizer,
                            unet=emas[0].copy_to().eval(), scheduler=sampler(), vocoder=vocoder)
    pipe.save_pretrained(str(ctx.dir(config.DECODER_STAGE_DIRS["audio"])))
    return info
