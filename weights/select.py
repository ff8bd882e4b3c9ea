"""Which files of a hub repository the server needs: configs, tokenizers and ONE copy of each
component's weights, preferring fp16 safetensors.

Hub repositories often hold the same weights several times (fp32 and fp16, safetensors and
pickles, a single-file checkpoint at the root, Flax, ONNX): fetching only the needed copy saves
most of the download. Pure functions over the repository's file listing.
"""
from __future__ import annotations

import re
from pathlib import PurePosixPath

# Small files a loader reads: configs, tokenizer vocabularies and merges, sentencepiece models.
CONFIG_SUFFIXES = (".json", ".txt", ".model")
WEIGHT_STEMS = ("model", "diffusion_pytorch_model", "pytorch_model")
SHARD = r"-\d{5}-of-\d{5}"


def _candidates(stem: str) -> list[tuple[str, str]]:
    """(index name or "", regex of the weight files) in order of preference."""
    s = re.escape(stem)
    return [
        ("", rf"{s}\.fp16\.safetensors"),
        (f"{stem}.safetensors.index.fp16.json", rf"{s}\.fp16{SHARD}\.safetensors"),
        ("", rf"{s}\.safetensors"),
        (f"{stem}.safetensors.index.json", rf"{s}{SHARD}\.safetensors"),
        ("", rf"{s}\.fp16\.bin"),
        ("", rf"{s}\.bin"),
        (f"{stem}.bin.index.json", rf"{s}{SHARD}\.bin"),
    ]


def _is_weight_index(name: str) -> bool:
    return ".index." in name and name.split(".")[0] in WEIGHT_STEMS


def pick_weights(names: list[str]) -> list[str]:
    """Of the file names in ONE folder, the weight files a loader needs (empty if none).

    Order of preference: fp16 safetensors, safetensors, fp16 pickle, pickle; a shard index
    counts only with its shards present.
    """
    present = set(names)
    best: tuple[int, list[str]] | None = None
    for stem in WEIGHT_STEMS:
        for rank, (index, pattern) in enumerate(_candidates(stem)):
            files = sorted(n for n in names if re.fullmatch(pattern, n))
            if not files or (index and index not in present):
                continue
            chosen = files + ([index] if index else [])
            if best is None or rank < best[0]:
                best = (rank, chosen)
            break  # the best candidate of this stem is found
    return best[1] if best else []


def _by_folder(paths: list[str]) -> dict[str, list[str]]:
    folders: dict[str, list[str]] = {}
    for path in paths:
        p = PurePosixPath(path)
        folders.setdefault("" if str(p.parent) == "." else str(p.parent), []).append(p.name)
    return folders


def select_folder(paths: list[str], folder: str) -> list[str]:
    """Config files and the chosen weights of one folder of the repository."""
    names = _by_folder(paths).get(folder, [])
    configs = [n for n in names if n.endswith(CONFIG_SUFFIXES) and not _is_weight_index(n)]
    prefix = f"{folder}/" if folder else ""
    return [prefix + n for n in sorted(configs) + pick_weights(names)]


TRANSFORMERS_CONFIGS = ("config.json", "generation_config.json")


def select_transformers(paths: list[str]) -> list[str]:
    """A transformers model at the repository root: its configs and weights (its tokenizer is not
    needed: NExT-GPT ships its own)."""
    names = _by_folder(paths).get("", [])
    return [n for n in TRANSFORMERS_CONFIGS if n in names] + pick_weights(names)


def select_diffusers(paths: list[str], model_index: dict, skip: tuple[str, ...] = ()) -> list[str]:
    """model_index.json and, for every component the pipeline loads, its folder's files."""
    chosen = ["model_index.json"]
    for name, value in model_index.items():
        if name.startswith("_") or name in skip or not isinstance(value, list) or value[0] is None:
            continue
        chosen += select_folder(paths, name)
    return chosen


def find_file(paths: list[str], name: str) -> str | None:
    """`name` at the root, else the one file of that name anywhere in the repository."""
    if name in paths:
        return name
    matches = [p for p in paths if PurePosixPath(p).name == name]
    return matches[0] if len(matches) == 1 else None


def canonical_name(name: str) -> str:
    """The name a loader reads without `variant=`: `x.fp16.safetensors` -> `x.safetensors`,
    `x.fp16-00001-of-00002.safetensors` -> `x-00001-of-00002.safetensors`, and so for indexes."""
    name = re.sub(r"\.fp16(?=(-\d{5}-of-\d{5})?\.(safetensors|bin)$)", "", name)
    return name.replace(".index.fp16.json", ".index.json")
