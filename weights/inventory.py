"""What is on disk and what it needs on a GPU: sizes, parameter counts per stage, memory per output.

GPU memory here is COMPUTED, not measured: parameters x 2 bytes (fp16) per stage that must be
resident for a given output. Activations, the KV cache and the CUDA context come on top.
"""
from __future__ import annotations

from pathlib import Path

from models.checkpoint import CHECKPOINT_FILE
from models.config import ModelConfig
from models.encoder import KEPT_TOWERS, WEIGHTS_FILE as ENCODER_WEIGHTS

from .release import RELEASE_PARAMS, RELEASES
from .tensorfiles import TensorFileError, folder_weights, read_header

FP16_BYTES = 2
BASE_VOCAB_KEYS = ("model.embed_tokens.weight", "lm_head.weight")  # replaced whole by the release checkpoint
# What must be resident for each kind of answer: text always needs the encoder and the LLM.
OUTPUTS = {"text": ("encoder", "llm"), "+image": ("image",), "+audio": ("audio",), "+video": ("video",)}


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else 0


def _decoder_params(folder: Path) -> int:
    total = 0
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        weights = folder_weights(sub)
        if weights.files:  # tokenizer and scheduler folders have none
            total += weights.numel
    return total


def stage_params(model_dir: Path) -> dict[str, int]:
    """Parameters of each stage as the server loads it, counted from the file headers."""
    model_dir = Path(model_dir)
    parts = ModelConfig.load(model_dir).components
    encoder = read_header(model_dir / parts.encoder / ENCODER_WEIGHTS)
    llm = folder_weights(model_dir / parts.llm).tensors
    checkpoint = read_header(model_dir / parts.nextgpt / CHECKPOINT_FILE)
    counts = {
        "encoder": sum(t.numel for k, t in encoder.items() if k.split(".")[1] in KEPT_TOWERS),
        "llm": sum(t.numel for k, t in llm.items() if k not in BASE_VOCAB_KEYS) + sum(t.numel for t in checkpoint.values()),
    }
    for modality in ("image", "audio", "video"):
        folder = model_dir / getattr(parts, modality)
        if folder.is_dir():
            counts[modality] = _decoder_params(folder)
    return counts


def gpu_memory(params: dict[str, int]) -> dict[str, int | None]:
    """Bytes of fp16 weights resident for text alone, text plus each medium, and everything."""
    base = sum(params.get(s, 0) for s in OUTPUTS["text"]) * FP16_BYTES
    out: dict[str, int | None] = {"text": base}
    for name in ("+image", "+audio", "+video"):
        stage = OUTPUTS[name][0]
        out[name] = base + params[stage] * FP16_BYTES if stage in params else None
    out["all"] = base + sum(params.get(m, 0) for m in ("image", "audio", "video")) * FP16_BYTES
    return out


def preset_params(name: str, model_dir: Path) -> tuple[dict[str, int] | None, str]:
    """(stage -> parameters, where the numbers come from) for a preset, on disk or not."""
    if (model_dir / "nextgpt.json").is_file():
        try:
            return stage_params(model_dir), "counted from the files"
        except (OSError, TensorFileError, KeyError) as err:
            return None, f"unreadable ({err})"
    if name in RELEASES:
        return dict(RELEASE_PARAMS), "from the published architectures (not on disk)"
    return None, "not on disk"
