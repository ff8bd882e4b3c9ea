"""Does a video decoder hear the direction its caption names? The measures behind nano's
`video_motion` stage (docs/nano-history.md, "Direction of motion"):

- how far apart its text encoder puts "a red circle moving left / right / up / down" (cosine
  distance of the conditionings; colour words, for scale);
- its UNet's denoising error on clips of each true direction under captions naming each
  direction, by noise level: a UNet that uses the direction errs least on the diagonal;
- the motion in its first guess: from pure-ish noise (t=950) the UNet's estimate of the clean clip
  is about the mean clip for the caption, so the centroid of that estimate should travel about
  15 px the named way (a shape moving right starts at the left); a UNet deaf to direction gives
  the same small travel whatever the caption names;
- with `--prompted N`, what all that is a proxy for: N clips a direction the decoder makes from
  captions' own conditionings ("a red circle moving left", seen pairs, nano's defaults) and the
  direction their centroid track moves (`measure.direction_of`, as `nextgpt eval nano` judges).

`python -m weights.nano.diagnose_video [MODEL_DIR] [--clips N] [--prompted N]`
"""
from __future__ import annotations

import argparse
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import measure, world
from .decoders import clip_encode, noise_schedule
from .video import video_latents

NOISE_BANDS = ((700, 999), (400, 700), (100, 400))
FIRST_GUESS_T = 950  # noisy enough that the UNet's estimate is about the caption's mean clip


def caption_distances(tok, text, captions: list[str]) -> np.ndarray:
    """(n, n) cosine distances of the conditionings (flattened (77, D))."""
    e = clip_encode(tok, text, captions).flatten(1)
    return (1 - F.cosine_similarity(e[:, None], e[None], dim=-1)).numpy()


def error_by_caption(pipe, clips_per_direction: int = 6, seed: int = 5) -> dict[tuple[int, int], np.ndarray]:
    """{noise band: (4, 4) mean noise-prediction error, rows the true direction, columns the named one}."""
    rng = random.Random(seed)
    dirs = list(world.DIRECTIONS)
    samples = [world.random_video(rng, world.shape_pairs(), directions=(d,)) for d in dirs
               for _ in range(clips_per_direction)]
    x = torch.from_numpy(np.stack([s.frames().astype(np.float32) for s in samples]) / 127.5 - 1)
    z = video_latents(pipe.vae, x.permute(0, 1, 4, 2, 3))  # (n, 4, F, h, w)
    sched, out = noise_schedule(), {}
    for lo, hi in NOISE_BANDS:
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(z.shape, generator=g)
        t = torch.randint(lo, hi, (len(samples),), generator=g)
        zt = sched.add_noise(z, noise, t)
        table = np.zeros((4, 4))
        for j, named in enumerate(dirs):
            caps = [world.article(f"a {s.colour} {s.shape} moving {named}") for s in samples]
            pred = pipe.unet(zt, t, encoder_hidden_states=clip_encode(pipe.tokenizer, pipe.text_encoder, caps)).sample
            err = ((pred - noise) ** 2).mean(dim=(1, 2, 3, 4)).numpy()
            table[:, j] = err.reshape(4, clips_per_direction).mean(1)
        out[(lo, hi)] = table
    return out


def first_guess_travel(pipe, t: int = FIRST_GUESS_T, draws: int = 8) -> dict[str, tuple[float, float]]:
    """{named direction: (dx, dy)}: the centroid travel, first frame to last, of the UNet's estimate
    of the clean clip from noise at step t, averaged over `draws` noises (the same for every caption)."""
    ab = noise_schedule().alphas_cumprod[t]
    unet = pipe.unet.config
    z = torch.randn((draws, unet.in_channels, world.VIDEO_FRAMES, unet.sample_size, unet.sample_size),
                    generator=torch.Generator().manual_seed(0))  # (B, C, F, h, w)
    # centroids weighted by darkness, not measure.centroid_track's thresholded mask: the estimate is
    # a faint smear of every place the shape could be, which no threshold keeps
    ys, xs = torch.meshgrid(torch.arange(float(world.IMAGE_SIZE)), torch.arange(float(world.IMAGE_SIZE)), indexing="ij")
    out = {}
    for named in world.DIRECTIONS:
        cond = clip_encode(pipe.tokenizer, pipe.text_encoder, [f"a red circle moving {named}"] * draws)
        eps = pipe.unet(z, torch.full((draws,), t), encoder_hidden_states=cond).sample
        x0 = (z - (1 - ab).sqrt() * eps) / ab.sqrt()
        frames = pipe.vae.decode(x0.transpose(1, 2).flatten(0, 1) / pipe.vae.config.scaling_factor).sample
        ink = (1 - frames.clamp(-1, 1).mean(1)).clamp(min=0).unflatten(0, (draws, -1))  # (B, F, H, W) darkness
        mass = ink.sum((-1, -2)) + 1e-6
        cx, cy = (ink * xs).sum((-1, -2)) / mass, (ink * ys).sum((-1, -2)) / mass  # (B, F)
        out[named] = (float((cx[:, -1] - cx[:, 0]).mean()), float((cy[:, -1] - cy[:, 0]).mean()))
    return out


