"""Does a video decoder hear the direction its caption names? Two measures, for the next attempt
at nano's motion (weights/nano/README.md, "Direction of motion, out"):

- how far apart its text encoder puts "a red circle moving left / right / up / down" (cosine
  distance of the conditionings; colour words, for scale);
- its UNet's denoising error on clips of each true direction under captions naming each
  direction, by noise level: a UNet that uses the direction errs least on the diagonal.

`python -m weights.nano.diagnose_video [MODEL_DIR] [--clips N]`
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import world
from .decoders import clip_encode, noise_schedule
from .video import video_latents

NOISE_BANDS = ((700, 999), (400, 700), (100, 400))


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


@torch.no_grad()
def diagnose(model_dir: Path, clips_per_direction: int = 6) -> dict:
    from diffusers import TextToVideoSDPipeline

    pipe = TextToVideoSDPipeline.from_pretrained(str(Path(model_dir) / "video_decoder"), dtype=torch.float32)
    pipe.unet.eval(), pipe.text_encoder.eval()
    directions = caption_distances(pipe.tokenizer, pipe.text_encoder,
                                   [f"a red circle moving {d}" for d in world.DIRECTIONS])
    colours = caption_distances(pipe.tokenizer, pipe.text_encoder,
                                [world.article(f"a {c} circle moving right") for c in ("red", "blue")])
    errors = error_by_caption(pipe, clips_per_direction)
    # how much lower the error is under the true direction than under the others (0: ignored)
    gain = {band: float(np.mean([(t.sum(1)[i] - t[i, i]) / 3 - t[i, i] for i in range(4)]) / t.mean())
            for band, t in errors.items()}
    return {"direction_caption_distance": float(directions[np.triu_indices(4, 1)].mean()),
            "colour_caption_distance": float(colours[0, 1]), "errors": errors, "true_caption_gain": gain}


def main(argv: list[str] | None = None) -> int:
    from ..presets import preset_dir

    p = argparse.ArgumentParser(prog="python -m weights.nano.diagnose_video", description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", nargs="?", type=Path, default=preset_dir("nano"))
    p.add_argument("--clips", type=int, default=6, help="clips per direction")
    args = p.parse_args(argv)
    res = diagnose(args.model_dir, args.clips)
    print(f"cosine distance of the conditionings: directions {res['direction_caption_distance']:.5f} (mean), "
          f"red vs blue {res['colour_caption_distance']:.5f}")
    for (lo, hi), table in res["errors"].items():
        print(f"noise t {lo}-{hi}: error x1000, rows the clip's direction, columns the caption's "
              f"(true-caption gain {100 * res['true_caption_gain'][(lo, hi)]:+.2f}%)")
        print((table * 1000).round(2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
