"""Named weights: where each preset lives and how it comes to exist."""
from __future__ import annotations

from pathlib import Path

WEIGHTS_ROOT = Path(__file__).resolve().parent
DEFAULT_PRESET = "tiny"  # the one place the default preset is named

PRESETS = {
    "tiny": "toy sizes, random deterministic weights, built offline in seconds (tests, plumbing)",
    "nextgpt-7b-tiva-v0": "the released NExT-GPT (Vicuna-7B v0, ImageBind-huge, SD 1.5, AudioLDM-l, Zeroscope v2 576w)",
}


def preset_dir(name: str) -> Path:
    return WEIGHTS_ROOT / name


def resolve(weights: str | Path) -> Path:
    """A preset name or a model directory -> a model directory; `tiny` is built when missing."""
    if str(weights) in PRESETS:
        path = preset_dir(str(weights))
        if str(weights) == "tiny" and not (path / "nextgpt.json").is_file():
            from .tiny import build_tiny
            build_tiny(path)
        elif not (path / "nextgpt.json").is_file():
            raise FileNotFoundError(
                f"preset {weights!r} is not on disk; fetch it with `nextgpt weights fetch {weights}`")
        return path
    path = Path(weights).expanduser()
    if not (path / "nextgpt.json").is_file():
        raise FileNotFoundError(f"{path} is neither a preset ({', '.join(PRESETS)}) nor a model directory")
    return path