def prompted_directions(decoder, clips_per_direction: int) -> dict[str, Counter]:
    """{named direction: Counter of the directions measured} over clips the model's video decoder
    (models.decoders.Decoder, at its defaults) makes from captions' own conditionings, the i-th
    clip of every direction with seed i and the i-th seen pair."""
    pairs, out = world.shape_pairs(), {}
    for named in world.DIRECTIONS:
        out[named] = Counter()
        for i in range(clips_per_direction):
            colour, shape = pairs[i % len(pairs)]
            cond = clip_encode(decoder.pipe.tokenizer, decoder.pipe.text_encoder,
                               [world.article(f"a {colour} {shape} moving {named}")])
            frames, = decoder(cond, decoder.defaults, seeds=[i])
            out[named][measure.direction_of(frames)] += 1
    return out


@torch.no_grad()
def diagnose(model_dir: Path, clips_per_direction: int = 6, prompted: int = 0) -> dict:
    from models.decoders import Decoder, VideoParams

    from .config import nano_config

    config = nano_config()
    decoder = Decoder.from_pretrained("video", Path(model_dir) / config.components.video,
                                      VideoParams(**config.decoder_defaults["video"]))
    pipe = decoder.pipe
    pipe.unet.eval(), pipe.text_encoder.eval()
    directions = caption_distances(pipe.tokenizer, pipe.text_encoder,
                                   [f"a red circle moving {d}" for d in world.DIRECTIONS])
    colours = caption_distances(pipe.tokenizer, pipe.text_encoder,
                                [world.article(f"a {c} circle moving right") for c in ("red", "blue")])
    errors = error_by_caption(pipe, clips_per_direction)
    travel = first_guess_travel(pipe)
    # how much lower the error is under the true direction than under the others (0: ignored)
    gain = {band: float(np.mean([(t.sum(1)[i] - t[i, i]) / 3 - t[i, i] for i in range(4)]) / t.mean())
            for band, t in errors.items()}
    return {"direction_caption_distance": float(directions[np.triu_indices(4, 1)].mean()),
            "colour_caption_distance": float(colours[0, 1]), "errors": errors, "true_caption_gain": gain,
            "first_guess_travel": travel, "prompted": prompted_directions(decoder, prompted) if prompted else {}}


def main(argv: list[str] | None = None) -> int:
    from ..presets import preset_dir

    p = argparse.ArgumentParser(prog="python -m weights.nano.diagnose_video", description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", nargs="?", type=Path, default=preset_dir("nano"))
    p.add_argument("--clips", type=int, default=6, help="clips per direction")
    p.add_argument("--prompted", type=int, default=0, metavar="N",
                   help="also sample N clips a direction from the decoder prompted directly (about 2 s each)")
    args = p.parse_args(argv)
    res = diagnose(args.model_dir, args.clips, args.prompted)
    print(f"cosine distance of the conditionings: directions {res['direction_caption_distance']:.5f} (mean), "
          f"red vs blue {res['colour_caption_distance']:.5f}")
    for (lo, hi), table in res["errors"].items():
        print(f"noise t {lo}-{hi}: error x1000, rows the clip's direction, columns the caption's "
              f"(true-caption gain {100 * res['true_caption_gain'][(lo, hi)]:+.2f}%)")
        print((table * 1000).round(2))
    print(f"first guess from noise (t={FIRST_GUESS_T}): centroid travel (dx, dy) in px under each named direction")
    for named, (dx, dy) in res["first_guess_travel"].items():
        print(f"  {named:>5}: {dx:+.1f} {dy:+.1f}")
    if res["prompted"]:
        print("prompted directly: clips moving the named way (what the others moved)")
    for named, got in res["prompted"].items():
        wrong = ", ".join(f"{k or 'still'} {n}" for k, n in got.items() if k != named)
        print(f"  {named:>5}: {got[named]}/{sum(got.values())}" + (f" ({wrong})" if wrong else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
