"""`nextgpt bench`: our way against the stock way, in one run, as ratios and a per-stage table."""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

SCENARIOS = ("text", "image-in", "image-out", "audio-out", "video-out", "three-turn",
             "http", "concurrent", "ttft")
LIBRARY = {  # scenario -> (inputs, required outputs)
    "text": ((), ()), "image-in": (("image",), ()), "image-out": ((), ("image",)),
    "audio-out": ((), ("audio",)), "video-out": ((), ("video",)),
}


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure our serving against the stock way, in one run")
    p.add_argument("--weights", default=None, help="preset or model directory (default: the default preset)")
    p.add_argument("--scenario", action="append", choices=("all", *SCENARIOS),
                   help="repeatable; default: all")
    p.add_argument("--concurrency", type=int, default=8, help="clients in the concurrent scenario")
    p.add_argument("--repeat", type=int, default=5, help="runs per measurement (the median is kept)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--profile", action="store_true", help="instead: where the time of each in-process scenario "
                   "goes, ours and stock, stage by stage, from one cProfile'd run of each")
    p.add_argument("--ray", action="store_true", help="instead: the same HTTP requests served by one process and "
                   "by Ray Serve on this machine (every stage a deployment), as ratios, with where the time goes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from models.nextgpt import NextGPT
    from server.settings import Settings
    from weights.presets import DEFAULT_PRESET, resolve

    from ..background import BackgroundServer
    from . import http_scenarios as web
    from . import library

    chosen = SCENARIOS if not args.scenario or "all" in args.scenario else tuple(args.scenario)
    model_dir = resolve(args.weights or DEFAULT_PRESET)
    if args.ray:
        return run_ray(args, model_dir)
    rows = []
    model = NextGPT.from_pretrained(model_dir)
    if args.profile:
        return run_profile(model, model_dir, chosen)
    for name in [s for s in chosen if s in LIBRARY]:
        inputs, required = LIBRARY[name]
        rows.append(library.single_turn(model, model_dir, name, inputs, required, repeat=args.repeat))
        print(_line(rows[-1]), file=sys.stderr)
    if "three-turn" in chosen:
        rows.append(library.three_turns(model, model_dir, repeat=max(1, args.repeat // 2)))
        print(_line(rows[-1]), file=sys.stderr)
    if {"http", "concurrent", "ttft"} & set(chosen):
        settings = Settings(weights=str(model_dir), devices="cpu", queue_size=max(64, args.concurrency * 2),
                            decoder_max_batch=args.concurrency, llm_max_batch=args.concurrency)
        with BackgroundServer(settings) as server:
            for name, fn in (("http", lambda: web.http_overhead(server, args.repeat)),
                             ("concurrent", lambda: web.concurrent_clients(server, args.concurrency, min(args.repeat, 3))),
                             ("ttft", lambda: web.ttft_under_video(server, args.repeat))):
                if name in chosen:
                    rows.append(fn())
                    print(_line(rows[-1]), file=sys.stderr)
    print(report(rows, model_dir))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "weights": str(model_dir),
                                         "rows": [r.as_dict() for r in rows]}, indent=2))
    return 0


def run_profile(model, model_dir: Path, chosen: tuple[str, ...]) -> int:
    from . import library
    from .profile import profile, table

    sides = {name: library.single_turn_sides(model, model_dir, *LIBRARY[name]) for name in chosen if name in LIBRARY}
    if "three-turn" in chosen:
        sides["three-turn"] = library.three_turn_sides(model, model_dir)
    for name, (ours, stock) in sides.items():
        ours(), stock()  # warm: first-call costs are not what a profile should show
        print(table(name, profile(ours), profile(stock)))
    return 0


def run_ray(args: argparse.Namespace, model_dir: Path) -> int:
    from server.settings import Settings

    from . import ray_compare

    settings = Settings(weights=str(model_dir), devices="cpu", queue_size=max(64, args.concurrency * 2),
                        decoder_max_batch=args.concurrency, llm_max_batch=args.concurrency)
    rows = ray_compare.compare(settings, args.repeat, args.concurrency, lambda line: print(line, file=sys.stderr))
    print(report(rows, model_dir))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "weights": str(model_dir),
                                         "rows": [r.as_dict() for r in rows]}, indent=2))
    return 0


def machine() -> str:
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {gpu}, torch {torch.__version__}"


def _line(row) -> str:
    return f"  measured: {row.scenario}: {row.ratio:.2f}x"


def report(rows, model_dir) -> str:
    out = [f"nextgpt bench on {machine()} with {model_dir.name}", "",
           f"{'scenario':<52} {'ours s':>8} {'stock s':>8} {'ratio':>7} {'target':>8}  stock means"]
    for r in rows:
        target = "" if r.target is None else ("≥" if r.higher_is_better else "≤") + f"{r.target:g}"
        mark = "" if r.met is None else (" ok" if r.met else " MISSED")
        out.append(f"{r.scenario:<52} {r.ours_s:8.3f} {r.stock_s:8.3f} {r.ratio:6.2f}x {target:>8}{mark}  {r.what}")
    staged = [r for r in rows if r.stages]
    if staged:
        out += ["", "per stage (ours, one request; seconds unless named)"]
        for r in staged:
            cells = ", ".join(f"{k} {v:.3f}" if "per_s" not in k else f"{k} {v:.0f}" for k, v in r.stages.items())
            out.append(f"  {r.scenario}: {cells}")
    return "\n".join(out)
