"""Vicuna-7B v0 = LLaMA-7B + `lmsys/vicuna-7b-delta-v0`, applied one tensor at a time.

Neither model is ever whole in memory: tensors are read one by one (safetensors directly,
pickled `.bin` shards through a memory map, one shard at a time), summed, and streamed into
safetensors shards of at most `max_shard_bytes`; peak memory is a few tensors (the largest,
embed_tokens, is 0.26 GB at fp16), whatever the size of the model.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from .convert import stream_safetensors

DEFAULT_SHARD_BYTES = 2 * 1024**3
VOCAB_KEYS = ("model.embed_tokens.weight", "lm_head.weight")


class DeltaError(ValueError):
    pass


def load_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict, restricted to tensors (weights_only) and memory-mapped when its format allows."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the pre-zip pickle format cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


class TensorSource:
    """The tensors of a checkpoint folder, read one at a time; at most one pickle shard is held."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.file_of: dict[str, Path] = {}
        self._loaded: tuple[Path, dict] | None = None
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index = self.folder / index_name
            if index.is_file():
                weight_map = json.loads(index.read_text())["weight_map"]
                self.file_of = {k: self.folder / v for k, v in weight_map.items()}
                break
        else:
            for name in ("model.safetensors", "pytorch_model.bin"):
                if (self.folder / name).is_file():
                    self.file_of = {k: self.folder / name for k in self._keys_of(self.folder / name)}
                    break
        if not self.file_of:
            raise DeltaError(f"no LLaMA weights in {self.folder} (model.safetensors, pytorch_model.bin or a shard index)")
        missing = sorted({p.name for p in self.file_of.values() if not p.is_file()})
        if missing:
            raise DeltaError(f"{self.folder} lacks {', '.join(missing)}: the download is incomplete")

    def _keys_of(self, path: Path) -> list[str]:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                return list(f.keys())
        return list(self._shard(path))

    def _shard(self, path: Path) -> dict:
        if self._loaded is None or self._loaded[0] != path:
            self._loaded = None  # drop the previous shard before mapping the next
            self._loaded = (path, load_pickle(path))
        return self._loaded[1]

    def get(self, key: str) -> torch.Tensor:
        path = self.file_of[key]
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor(key)
        return self._shard(path)[key]

    def order(self, keys) -> list[str]:
        """`keys` grouped by file, so each pickle shard is loaded once."""
        return sorted(keys, key=lambda k: (str(self.file_of[k]), k))


def target_shapes(config: dict) -> dict[str, tuple]:
    """Key -> shape of the LLaMA architecture of `config`, built on the meta device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig.from_dict(config))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def add(key: str, base: torch.Tensor, delta: torch.Tensor, want: tuple, dtype) -> torch.Tensor:
    if tuple(delta.shape) != want and key in VOCAB_KEYS and delta.shape[1:] == base.shape[1:] \
            and delta.shape[0] > base.shape[0]:
        # v0's delta adds a [PAD] row. NExT-GPT's tokenizer has no such token (its own tokens start at
        # 32000) and its checkpoint replaces embed_tokens and lm_head whole, so the row is dropped.
        delta = delta[: base.shape[0]]
    if tuple(base.shape) != want or tuple(delta.shape) != want:
        raise DeltaError(f"{key}: base {list(base.shape)} + delta {list(delta.shape)} cannot make {list(want)}")
    return (base.float() + delta.float()).to(dtype)


def plan_shards(shapes: dict[str, tuple], order: list[str], itemsize: int, max_bytes: int) -> list[list[str]]:
    shards, current, size = [], [], 0
    for key in order:
        nbytes = itemsize * int(torch.Size(shapes[key]).numel())
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(key)
        size += nbytes
    return shards + [current] if current else shards


def check_keys(base: TensorSource, delta: TensorSource, shapes: dict) -> None:
    # Old checkpoints carry rotary inv_freq buffers; current transformers recomputes them.
    extra = lambda src: {k for k in src.file_of if k not in shapes and not k.endswith("rotary_emb.inv_freq")}
    for name, src in (("LLaMA base", base), ("Vicuna delta", delta)):
        missing = sorted(set(shapes) - set(src.file_of))
        if missing or extra(src):
            raise DeltaError(f"the {name} in {src.folder} does not match LLaMA's architecture: "
                             f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra(src))} unexpected "
                             f"(e.g. {sorted(extra(src))[:3]})")


def apply_delta(base_dir: Path, delta_dir: Path, out_dir: Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                progress: bool = True) -> Path:
    """Write base + delta to `out_dir` (config.json, safetensors shards, index), atomically."""
    base, delta = TensorSource(base_dir), TensorSource(delta_dir)
    config = json.loads((Path(base_dir) / "config.json").read_text())
    shapes = target_shapes(config)
    check_keys(base, delta, shapes)
    order = delta.order(shapes)
    dtype = delta.get(order[0]).dtype  # the delta's precision (fp16 for the release)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    shards = plan_shards(shapes, order, itemsize, max_shard_bytes)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        weight_map = {}
        bar = tqdm(total=len(order), desc="applying the Vicuna delta", unit="tensor", disable=not progress)

        def merged(key: str) -> torch.Tensor:
            bar.update()
            return add(key, base.get(key), delta.get(key), shapes[key], dtype)

        for i, keys in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            stream_safetensors(tmp / name, [(k, shapes[k], dtype) for k in keys], merged)
            weight_map.update({k: name for k in keys})
        bar.close()
        total = sum(itemsize * int(torch.Size(shapes[k]).numel()) for k in order)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        config["dtype"] = str(dtype).removeprefix("torch.")
        config.pop("torch_dtype", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.replace(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
