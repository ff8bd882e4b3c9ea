"""Weight files read without loading a tensor: safetensors headers, shard indexes, a folder's weights.

`verify`, `list` and the converters share these, so "what a folder holds" means one thing everywhere.
A header-only read would pass a truncated download, so `read_header` also checks that the file
holds every byte its header promises.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
# Stems a loader looks for: transformers writes `model`, diffusers `diffusion_pytorch_model`.
SAFETENSORS_STEMS = ("model", "diffusion_pytorch_model")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


class TensorFileError(ValueError):
    """A weight file that is not what it claims to be (truncated, not safetensors, inconsistent)."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Key -> dtype and shape of one safetensors file, checking the file is complete."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise TensorFileError(f"{path}: {size} bytes, too short to be a safetensors file (truncated?)")
        (length,) = struct.unpack("<Q", raw)
        if length > min(size - 8, MAX_HEADER):
            raise TensorFileError(f"{path}: header of {length} bytes does not fit in a {size}-byte file "
                                  "(truncated, or not a safetensors file)")
        try:
            header = json.loads(f.read(length))
        except ValueError as err:
            raise TensorFileError(f"{path}: unreadable safetensors header ({err})") from None
    header.pop("__metadata__", None)
    out, end = {}, 0
    for key, entry in header.items():
        info = TensorInfo(entry["dtype"], tuple(entry["shape"]))
        start, stop = entry["data_offsets"]
        if stop - start != info.numel * DTYPE_BYTES.get(info.dtype, 0):
            raise TensorFileError(f"{path}: tensor {key} spans {stop - start} bytes, its shape needs "
                                  f"{info.numel * DTYPE_BYTES.get(info.dtype, 0)}")
        out[key] = info
        end = max(end, stop)
    if 8 + length + end != size:
        raise TensorFileError(f"{path}: {size} bytes on disk but its header describes {8 + length + end}: "
                              "the file is truncated (an interrupted copy or download?)")
    return out


@dataclass
class FolderWeights:
    """The safetensors weights a loader would read from one folder."""

    files: list[Path] = field(default_factory=list)  # shards (or the single file), present or not
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    @property
    def nbytes(self) -> int:
        return sum(t.numel * DTYPE_BYTES.get(t.dtype, 0) for t in self.tensors.values())

    def dtypes(self) -> list[str]:
        return sorted({t.dtype for t in self.tensors.values()})


def _from_index(index: Path, weights: FolderWeights) -> None:
    weight_map: dict[str, str] = json.loads(index.read_text()).get("weight_map", {})
    shards = sorted(set(weight_map.values()))
    weights.files = [index.parent / s for s in shards]
    for shard in shards:
        path = index.parent / shard
        if not path.is_file():
            weights.problems.append(f"missing shard {shard} (named by {index.name})")
            continue
        try:
            found = read_header(path)
        except TensorFileError as err:
            weights.problems.append(str(err))
            continue
        claimed = {k for k, v in weight_map.items() if v == shard}
        if claimed - set(found):
            weights.problems.append(f"{shard} lacks {len(claimed - set(found))} tensors its index places there, "
                                    f"e.g. {sorted(claimed - set(found))[0]}")
        weights.tensors.update(found)


def folder_weights(folder: Path) -> FolderWeights:
    """Find and read the folder's safetensors (single file or index + shards), collecting problems."""
    folder = Path(folder)
    weights = FolderWeights()
    for stem in SAFETENSORS_STEMS:
        index = folder / f"{stem}.safetensors.index.json"
        single = folder / f"{stem}.safetensors"
        if index.is_file():
            _from_index(index, weights)
            return weights
        if single.is_file():
            weights.files = [single]
            try:
                weights.tensors = read_header(single)
            except TensorFileError as err:
                weights.problems.append(str(err))
            return weights
    pickles = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        weights.problems.append(f"only pickled weights ({', '.join(pickles)}): "
                                "convert them with `nextgpt weights convert bin`")
    else:
        weights.problems.append(f"no weights in {folder} (expected {SAFETENSORS_STEMS[0]}.safetensors or "
                                f"{SAFETENSORS_STEMS[1]}.safetensors, or a shard index)")
    return weights
