"""`nextgpt chat`: one turn from the command line, media written as PNG, WAV and MP4."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .codecs import encode_output

MEDIA_FLAGS = {"image": "--image", "audio": "--audio", "video": "--video"}


def register(subparsers) -> None:
    p = subparsers.add_parser("chat", help="ask the model once; print the answer, write media to --out")
    p.add_argument("prompt", help="the user's message")
    for modality, flag in MEDIA_FLAGS.items():
        p.add_argument(flag, action="append", default=[], metavar="FILE", help=f"attach a {modality} file (repeatable)")
    p.add_argument("--want", default="", help="outputs to produce whatever the model decides: image,audio,video")
    p.add_argument("--weights", default=None, help="a preset name or a model directory (default: the default preset)")
    p.add_argument("--out", default=".", type=Path, help="folder for generated media (default: current)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=246)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... for every stage")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from models.decoders import ParameterError
    from models.generate import SamplingParams
    from models.media import MediaError
    from models.nextgpt import NextGPT
    from models.types import MediaItem, Message
    from weights.presets import DEFAULT_PRESET, resolve

    want = [w.strip() for w in args.want.split(",") if w.strip()]
    try:
        media = [MediaItem.from_bytes(Path(f).read_bytes(), modality)
                 for modality, flag in MEDIA_FLAGS.items() for f in getattr(args, modality)]
        model = NextGPT.from_pretrained(resolve(args.weights or DEFAULT_PRESET), devices=args.device)
        model.merge_lora()  # as the server serves it: the same answers, fewer matmuls a token
        result = model.chat([Message("user", args.prompt, media)], required=want,
                            sampling=SamplingParams(max_new_tokens=args.max_tokens, seed=args.seed),
                            on_text=lambda t: print(t, end="", flush=True))
    except (OSError, MediaError, ParameterError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    args.out.mkdir(parents=True, exist_ok=True)
    for modality, value in result.media.items():
        encoded = encode_output(modality, value)
        path = args.out / f"nextgpt-{modality}.{encoded.extension}"
        path.write_bytes(encoded.data)
        print(f"wrote {path}")
    for modality, reason in result.skipped.items():
        print(f"skipped {modality}: {reason}", file=sys.stderr)
    return 0
