"""Named weights: where each preset lives and how it comes to exist."""
from __future__ import annotations

from pathlib import Path

WEIGHTS_ROOT = Path(__file__).resolve().parent
DEFAULT_PRESET = "nano"  # the one place the default preset is named

PRESETS = {
    "tiny": "toy sizes, random deterministic weights, built offline in seconds (tests, plumbing)",
    "nano": "small sizes trained here on a synthetic world of shapes, tones and moving shapes (weights/nano)",
    "nextgpt-7b-tiva-v0": "the released NExT-GPT (Vicuna-7B v0, ImageBind-huge, SD 1.5, AudioLDM-l, Zeroscope v2 576w)",
}


# where a preset's model directory lives, where that is not weights/<name>
PRESET_DIRS = {"nano": WEIGHTS_ROOT / "nano" / "model"}  # committed beside its training code


def preset_dir(name: str) -> Path:
    return PRESET_DIRS.get(name, WEIGHTS_ROOT / name)


def _missing(name: str) -> str:
    if name == "nano":
        return "train it with `nextgpt weights train-nano` (about two hours on a CPU)"
    return f"fetch it with `nextgpt weights fetch {name}`"


def resolve(weights: str | Path) -> Path:
    """A preset name or a model directory -> a model directory; `tiny` is built when missing."""
    if str(weights) in PRESETS:
        path = preset_dir(str(weights))
        if str(weights) == "tiny" and not (path / "nextgpt.json").is_file():
            from .tiny import build_tiny
            build_tiny(path)
        elif not (path / "nextgpt.json").is_file():
            raise FileNotFoundError(f"preset {weights!r} is not on disk; {_missing(str(weights))}")
        return path
    path = Path(weights).expanduser()
    if not (path / "nextgpt.json").is_file():
        raise FileNotFoundError(f"{path} is neither a preset ({', '.join(PRESETS)}) nor a model directory")
    return path
