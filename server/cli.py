"""`nextgpt`: the console script, an argparse dispatcher.

Each subcommand lives in a module exposing `register(subparsers)`, which adds its parser and
sets `func` (called with the parsed args; its return value is the exit status). Register a new
one by adding its module to SUBCOMMANDS; a module that is not there yet is skipped.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

SUBCOMMANDS = (
    "server.cli",  # serve (below)
    "server.cli_chat",  # chat: a terminal client (the lead's)
    "weights.cli",  # weights: fetch, convert, verify, list, build-tiny
    "server.bench.cli",  # bench: our way against the stock way
    "weights.nano.eval",  # eval nano: the nano model's meaning, measured
)


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve the model over HTTP and WebSocket",
                              description="Serve a NExT-GPT model behind an OpenAI-compatible API. Every "
                                          "setting also comes from NEXTGPT_* environment variables.")
    p.add_argument("--weights", help="preset name or model directory (default: NEXTGPT_WEIGHTS, else the default preset)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default 8000)")
    p.add_argument("--devices", help="'auto', 'cpu', 'cuda', or JSON {stage: device}")
    p.add_argument("--api-key", dest="api_keys", action="append", help="accept this Bearer key (repeatable)")
    p.add_argument("--log-level", help="uvicorn log level (default info)")
    p.add_argument("--ray", action="store_true", help="serve on Ray Serve: the ingress, the encoder, the LLM "
                   "and each decoder as deployments (resources from NEXTGPT_RAY__*; see the README's Scale out)")
    p.add_argument("--ray-address", help="the Ray cluster to join (e.g. auto, head:6379); implies --ray; "
                   "default: start a local Ray instance")
    p.set_defaults(func=serve)


def settings_from_args(args: argparse.Namespace):
    from .settings import Settings

    overrides = {k: getattr(args, k) for k in ("weights", "host", "port", "devices", "api_keys", "log_level")
                 if getattr(args, k, None) is not None}
    settings = Settings(**overrides)
    if getattr(args, "ray_address", None):
        settings.ray.address = args.ray_address
    return settings


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    settings = settings_from_args(args)
    if getattr(args, "ray", False) or getattr(args, "ray_address", None):
        from .ray_serve.app import serve_on_ray

        return serve_on_ray(settings)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                ws_max_size=settings.max_body_bytes, timeout_graceful_shutdown=settings.shutdown_timeout_s)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nextgpt", description="NExT-GPT: any-to-any multimodal chat.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = sys.modules[__name__] if name == __name__ else importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name and not name.startswith(f"{e.name}."):
                raise  # the module exists but something it imports is missing: say so
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
