"""Run the nano training chain, stage by stage, resumably.

Each stage writes its outputs under `work/<stage>/` and, last, a `DONE.json` marker with its
timing; a re-run skips every stage that has its marker. `assemble` writes the model directory in
the release layout (fp16 safetensors) that `NextGPT.from_pretrained` loads.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from ..presets import WEIGHTS_ROOT, preset_dir
from . import config, decoders, encoder, language, video, video_motion
from .common import Context, set_threads
from .config import Budget
from .schedule import run_side_by_side

DEFAULT_OUT = preset_dir("nano")
DEFAULT_WORK = WEIGHTS_ROOT / "cache" / "nano-train"
# Stages trained at once where the chain allows it (schedule.py): on 2 cores two side by side get
# about 1.15x the work done, each stage's weights byte-identical to a run of one at a time.
DEFAULT_JOBS = 2

# name -> (function, the stages it reads)
STAGES: dict[str, tuple[Callable[[Context], dict], tuple[str, ...]]] = {
    "tokenizers": (decoders.stage_tokenizers, ()),
    "vocoder": (decoders.stage_vocoder, ()),
    "image_vae": (decoders.stage_image_vae, ()),
    "image_unet": (decoders.stage_image_unet, ("tokenizers", "image_vae")),
    "audio_vae": (decoders.stage_audio_vae, ()),
    "audio_unet": (decoders.stage_audio_unet, ("tokenizers", "audio_vae", "vocoder")),
    "video_unet": (video.stage_video_unet, ("image_unet",)),
    "video_motion": (video_motion.stage_video_motion, ("video_unet",)),
    "imagebind": (encoder.stage_imagebind, ()),
    "llm": (language.stage_llm, ("tokenizers",)),
    "align_input": (language.stage_align_input, ("llm", "imagebind")),
    "align_output": (language.stage_align_output, ("align_input", "image_unet", "audio_unet", "video_motion")),
    "instruct": (language.stage_instruct, ("align_output",)),
}
ORDER = list(STAGES)


def _closure(names: list[str]) -> list[str]:
    """The named stages and every stage they depend on, in run order."""
    need: set[str] = set()

    def add(name: str) -> None:
        if name not in need:
            need.add(name)
            for dep in STAGES[name][1]:
                add(dep)

    for n in names:
        add(n)
    return [s for s in ORDER if s in need]


DECODER_STAGES = ("vocoder", "image_vae", "image_unet", "audio_vae", "audio_unet", "video_unet", "video_motion")
ENCODER_STAGES = (encoder.STAGE, "llm")  # the frozen parts NExT-GPT's stages read


def _mark_seeded(ctx: Context, stages: tuple[str, ...], model_dir: Path, log: Callable[[str], None]) -> None:
    """DONE markers for stages taken from a model: the seconds its training recorded, and where from."""
    recorded = json.loads((model_dir / "training.json").read_text())["seconds"]
    for stage in stages:
        ctx.mark_done(stage, {"seconds": recorded.get(stage), "steps": ctx.steps(stage), "seeded_from": str(model_dir)})
    log(f"[seed] stages taken from {model_dir}: {', '.join(stages)}")


def seed_decoders(ctx: Context, model_dir: Path, log: Callable[[str], None] = print) -> None:
    """Take the decoder stages' results from an assembled model directory instead of training them
    (they are the chain's first 2-4 hours), so that the encoder and NExT-GPT's stages can be
    re-trained on their own. The pipelines go back to fp32."""
    import torch

    from models.decoders import load_pipeline

    model_dir = Path(model_dir)
    parts = config.nano_config().components
    for kind, stage_dir in config.DECODER_STAGE_DIRS.items():
        pipe = load_pipeline(kind, model_dir / getattr(parts, kind), torch.float32)
        pipe.save_pretrained(str(ctx.dir(stage_dir)))
        if kind == "audio":  # the vocoder stage's own directory, which assembly reads
            pipe.vocoder.save_pretrained(str(ctx.dir("vocoder")))
        if kind in ("image", "audio"):  # the VAE stages' own directories, so that a UNet stage can be re-run on them
            pipe.vae.save_pretrained(str(ctx.dir(f"{kind}_vae")))
        if kind == "video":  # also as `video_unet`'s output, so that `--stage video_motion --redo` can run on it
            pipe.save_pretrained(str(ctx.dir(config.VIDEO_UNET_DIR)))
    _mark_seeded(ctx, DECODER_STAGES, model_dir, log)


def seed_encoder(ctx: Context, model_dir: Path, log: Callable[[str], None] = print) -> None:
    """Take ImageBind's towers and the base LLM (the frozen parts NExT-GPT's stages read) from an
    assembled model directory, back in fp32, so that NExT-GPT's stages can be re-run on the very
    encoder a model ships: `imagebind` re-run on another kind of CPU trains another encoder (its
    float sums round otherwise), and the language stages' figures move with it. Only the kept
    towers come back (no `full.safetensors`: `python -m weights.nano.encoder` needs a trained one)."""
    import torch
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    from models.encoder import WEIGHTS_FILE

    model_dir = Path(model_dir)
    parts = config.nano_config().components
    towers = load_file(str(model_dir / parts.encoder / WEIGHTS_FILE))
    encoder.save_towers(ctx.dir(encoder.STAGE), {k: v.float() if v.is_floating_point() else v for k, v in towers.items()})
    LlamaForCausalLM.from_pretrained(str(model_dir / parts.llm), dtype=torch.float32).save_pretrained(str(ctx.dir("llm")))
    _mark_seeded(ctx, ENCODER_STAGES, model_dir, log)


def run(work: Path = DEFAULT_WORK, out: Path = DEFAULT_OUT, stages: list[str] | None = None, seed: int = 0,
        quick: float | None = None, threads: int = 2, redo: bool = False, decoders_from: Path | None = None,
        encoder_from: Path | None = None, jobs: int = DEFAULT_JOBS, log: Callable[[str], None] = print) -> Path:
    """Train what is not done yet (all stages, or `stages` and what they need), up to `jobs` stages
    at once (schedule.py), then assemble `out`; with `decoders_from` / `encoder_from`, the decoder
    stages / ImageBind and the base LLM come from that model directory (a `--redo` of one of them
    still re-trains it)."""
    set_threads(threads)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    settings = {"seed": seed, "quick": quick}
    marker = work / "run.json"
    if marker.is_file() and json.loads(marker.read_text()) != settings:
        raise SystemExit(f"{work} holds a run with other settings ({marker.read_text().strip()}); "
                         "use another --work directory or delete it")
    marker.write_text(json.dumps(settings))
    budget = Budget() if quick is None else Budget().scaled(quick)
    ctx = Context(work=work, seed=seed, budget=budget, threads=threads, log=log)
    for source, seeded, seed_from in ((decoders_from, DECODER_STAGES, seed_decoders),
                                      (encoder_from, ENCODER_STAGES, seed_encoder)):
        if source is None:
            continue
        if all(ctx.done(s) for s in seeded):  # a later call on the work dir: keep what it re-trained since
            log(f"[seed] {', '.join(seeded)} done already: not taken again from {source}")
        else:
            seed_from(ctx, source, log)
    todo = _to_train(ctx, [s for s in (stages or ORDER) if s != "assemble"], redo)
    if jobs > 1 and len(todo) > 1:
        schedule = run_side_by_side(ctx, todo, lambda name: STAGES[name][1], jobs, quick, log)
        log(f"[schedule] {len(todo)} stages, {jobs} at a time, in {schedule['wall_seconds']} s")
    else:
        for name in todo:
            _train_here(ctx, name)
    if stages is None or "assemble" in stages:
        if all(ctx.done(s) for s in ORDER):
            from .assemble import assemble
            assemble(ctx, Path(out))
            log(f"[assemble] model written to {out}")
        else:
            log("[assemble] skipped: not every stage is done")
    return Path(out)


def _to_train(ctx: Context, wanted: list[str], redo: bool) -> list[str]:
    """The stages of `wanted` and what they need that are to run now, in run order: not done, or
    re-done (`redo`: from scratch), or done with fewer steps than the budget asks (extended)."""
    todo = []
    for name in _closure(wanted):
        if redo and name in wanted:  # from scratch: not from its saved end state
            ctx.forget(name)
        elif ctx.extendable(name):
            ctx.log(f"[{name}] done with {ctx.info(name)['steps']} steps; the budget asks {ctx.steps(name)}: extending")
        elif ctx.done(name):
            ctx.log(f"[{name}] done already ({ctx.info(name).get('seconds', '?')} s): skipped")
            continue
        todo.append(name)
    return todo


def _train_here(ctx: Context, name: str) -> None:
    """Run one stage in this process and write its DONE marker."""
    ctx.log(f"[{name}] starting")
    t0 = time.time()
    info = STAGES[name][0](ctx) or {}
    # a stage resumed after a kill reports the time of all its attempts' steps
    info = {**info, "seconds": max(info.get("seconds", 0.0), round(time.time() - t0, 1))}
    ctx.mark_done(name, info)
    ctx.log(f"[{name}] done in {info['seconds']} s: {json.dumps(info)}")


def timings(work: Path = DEFAULT_WORK) -> dict[str, float]:
    ctx = Context(work=Path(work))
    return {s: ctx.info(s).get("seconds") for s in ORDER if ctx.done(s)}
