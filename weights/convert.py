"""Pickles in, safetensors out: the server itself never unpickles anything.

Pickles are opened with `torch.load(weights_only=True)` (tensors and plain containers only, no
code) and memory-mapped where their format allows; safetensors files are written one tensor at a
time (the header is computed from shapes first), so converting a file never holds it whole.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch

from models.encoder import CONFIG_FILE as ENCODER_CONFIG, KEPT_TOWERS, WEIGHTS_FILE as ENCODER_WEIGHTS

from .select import canonical_name

DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
               torch.uint8: "U8", torch.bool: "BOOL"}
# Wrappers training scripts put around a state dict (DeepSpeed, Lightning, plain `{"model": ...}`).
WRAPPER_KEYS = ("module", "model", "state_dict")


class ConvertError(ValueError):
    pass


def stream_safetensors(path: Path, specs: list[tuple[str, tuple, torch.dtype]],
                       tensor_of: Callable[[str], torch.Tensor], metadata: dict | None = None) -> None:
    """Write a safetensors file tensor by tensor: `specs` fix the header, `tensor_of(key)` gives data."""
    header, offset = {"__metadata__": {"format": "pt", **(metadata or {})}}, 0
    for key, shape, dtype in specs:
        nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        header[key] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data must start 8-byte aligned
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        out.write(len(raw).to_bytes(8, "little"))
        out.write(raw)
        for key, shape, dtype in specs:
            tensor = tensor_of(key).detach()
            if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
                raise ConvertError(f"{key}: got {tensor.dtype} {list(tensor.shape)}, planned {dtype} {list(shape)}")
            out.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)
    tmp.replace(path)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    specs = [(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]
    stream_safetensors(path, specs, tensors.__getitem__, metadata)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict (unwrapped from a training wrapper), tensors only."""
    import pickle

    from .delta import load_pickle

    try:
        obj = load_pickle(Path(path))
    except pickle.UnpicklingError as err:  # weights_only refused an object that is not plain data
        raise ConvertError(f"{path} holds more than tensors and was not unpickled (weights_only): "
                           f"{str(err).splitlines()[0]}") from None
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = [obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)]
        if not inner:
            raise ConvertError(f"{path} holds no state dict (top-level keys: {sorted(obj)[:8]})")
        obj = inner[0]
    if not isinstance(obj, dict):
        raise ConvertError(f"{path} holds a {type(obj).__name__}, not a state dict")
    skipped = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if skipped:
        raise ConvertError(f"{path}: entries that are not tensors: {skipped[:5]}")
    return obj


def convert_checkpoint(src: Path, dest: Path) -> Path:
    """The release's `pytorch_model.pt` -> `pytorch_model.safetensors`, every key and dtype kept."""
    save_tensors(load_state_dict(src), dest, {"source": Path(src).name})
    return Path(dest)


def convert_imagebind(src: Path, out_dir: Path, kwargs: dict) -> Path:
    """`imagebind_huge.pth` -> `model.safetensors` (the towers NExT-GPT uses) + `config.json`."""
    state = load_state_dict(src)
    kept = {k: v for k, v in state.items() if len(k.split(".")) > 1 and k.split(".")[1] in KEPT_TOWERS}
    if not kept:
        raise ConvertError(f"{src} has no vision or audio tower: is it ImageBind? (keys like {sorted(state)[:3]})")
    out_dir = Path(out_dir)
    save_tensors(kept, out_dir / ENCODER_WEIGHTS, {"source": Path(src).name})
    (out_dir / ENCODER_CONFIG).write_text(json.dumps(kwargs, indent=2))
    return out_dir


def _safetensors_name(pickle_name: str) -> str:
    """transformers reads `model*.safetensors` where it wrote `pytorch_model*.bin`; diffusers keeps its stem."""
    name = pickle_name.removesuffix(".bin") + ".safetensors"
    return name.removeprefix("pytorch_") if name.startswith("pytorch_model") else name


def canonicalize_variants(folder: Path) -> None:
    """Rename fp16 variant files to the names loaders read without `variant=` (indexes rewritten)."""
    for path in sorted(Path(folder).iterdir()):
        target = path.with_name(canonical_name(path.name))
        if target == path:
            continue
        if path.name.endswith(".json") and ".index." in path.name:
            index = json.loads(path.read_text())
            index["weight_map"] = {k: canonical_name(v) for k, v in index["weight_map"].items()}
            target.write_text(json.dumps(index, indent=2))
            path.unlink()
        else:
            path.replace(target)


def convert_bin_folder(folder: Path) -> list[Path]:
    """Every pickled weight file of one component folder -> safetensors (and its index); pickles removed."""
    folder = Path(folder)
    written = []
    for path in sorted(folder.glob("*.bin")):
        dest = folder / _safetensors_name(path.name)
        save_tensors(load_state_dict(path), dest)
        written.append(dest)
    for index in folder.glob("*.bin.index.json"):
        data = json.loads(index.read_text())
        data["weight_map"] = {k: _safetensors_name(v) for k, v in data["weight_map"].items()}
        target = _safetensors_name(index.name.removesuffix(".index.json")) + ".index.json"
        (folder / target).write_text(json.dumps(data, indent=2))
        index.unlink()
    for path in sorted(folder.glob("*.bin")):
        path.unlink()  # only once every conversion succeeded
    return written
