"""Check a model directory without loading a tensor: every file present and complete, every key
and shape of every component equal to the architecture the loader builds (on the meta device).

Each component gets a table; any problem makes `ok` false (and the CLI exit non-zero). What the
libraries themselves drop on load (old rotary/position buffers, a class's declared ignores,
diffusers' renamed attention keys) is tolerated, as the loaders tolerate it.
"""
from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.checkpoint import CHECKPOINT_FILE, KeyReport, compare
from models.config import CONFIG_FILE, ModelConfig
from models.encoder import CONFIG_FILE as ENCODER_CONFIG, KEPT_TOWERS, WEIGHTS_FILE as ENCODER_WEIGHTS

from .release import GROUPS
from .tensorfiles import FolderWeights, TensorFileError, TensorInfo, folder_weights, read_header

# Buffers older checkpoints saved and current libraries recompute (transformers drops them too).
OLD_BUFFERS = (r"rotary_emb\.inv_freq$", r"(^|\.)position_ids$")
IMAGEBIND_TOWERS = ("vision", "text", "audio", "thermal", "depth", "imu")
SKIPPED_COMPONENTS = {"safety_checker": "the server runs Stable Diffusion without its safety checker"}
DECODER_GROUPS = ("image", "audio", "video")


@dataclass
class Row:
    part: str
    klass: str
    tensors: str = "-"
    params: str = "-"
    status: str = "ok"


@dataclass
class Check:
    component: str
    path: str
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e5 else str(n)


def tolerate(report: KeyReport, model: torch.nn.Module | None, shared: list[set[str]] = ()) -> KeyReport:
    """Drop from a report what the loading library itself ignores."""
    patterns = list(OLD_BUFFERS) + list(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])
    report.unexpected = [k for k in report.unexpected if not any(re.search(p, k) for p in patterns)]
    missing = set(report.missing)
    for group in shared:  # tied weights: one saved name is enough
        if group - missing:
            missing -= group
    report.missing = sorted(missing)
    return report


def compare_part(check: Check, part: str, klass: str, expected: dict[str, torch.Tensor],
                 found: dict[str, TensorInfo], model=None, shared: list[set[str]] = ()) -> None:
    """Add one table row comparing `expected` (meta tensors) with `found` (file headers)."""
    report = tolerate(compare(expected, {k: v.shape for k, v in found.items()}), model, shared)
    n = sum(found[k].numel for k in expected if k in found)
    row = Row(part, klass, f"{len(set(expected) & set(found))}/{len(expected)}", _params(n))
    if not report.ok:
        row.status = (f"{len(report.missing)} missing, {len(report.unexpected)} unexpected, "
                      f"{len(report.misshaped)} wrong shape")
        check.problems += [f"{part}: {line.strip()}" for line in report.describe(limit=5).splitlines()[1:]]
    check.rows.append(row)


def shared_groups(model: torch.nn.Module) -> list[set[str]]:
    """State-dict names that are one tensor (tied weights)."""
    by_id: dict[int, set[str]] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        by_id.setdefault(id(value), set()).add(key)
    return [g for g in by_id.values() if len(g) > 1]


def _weights(check: Check, folder: Path) -> FolderWeights:
    weights = folder_weights(folder)
    check.problems += [f"{folder.name}/: {p}" for p in weights.problems]
    return weights


# --- the components -------------------------------------------------------------------------------
def check_config(model_dir: Path) -> tuple[Check, ModelConfig | None]:
    check = Check("config", CONFIG_FILE)
    try:
        config = ModelConfig.load(model_dir)
    except (FileNotFoundError, ValueError) as err:
        check.problems.append(str(err).splitlines()[0])
        return check, None
    check.rows.append(Row(CONFIG_FILE, "ModelConfig", status=f"ok ({config.name})"))
    return check, config


