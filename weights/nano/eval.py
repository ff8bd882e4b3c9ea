"""`nextgpt eval nano`: what the nano model understands and makes, measured through the library's
own `NextGPT` (the path the server serves), on combinations no training stage saw.

- answers about input images, sounds and videos (the right colour/shape/pitch/timbre/direction
  words, and no wrong ones);
- generated images: dominant colour and shape (fill ratio of the foreground's bounding box);
- generated audio: pitch class of the spectral peak;
- generated video: direction of the foreground centroid's track;
- signal tokens: how often a "show / play / animate" request made the model emit its modality's
  run of signal tokens by itself.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import dialogue, measure, world

ROWS = [
    ("answer_image", "answers about input images (colour, shape)"),
    ("answer_audio", "answers about input sounds (pitch, timbre)"),
    ("answer_video", "answers about input videos (colour, shape, direction)"),
    ("image_colour", "generated images: colour"),
    ("image_shape", "generated images: shape"),
    ("audio_pitch", "generated audio: pitch (spectral peak)"),
    ("video_direction", "generated video: direction (centroid track)"),
    ("signal_tokens", "signal tokens emitted when asked for media"),
]
TARGET = 0.9


@dataclass
class Tally:
    ok: dict[str, int] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)
    failures: dict[str, list] = field(default_factory=dict)

    def add(self, row: str, good: bool, detail=None) -> None:
        self.n[row] = self.n.get(row, 0) + 1
        self.ok[row] = self.ok.get(row, 0) + int(bool(good))
        if not good and detail is not None:
            self.failures.setdefault(row, []).append(detail)

    def rate(self, row: str) -> float | None:
        return self.ok[row] / self.n[row] if self.n.get(row) else None


def _only(found: set[str], want: str, vocabulary) -> bool:
    return want in found and not (found & (set(vocabulary) - {want}))


def judge_answer(text: str, expect: dict[str, str]) -> bool:
    """Every expected attribute named, no other value of that attribute named."""
    found = measure.words(text)
    vocab = {"colour": world.COLOURS, "shape": world.SHAPES, "pitch": world.PITCHES, "timbre": world.TIMBRES,
             "direction": world.DIRECTIONS}
    return all(_only(found, v, vocab[k]) for k, v in expect.items())


def combos(split: str, rng: random.Random, k: int = 3):
    """(shape pairs, tone pairs) of a split: the held-out ones, or k seen ones."""
    if split == "held-out":
        return sorted(world.HELD_OUT_SHAPES), sorted(world.HELD_OUT_TONES)
    return rng.sample(world.shape_pairs(), k), rng.sample(world.tone_pairs(), k)


def evaluate(model, split: str = "held-out", seed: int = 0, repeats: int = 2, progress=None) -> Tally:
    from models.generate import SamplingParams
    from models.media import VideoClip
    from models.types import MediaItem, Message

    rng = random.Random(f"eval:{seed}:{split}")
    pairs, tones = combos(split, rng)
    tally = Tally()
    say = progress or (lambda s: None)
    sampling = lambda k: SamplingParams(max_new_tokens=48, seed=seed + k)  # noqa: E731

    def ask(media: MediaItem, question: str) -> str:
        return model.language([Message("user", question, [media])], sampling=sampling(0)).text

    # answers about input media
    for colour, shape in pairs:
        for r in range(repeats):
            s = world.random_shape(rng, [(colour, shape)])
            item = MediaItem("image", s.image(rng.choice((32, 64, 96))))
            for q, expect in ((rng.choice(dialogue.DESCRIBE_IMAGE), {"colour": colour, "shape": shape}),
                              (rng.choice(dialogue.ASK_COLOUR), {"colour": colour}),
                              (rng.choice(dialogue.ASK_SHAPE), {"shape": shape})):
                text = ask(item, q)
                tally.add("answer_image", judge_answer(text, expect), (s.caption, q, text))
        say(f"answers about images of {colour} {shape}s")
    for pitch, timbre in tones:
        for r in range(repeats):
            t = world.random_tone(rng, [(pitch, timbre)], seconds=rng.choice((world.AUDIO_SECONDS, 2.0)))
            item = MediaItem("audio", t.wave())
            for q, expect in ((rng.choice(dialogue.DESCRIBE_AUDIO), {"pitch": pitch, "timbre": timbre}),
                              (rng.choice(dialogue.ASK_PITCH), {"pitch": pitch})):
                text = ask(item, q)
                tally.add("answer_audio", judge_answer(text, expect), (t.caption, q, text))
        say(f"answers about {pitch} {timbre} tones")
    for colour, shape in pairs:
        for direction in world.DIRECTIONS:
            v = world.random_video(rng, [(colour, shape)], directions=(direction,))
            item = MediaItem("video", VideoClip(v.frames(size=64), float(world.VIDEO_FPS)))
            for q, expect in ((rng.choice(dialogue.DESCRIBE_VIDEO), {"colour": colour, "shape": shape, "direction": direction}),
                              (rng.choice(dialogue.ASK_DIRECTION), {"direction": direction})):
                text = ask(item, q)
                tally.add("answer_video", judge_answer(text, expect), (v.caption, q, text))
        say(f"answers about videos of {colour} {shape}s")

    # generation, the model deciding by itself to emit signal tokens
    def make(prompt: str, modality: str, k: int):
        result = model.chat([Message("user", prompt)], sampling=sampling(k))
        emitted = getattr(result, modality) is not None
        tally.add("signal_tokens", emitted, (prompt, result.text, result.skipped))
        return result, emitted

    k = 0
    for colour, shape in pairs:
        for r in range(repeats):
            prompt = world.article(rng.choice(dialogue.DRAW).format(colour=colour, shape=shape))
            result, emitted = make(prompt, "image", k := k + 1)
            img = result.image
            got_c = measure.dominant_colour(img) if emitted else None
            got_s = measure.shape_of(img) if emitted else None
            tally.add("image_colour", got_c == colour, (prompt, got_c))
            tally.add("image_shape", got_s == shape, (prompt, got_s, measure.fill_ratio(img) if emitted else None))
        say(f"drew {colour} {shape}s")
    requests = [(p, t) for p, t in tones] + [(p, None) for p in world.PITCHES]
    for pitch, timbre in requests:
        for r in range(repeats):
            desc = f"{pitch} {timbre}" if timbre else pitch
            prompt = rng.choice(dialogue.PLAY).format(desc=desc)
            result, emitted = make(prompt, "audio", k := k + 1)
            got = measure.pitch_class(result.audio) if emitted else None
            peak = measure.spectral_peak(result.audio) if emitted else None
            tally.add("audio_pitch", got == pitch, (prompt, got, peak))
        say(f"played {desc} tones")
    for colour, shape in pairs:
        for direction in world.DIRECTIONS:
            prompt = world.article(rng.choice(dialogue.ANIMATE).format(colour=colour, shape=shape, direction=direction))
            result, emitted = make(prompt, "video", k := k + 1)
            got = measure.direction_of(result.video.frames) if emitted else None
            tally.add("video_direction", got == direction, (prompt, got))
        say(f"animated {colour} {shape}s")
    return tally


def table(results: dict[str, Tally]) -> str:
    splits = list(results)
    head = "| measure | " + " | ".join(splits) + " |"
    lines = [head, "|---|" + "---|" * len(splits)]
    for row, title in ROWS:
        cells = []
        for s in splits:
            r = results[s].rate(row)
            cells.append("-" if r is None else f"{100 * r:.0f}% ({results[s].ok[row]}/{results[s].n[row]})")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw_grid(model, path: Path, seed: int = 0) -> Path:
    """What nano draws: every colour x shape (held-out pairs framed), then animations, 4x upscaled."""
    from PIL import Image, ImageDraw

    from models.generate import SamplingParams
    from models.types import Message

    cell, pad = 32, 4
    cols, shapes = list(world.COLOURS), list(world.SHAPES)
    width = len(cols) * (cell + pad) + pad
    video_rows = [("red", "circle", "right"), ("blue", "square", "up"), ("green", "triangle", "left"), ("orange", "square", "down")]
    height = (len(shapes) + len(video_rows)) * (cell + pad) + pad
    grid = Image.new("RGB", (max(width, 8 * (cell + pad) + pad), height), (200, 200, 200))
    draw = ImageDraw.Draw(grid)
    k = 0
    for r, shape in enumerate(shapes):
        for c, colour in enumerate(cols):
            k += 1
            prompt = world.article(f"Show me a {colour} {shape}.")
            out = model.chat([Message("user", prompt)], required=["image"], sampling=SamplingParams(seed=seed + k))
            x, y = pad + c * (cell + pad), pad + r * (cell + pad)
            grid.paste(out.image.convert("RGB").resize((cell, cell)), (x, y))
            if (colour, shape) in world.HELD_OUT_SHAPES:
                draw.rectangle([x - 2, y - 2, x + cell + 1, y + cell + 1], outline=(0, 0, 0), width=2)
    for r, (colour, shape, direction) in enumerate(video_rows):
        k += 1
        prompt = world.article(f"Animate a {colour} {shape} moving {direction}.")
        out = model.chat([Message("user", prompt)], required=["video"], sampling=SamplingParams(seed=seed + k))
        y = pad + (len(shapes) + r) * (cell + pad)
        for f, frame in enumerate(out.video.frames[:8]):
            grid.paste(Image.fromarray(frame).resize((cell, cell)), (pad + f * (cell + pad), y))
    grid = grid.resize((grid.width * 4, grid.height * 4), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def run(weights: str | Path | None = None, splits=("held-out", "seen"), seed: int = 0, repeats: int = 2,
        threads: int = 2, json_path: Path | None = None, grid: Path | None = None, out=sys.stdout,
        device: str = "cpu") -> dict[str, Tally]:
    import torch

    from models.nextgpt import NextGPT

    from .train import DEFAULT_OUT

    torch.set_num_threads(threads)
    path = Path(weights) if weights else DEFAULT_OUT
    if not (path / "nextgpt.json").is_file():
        raise SystemExit(f"no nano model at {path}: train it with `nextgpt weights train-nano`")
    model = NextGPT.from_pretrained(path, devices=device)  # on "cuda" in fp16, as a GPU server runs it
    t0 = time.time()
    results = {}
    for split in splits:
        results[split] = evaluate(model, split, seed, repeats, progress=lambda s: print(f"  [{split}] {s}", file=sys.stderr))
    print(table(results), file=out)
    where = f"{torch.get_num_threads()} threads" if device == "cpu" else device
    print(f"\n({time.time() - t0:.0f} s on {where}; target {TARGET:.0%} on held-out)", file=out)
    if json_path:
        json_path.write_text(json.dumps({s: {"ok": t.ok, "n": t.n, "failures": t.failures} for s, t in results.items()},
                                        indent=1, default=str))
    if grid:
        draw_grid(model, Path(grid), seed)
        print(f"grid written to {grid}", file=out)
    return results


def register(subparsers) -> None:
    """Add the `eval` command group with its `nano` target: `nextgpt eval nano ...`. Where an
    `eval` group exists already, call `add_nano(its subparsers)` instead."""
    group = subparsers.add_parser("eval", help="measure a model")
    add_nano(group.add_subparsers(dest="eval_target", required=True))


def add_nano(subparsers) -> None:
    p = subparsers.add_parser("nano", help="what the nano model understands and makes, on held-out combinations")
    p.add_argument("--weights", default=None, help="a nano model directory (default: the trained preset)")
    p.add_argument("--split", action="append", choices=["held-out", "seen"], default=None,
                   help="combinations to test (repeatable; default both)")
    p.add_argument("--repeats", type=int, default=2, help="samples per combination")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="where every stage runs: cpu (fp32) or cuda (fp16)")
    p.add_argument("--json", type=Path, default=None, help="also write counts and failures here")
    p.add_argument("--grid", type=Path, default=None, help="also draw a PNG grid of what the model makes")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    results = run(args.weights, tuple(args.split or ("held-out", "seen")), args.seed, args.repeats, args.threads,
                  args.json, args.grid, device=args.device)
    held = results.get("held-out")
    return 0 if held is None or all((held.rate(r) or 0) >= TARGET for r, _ in ROWS if held.n.get(r)) else 1
