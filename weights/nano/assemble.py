"""Write the trained nano model in the release layout, fp16, ready for `NextGPT.from_pretrained`."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.checkpoint import CHECKPOINT_FILE
from models.decoders import load_pipeline
from models.encoder import WEIGHTS_FILE as ENCODER_WEIGHTS

from . import config
from .common import Context
from .encoder import STAGE, save_towers

README = """This directory is the `nano` preset of nextgpt-server: NExT-GPT's architecture at small
sizes, trained on a synthetic world of coloured shapes, tones and moving shapes by
`nextgpt weights train-nano`. It is NOT the released NExT-GPT model. See weights/nano/README.md.
"""


def _fp16(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def _pipeline_fp16(src: Path, dst: Path, kind: str) -> None:
    pipe = load_pipeline(kind, src, torch.float32)  # as the decoder stages saved it
    if kind == "audio":  # the vocoder stage may have been re-run after the audio UNet's
        from transformers import SpeechT5HifiGan

        pipe.vocoder = SpeechT5HifiGan.from_pretrained(str(src.parent / "vocoder")).eval()
    pipe.to(torch.float16).save_pretrained(str(dst))


def _strip_source_paths(model_dir: Path) -> None:
    """Drop `_name_or_path` from every saved config and pipeline index: it records the training
    work directory, a path on the machine that trained, which means nothing where the model loads."""
    for path in model_dir.rglob("*.json"):
        cfg = json.loads(path.read_text())
        if isinstance(cfg, dict) and cfg.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def assemble(ctx: Context, out: Path) -> Path:
    from transformers import AutoTokenizer, LlamaForCausalLM

    cfg = config.nano_config()
    parts = cfg.components
    work = ctx.work
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".nano-", dir=out.parent))
    try:
        (tmp / parts.encoder).mkdir()
        save_towers(tmp / parts.encoder, _fp16(load_file(str(work / STAGE / ENCODER_WEIGHTS))))
        LlamaForCausalLM.from_pretrained(str(work / "llm"), dtype=torch.float16).save_pretrained(str(tmp / parts.llm))
        AutoTokenizer.from_pretrained(str(work / "tokenizers" / "llama")).save_pretrained(str(tmp / parts.nextgpt))
        save_file(_fp16(load_file(str(work / "instruct" / "state.safetensors"))), str(tmp / parts.nextgpt / CHECKPOINT_FILE))
        for kind in ("image", "audio", "video"):
            _pipeline_fp16(work / config.DECODER_STAGE_DIRS[kind], tmp / getattr(parts, kind), kind)
        _strip_source_paths(tmp)
        cfg.save(tmp)
        (tmp / "README.txt").write_text(README)
        timings = {s: ctx.info(s).get("seconds") for s in sorted(p.name for p in work.iterdir() if (p / "DONE.json").is_file())}
        (tmp / "training.json").write_text(json.dumps({"seed": ctx.seed, "seconds": timings}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(tmp), str(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
