"""`nextgpt weights train-nano`: train the nano preset (resumable, per stage)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .train import DEFAULT_JOBS, DEFAULT_OUT, DEFAULT_WORK, ORDER


def register(subparsers) -> None:
    """Add `train-nano` to the `weights` command group's subparsers."""
    p = subparsers.add_parser(
        "train-nano", help="train the nano model on the synthetic world (resumable; about 2 h on 2 CPU cores)",
        description="Train NExT-GPT nano stage by stage: decoders, ImageBind towers, the base LLM, then "
                    "NExT-GPT's input alignment, output alignment and instruction tuning. Each stage writes a "
                    "DONE.json marker under --work; a re-run skips finished stages. Ends by writing the model "
                    "directory (fp16 safetensors, release layout) to --out.")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"model directory to write (default {DEFAULT_OUT})")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"scratch directory of the stages (default {DEFAULT_WORK})")
    p.add_argument("--stage", action="append", choices=ORDER + ["assemble"], default=None,
                   help="run only this stage and the stages it needs (repeatable); default: all, then assemble")
    p.add_argument("--redo", action="store_true", help="re-run the --stage stages even if they are done")
    p.add_argument("--decoders-from", type=Path, default=None, metavar="MODEL_DIR",
                   help="take the decoder stages (vocoder, VAEs, UNets: the first 2-4 hours) from this assembled "
                        "model directory, e.g. the committed nano, and train only ImageBind and NExT-GPT's stages")
    p.add_argument("--encoder-from", type=Path, default=None, metavar="MODEL_DIR",
                   help="take ImageBind's towers and the base LLM from this assembled model directory, so that "
                        "NExT-GPT's stages re-run on the encoder it ships (imagebind re-trained on another CPU "
                        "kind is another encoder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", type=float, default=None, metavar="F",
                   help="scale every stage's steps by F (e.g. 0.01: a smoke run of the whole chain)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on a busy machine)")
    p.add_argument("--jobs", type=int, default=DEFAULT_JOBS,
                   help=f"stages trained at once, each in a process of its own, where none reads another's "
                        f"output (default {DEFAULT_JOBS}; the weights are the same as with 1)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from .train import run

    stages = args.stage
    if stages and "assemble" not in stages and set(stages) >= set(ORDER):
        stages = stages + ["assemble"]
    run(work=args.work, out=args.out, stages=stages, seed=args.seed, quick=args.quick, threads=args.threads,
        redo=args.redo, decoders_from=args.decoders_from, encoder_from=args.encoder_from, jobs=args.jobs)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: `python -m weights.nano.cli train-nano ...` / `... eval nano ...`."""
    from . import eval as nano_eval

    parser = argparse.ArgumentParser(prog="python -m weights.nano.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    nano_eval.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
