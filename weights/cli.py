"""`nextgpt weights ...`: fetch, convert, verify, list, build-tiny.

`register(subparsers)` adds the group to the top-level CLI; each handler returns the exit code
(0 ok, 1 verification failed, 2 a FetchError or bad input). `main(argv)` runs the group alone.
Heavy imports (torch, transformers) happen inside the handlers, so `--help` stays instant.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from .presets import PRESETS, preset_dir
from .release import GROUPS, RELEASES


def _groups(text: str) -> tuple[str, ...]:
    groups = tuple(g.strip() for g in text.split(",") if g.strip())
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown part(s) {sorted(unknown)}; choose among {', '.join(GROUPS)}")
    return groups


def _confirm(assume_yes: bool):
    def ask() -> bool:
        if assume_yes:
            return True
        if not sys.stdin.isatty():
            print("not a terminal: pass --yes to accept the licences above", file=sys.stderr)
            return False
        return input("Continue? [y/N] ").strip().lower() in ("y", "yes")
    return ask


def _quiet() -> None:
    warnings.filterwarnings("ignore")  # library deprecation chatter hides the tables we print


def cmd_fetch(args) -> int:
    from .assemble import fetch_release
    from .fetch import FetchError
    from .verify import render, verify

    release = RELEASES[args.preset]
    if args.imagebind_url:
        release = release.with_url("imagebind", args.imagebind_url)
    dest = Path(args.dir) if args.dir else preset_dir(args.preset)
    try:
        fetch_release(release, dest, args.only, endpoint=args.endpoint, token=args.token,
                      confirm=_confirm(args.yes), keep_sources=args.keep_sources,
                      check_space=not args.no_disk_check, dry_run=args.dry_run, progress=not args.no_progress)
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    _quiet()
    checks = verify(dest, args.only)
    print(render(checks))
    if not all(c.ok for c in checks):
        print("a component failed verification: delete its folder and run the same fetch again", file=sys.stderr)
        return 1
    print(f"ready: nextgpt serve --weights {dest}")
    return 0


def cmd_convert(args) -> int:
    from .convert import ConvertError, convert_bin_folder, convert_checkpoint, convert_imagebind
    from .delta import DeltaError, apply_delta

    try:
        if args.what == "checkpoint":
            convert_checkpoint(Path(args.src), Path(args.dest))
        elif args.what == "imagebind":
            kwargs = RELEASES[args.preset].imagebind_kwargs() if args.kwargs is None else json.loads(args.kwargs)
            convert_imagebind(Path(args.src), Path(args.dest), kwargs)
        elif args.what == "delta":
            apply_delta(Path(args.base), Path(args.delta), Path(args.dest),
                        max_shard_bytes=int(args.shard_gb * 1024**3))
        else:
            convert_bin_folder(Path(args.folder))
    except (ConvertError, DeltaError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("converted")
    return 0


def cmd_verify(args) -> int:
    from .verify import render, verify

    _quiet()
    checks = verify(Path(args.dir), args.only)
    print(render(checks))
    return 0 if all(c.ok for c in checks) else 1


def cmd_list(args) -> int:
    from .fetch import human
    from .inventory import OUTPUTS, dir_size, gpu_memory, preset_params

    entries = [(name, preset_dir(name)) for name in PRESETS] + [(str(d), Path(d)) for d in args.dir]
    print("presets and model directories:")
    for name, path in entries:
        state = "yes" if (path / "nextgpt.json").is_file() else "no"
        partial = path / "downloads"
        extra = f" (partial downloads: {human(dir_size(partial))})" if partial.is_dir() else ""
        print(f"  {name:<22} on disk: {state:<4} {human(dir_size(path)) if state == 'yes' else '-':>9}  {path}{extra}")
    columns = list(OUTPUTS) + ["all"]
    print("\nGPU memory for the weights at fp16 (computed from parameter counts, not measured;"
          " activations, KV cache and CUDA context come on top):")
    print(f"  {'':<22} " + " ".join(f"{c:>9}" for c in columns) + "  source")
    for name, path in entries:
        params, source = preset_params(name, path)
        if params is None:
            print(f"  {name:<22} {source}")
            continue
        memory = gpu_memory(params)
        print(f"  {name:<22} " + " ".join(f"{human(memory[c]) if memory[c] else '-':>9}" for c in columns) + f"  {source}")
    return 0


def cmd_build_tiny(args) -> int:
    from .tiny import build_tiny

    out = build_tiny(Path(args.dir) if args.dir else preset_dir("tiny"))
    print(f"built {out}")
    return 0


def _add_fetch(sub) -> None:
    p = sub.add_parser("fetch", help="download, convert and assemble the released weights")
    p.add_argument("preset", nargs="?", default="nextgpt-7b-tiva-v0", choices=sorted(RELEASES))
    p.add_argument("--dir", help="model directory to write (default: weights/<preset>)")
    p.add_argument("--only", type=_groups, default=GROUPS, help=f"comma-separated parts among {','.join(GROUPS)}")
    p.add_argument("--token", help="Hugging Face token (default: HF_TOKEN or `hf auth login`)")
    p.add_argument("--endpoint", help="hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    p.add_argument("--imagebind-url", help="where to get imagebind_huge.pth (a mirror)")
    p.add_argument("--yes", action="store_true", help="accept the licences without asking")
    p.add_argument("--keep-sources", action="store_true", help="keep the raw downloads after conversion")
    p.add_argument("--no-disk-check", action="store_true", help="skip the free-space check")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--dry-run", action="store_true", help="say what would be downloaded and the disk it needs (fetches only pipeline indexes)")
    p.set_defaults(func=cmd_fetch)


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="turn downloaded pickles into safetensors")
    what = p.add_subparsers(dest="what", required=True)
    c = what.add_parser("checkpoint", help="the release's pytorch_model.pt -> pytorch_model.safetensors")
    c.add_argument("src")
    c.add_argument("dest")
    c = what.add_parser("imagebind", help="imagebind_huge.pth -> DIR/model.safetensors + DIR/config.json")
    c.add_argument("src")
    c.add_argument("dest")
    c.add_argument("--preset", default="nextgpt-7b-tiva-v0", choices=sorted(RELEASES))
    c.add_argument("--kwargs", help="ImageBindModel keyword arguments as JSON (default: ImageBind-huge)")
    c = what.add_parser("delta", help="LLaMA base + Vicuna delta -> safetensors shards")
    c.add_argument("base")
    c.add_argument("delta")
    c.add_argument("dest")
    c.add_argument("--shard-gb", type=float, default=2.0, help="largest output shard file, in GB")
    c = what.add_parser("bin", help="a folder's pickled *.bin weights -> safetensors")
    c.add_argument("folder")
    p.set_defaults(func=cmd_convert)


def register(subparsers) -> argparse.ArgumentParser:
    """Add `weights` and its subcommands to a top-level CLI's subparsers."""
    parser = subparsers.add_parser("weights", help="fetch, convert, verify and list model weights")
    sub = parser.add_subparsers(dest="weights_command", required=True)
    _add_fetch(sub)
    _add_convert(sub)
    p = sub.add_parser("verify", help="check a model directory against the architecture, without loading it")
    p.add_argument("dir")
    p.add_argument("--only", type=_groups, default=GROUPS)
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("list", help="presets, what is on disk, sizes and GPU memory")
    p.add_argument("--dir", action="append", default=[], help="also describe this model directory")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("build-tiny", help="(re)build the tiny preset")
    p.add_argument("--dir", help="where (default: weights/tiny)")
    p.set_defaults(func=cmd_build_tiny)
    from .nano.cli import register as register_train_nano  # `weights train-nano`

    register_train_nano(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nextgpt")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main(["weights", *sys.argv[1:]]))