def check_llm(model_dir: Path, config: ModelConfig):
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = model_dir / config.components.llm
    check = Check("llm", f"{config.components.llm}/")
    if not (folder / "config.json").is_file():
        check.problems.append(f"{folder}/config.json is missing")
        return check, None
    llama_config = LlamaConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config)
    weights = _weights(check, folder)
    compare_part(check, folder.name, "LlamaForCausalLM", model.state_dict(), weights.tensors, model,
                 shared_groups(model))
    check.rows[-1].status += f" [{', '.join(weights.dtypes())}, {len(weights.files)} file(s)]"
    return check, llama_config


def check_checkpoint(model_dir: Path, config: ModelConfig, llama_config) -> Check:
    """The release checkpoint against what `NextGPT.from_pretrained` builds, on meta."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from models.checkpoint import release_targets
    from models.llm import LanguageModel, LoraSettings
    from models.nextgpt import build_projections

    folder = model_dir / config.components.nextgpt
    check = Check("checkpoint", f"{config.components.nextgpt}/")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        check.problems.append(f"the release tokenizer in {folder} does not load: {str(err).splitlines()[0]}")
        return check
    path = folder / CHECKPOINT_FILE
    try:
        found = read_header(path)
    except (FileNotFoundError, TensorFileError) as err:
        check.problems.append(f"{CHECKPOINT_FILE}: {err}" if isinstance(err, TensorFileError)
                              else f"{path} is missing (run `nextgpt weights convert checkpoint`)")
        return check
    lora = LoraSettings(r=config.lora.r, alpha=config.lora.alpha, dropout=config.lora.dropout)
    try:
        with torch.device("meta"):
            llm = LanguageModel.from_base(tokenizer, LlamaForCausalLM(llama_config), config.media_dim, lora)
            projections = build_projections(config, llama_config.hidden_size)
    except ValueError as err:  # the tokenizer lacks NExT-GPT's tokens
        check.problems.append(f"tokenizer: {err}")
        return check
    check.rows.append(Row("tokenizer", type(tokenizer).__name__, str(len(tokenizer)), status="ok (vocabulary)"))
    compare_part(check, CHECKPOINT_FILE, "LoRA + embeddings + projections", release_targets(llm, dict(projections)), found)
    return check


def check_encoder(model_dir: Path, config: ModelConfig) -> Check:
    from models.encoder import build_imagebind

    folder = model_dir / config.components.encoder
    check = Check("encoder", f"{config.components.encoder}/")
    try:
        kwargs = json.loads((folder / ENCODER_CONFIG).read_text())
        found = read_header(folder / ENCODER_WEIGHTS)
    except (FileNotFoundError, TensorFileError) as err:
        check.problems.append(str(err) if isinstance(err, TensorFileError) else f"{err.filename} is missing")
        return check
    if kwargs.get("out_embed_dim", 1024) != config.media_dim:
        check.problems.append(f"ImageBind embeds to {kwargs.get('out_embed_dim', 1024)} but nextgpt.json's "
                              f"media_dim is {config.media_dim}")
    model = build_imagebind(kwargs, device="meta")
    tower = lambda k: k.split(".")[1] if k.count(".") else ""
    used = {k: v for k, v in found.items() if tower(k) in KEPT_TOWERS or tower(k) not in IMAGEBIND_TOWERS}
    compare_part(check, ENCODER_WEIGHTS, f"ImageBindModel ({'+'.join(KEPT_TOWERS)})", model.state_dict(), used)
    unused = len(found) - len(used)
    if unused:
        check.rows.append(Row("other towers", "-", str(unused), status="ignored (not used by NExT-GPT)"))
    return check


# --- decoders -------------------------------------------------------------------------------------
def _class(library: str, name: str):
    try:
        module = importlib.import_module(library)
    except ImportError:  # pipeline-local classes, e.g. ["stable_diffusion", "StableDiffusionSafetyChecker"]
        module = importlib.import_module(f"diffusers.pipelines.{library}")
    return getattr(module, name)


def _meta_model(cls, folder: Path):
    """A diffusers or transformers model built from its config on meta, or None for other classes."""
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    if issubclass(cls, ModelMixin):
        from accelerate import init_empty_weights

        with init_empty_weights():
            return cls.from_config(cls.load_config(str(folder)))
    if issubclass(cls, PreTrainedModel):
        with torch.device("meta"):
            return cls(cls.config_class.from_pretrained(str(folder)))
    return None


def check_component(check: Check, folder: Path, name: str, cls) -> None:
    model = _meta_model(cls, folder)
    if model is None:  # tokenizer, scheduler, feature extractor: loading them is the check
        try:
            cls.from_pretrained(str(folder))
            check.rows.append(Row(name, cls.__name__, status="ok (loads)"))
        except Exception as err:  # noqa: BLE001 - whatever breaks the load is the finding, not a crash
            check.rows.append(Row(name, cls.__name__, status="does not load"))
            check.problems.append(f"{name}: {str(err).splitlines()[0]}")
        return
    found = dict(_weights(check, folder).tensors)
    if hasattr(model, "_fix_state_dict_keys_on_load"):  # diffusers renames old attention keys on load
        found = model._fix_state_dict_keys_on_load(found)
    compare_part(check, name, cls.__name__, model.state_dict(), found, model, shared_groups(model))


def conditioning_dim(folder: Path, modality: str) -> int | None:
    unet = json.loads((folder / "unet" / "config.json").read_text())
    key = "projection_class_embeddings_input_dim" if modality == "audio" else "cross_attention_dim"
    return unet.get(key)


def check_decoder(model_dir: Path, config: ModelConfig, modality: str) -> Check:
    folder = model_dir / getattr(config.components, modality)
    check = Check(f"{modality} decoder", f"{folder.name}/")
    try:
        model_index = json.loads((folder / "model_index.json").read_text())
    except FileNotFoundError:
        check.problems.append(f"{folder}/model_index.json is missing")
        return check
    for name, value in sorted(model_index.items()):
        if name.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        if name in SKIPPED_COMPONENTS:
            check.rows.append(Row(name, value[1], status=f"skipped: {SKIPPED_COMPONENTS[name]}"))
        elif not (folder / name).is_dir():
            check.rows.append(Row(name, value[1], status="missing"))
            check.problems.append(f"{name}/ is missing from {folder}")
        else:
            try:
                cls = _class(*value)
            except (ImportError, AttributeError) as err:
                check.problems.append(f"{name}: class {value[1]} from {value[0]} is not available ({err})")
                continue
            check_component(check, folder / name, name, cls)
    if (folder / "unet" / "config.json").is_file():
        want, got = config.projections[modality].out_dim, conditioning_dim(folder, modality)
        if got != want:
            check.problems.append(f"the {modality} projection writes {want}-d conditioning, the UNet takes {got}")
    return check


def verify(model_dir: Path, only=GROUPS) -> list[Check]:
    """Every component of `model_dir` (decoders limited to `only`), one Check each."""
    model_dir = Path(model_dir)
    check, config = check_config(model_dir)
    if config is None:
        return [check]
    checks = [check]
    if "llm" in only:
        llm_check, llama_config = check_llm(model_dir, config)
        checks.append(llm_check)
        if llama_config is not None:
            checks.append(check_checkpoint(model_dir, config, llama_config))
        checks.append(check_encoder(model_dir, config))
    checks += [check_decoder(model_dir, config, m) for m in DECODER_GROUPS if m in only]
    return checks


def render(checks: list[Check]) -> str:
    """A table per component, its problems under it, and a verdict line."""
    lines = []
    for check in checks:
        lines.append(f"{check.component} ({check.path}): {'OK' if check.ok else 'FAILED'}")
        rows = [("part", "class", "tensors", "parameters", "status")] + \
               [(r.part, r.klass, r.tensors, r.params, r.status) for r in check.rows]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
        lines += [f"  ! {p}" for p in check.problems]
        lines.append("")
    bad = [c.component for c in checks if not c.ok]
    lines.append("verify: every component matches its architecture" if not bad
                 else f"verify: FAILED ({', '.join(bad)})")
    return "\n".join(lines)
