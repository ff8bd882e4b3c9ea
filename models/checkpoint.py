"""The released NExT-GPT checkpoint: every trained parameter under the reference's names.

The reference loads it with `load_state_dict(strict=False)`, silently dropping what does not
match. Here every key is accounted for both ways: a mismatch fails with the list of missing,
unexpected and mis-shaped keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

CHECKPOINT_FILE = "pytorch_model.safetensors"  # `nextgpt weights convert` writes it from the .pt

# release prefix -> attribute path on NextGPT (the module that owns those parameters)
PROJECTION_PREFIXES = {
    "image": "gen_text_hidden_fcs.0.",
    "video": "gen_text_hidden_fcs_video.0.",
    "audio": "gen_text_hidden_fcs_audio.0.",
}
LLM_PREFIX = "llama_model."
INPUT_PROJ_PREFIX = "llama_proj."


class CheckpointMismatch(ValueError):
    def __init__(self, report: "KeyReport"):
        self.report = report
        super().__init__(report.describe())


@dataclass
class KeyReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    misshaped: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, expected, found

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.misshaped)

    def describe(self, limit: int = 20) -> str:
        if self.ok:
            return "checkpoint matches the model: every key present, none unexpected, all shapes equal"
        lines = ["checkpoint does not match the model:"]
        for title, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                lines.append(f"  {len(items)} {title}: " + ", ".join(items[:limit]) + (" ..." if len(items) > limit else ""))
        for key, want, got in self.misshaped[:limit]:
            lines.append(f"  wrong shape {key}: expected {list(want)}, found {list(got)}")
        return "\n".join(lines)


def trained_llm_keys(peft_model: nn.Module) -> dict[str, nn.Parameter | torch.Tensor]:
    """What the release saved of the LLM: LoRA matrices and the WHOLE embed_tokens and lm_head."""
    out = {}
    for key, value in peft_model.state_dict(keep_vars=True).items():
        if ".lora_" in key or key.endswith("embed_tokens.weight") or key.endswith("lm_head.weight"):
            out[LLM_PREFIX + key] = value
    return out


def release_targets(llm, projections: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Release key -> the parameter it loads into (works on the meta device too)."""
    targets = trained_llm_keys(llm.llama_model)
    for key, value in llm.llama_proj.state_dict(keep_vars=True).items():
        targets[INPUT_PROJ_PREFIX + key] = value
    for modality, prefix in PROJECTION_PREFIXES.items():
        for key, value in projections[modality].state_dict(keep_vars=True).items():
            targets[prefix + key] = value
    return targets


def compare(targets: dict[str, torch.Tensor], shapes: dict[str, tuple]) -> KeyReport:
    report = KeyReport()
    report.missing = sorted(set(targets) - set(shapes))
    report.unexpected = sorted(set(shapes) - set(targets))
    for key in sorted(set(targets) & set(shapes)):
        if tuple(targets[key].shape) != tuple(shapes[key]):
            report.misshaped.append((key, tuple(targets[key].shape), tuple(shapes[key])))
    return report


def file_shapes(path: Path) -> dict[str, tuple]:
    """Key -> shape of a safetensors file, read from its header only."""
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


@torch.no_grad()
def load_release_checkpoint(path: Path, llm, projections: dict[str, nn.Module]) -> KeyReport:
    """Copy every release tensor into its parameter; raise CheckpointMismatch on any mismatch."""
    targets = release_targets(llm, projections)
    report = compare(targets, file_shapes(path))
    if not report.ok:
        raise CheckpointMismatch(report)
    with safe_open(str(path), framework="pt") as f:
        for key, param in targets.items():
            param.copy_(f.get_tensor(key).to(param.dtype))
    return report
