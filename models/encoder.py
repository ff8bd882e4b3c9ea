"""ImageBind as NExT-GPT uses it: one model, vision tower for images and video, audio tower for
sound; the final pooled, L2-normalised 1024-d embedding per item (768/32 at smaller sizes).

Only the towers NExT-GPT uses are built and loaded (vision, audio); the text, depth, thermal and
IMU towers of the published checkpoint are dropped before any memory is spent on them.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
import types
from collections import OrderedDict
from pathlib import Path
from threading import Lock

import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file


# The towers NExT-GPT feeds: image and video through "vision", sound through "audio".
TOWER_OF = {"image": "vision", "video": "vision", "audio": "audio"}
KEPT_TOWERS = ("vision", "audio")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

# ImageBind-huge: what `imagebind_huge()` builds (the keyword arguments of ImageBindModel).
IMAGEBIND_HUGE = dict(
    vision_embed_dim=1280, vision_num_blocks=32, vision_num_heads=16,
    text_embed_dim=1024, text_num_blocks=24, text_num_heads=16,
    out_embed_dim=1024, audio_drop_path=0.1, imu_drop_path=0.7,
)


def imagebind_model_module():
    """Import `imagebind.models.imagebind_model` without running `imagebind/__init__.py`.

    The package's `__init__` imports its data loaders (torchaudio, pytorchvideo), which the model
    code never needs and which do not import on current torch; we register a bare package instead.
    """
    if "imagebind.models.imagebind_model" in sys.modules:
        return sys.modules["imagebind.models.imagebind_model"]
    if "imagebind" not in sys.modules:
        spec = importlib.util.find_spec("imagebind")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("imagebind-unofficial is not installed (scripts/install.sh installs it)")
        package = types.ModuleType("imagebind")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec  # metadata only: the package's __init__ is never executed
        sys.modules["imagebind"] = package
    return importlib.import_module("imagebind.models.imagebind_model")


def build_imagebind(kwargs: dict, device: str | torch.device = "cpu") -> torch.nn.Module:
    """An ImageBindModel with only the vision and audio towers, on `device`, uninitialised."""
    module = imagebind_model_module()
    with init_empty_weights():  # parameters on meta; ImageBind's own init code needs real scalars
        model = module.ImageBindModel(**kwargs)
    for container in (model.modality_preprocessors, model.modality_trunks,
                      model.modality_heads, model.modality_postprocessors):
        for name in list(container.keys()):
            if name not in KEPT_TOWERS:
                del container[name]
    return model.to_empty(device=device).eval()


def content_key(modality: str, data: bytes) -> str:
    return f"{modality}:{hashlib.sha256(data).hexdigest()}"


class ImageBindEncoder:
    """Encodes media items to ImageBind embeddings, caching them by content hash."""

    def __init__(self, model: torch.nn.Module, device="cpu", dtype=torch.float32, cache_size: int = 512):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device = torch.device(device)
        self.dtype = dtype
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.cache_size = cache_size
        self.cache_hits = 0
        self.encoded = 0
        self._lock = Lock()

    @classmethod
    def from_pretrained(cls, path: str | Path, device="cpu", dtype=torch.float32) -> "ImageBindEncoder":
        path = Path(path)
        kwargs = json.loads((path / CONFIG_FILE).read_text())
        model = build_imagebind(kwargs, device="cpu")
        state = load_file(str(path / WEIGHTS_FILE))
        kept = {k: v for k, v in state.items() if k.split(".")[1] in KEPT_TOWERS}
        model.load_state_dict(kept, strict=True)
        return cls(model, device=device, dtype=dtype)

    @property
    def embed_dim(self) -> int:
        head = self.model.modality_heads["vision"]
        return [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1].out_features

    def to_tensor(self, modality: str, value) -> torch.Tensor:
        from . import preprocess  # numpy/PIL/PyAV work: kept out of the import of the model code

        if modality == "image":
            return preprocess.image_to_tensor(value)  # (3, 224, 224)
        if modality == "audio":
            return preprocess.audio_to_tensor(value)  # (3, 1, 128, 204)
        if modality == "video":
            return preprocess.video_to_tensor(value)  # (15, 3, 2, 224, 224)
        raise ValueError(f"unknown modality {modality!r}")

    @torch.inference_mode()
    def encode(self, modality: str, value, key: str | None = None) -> torch.Tensor:
        """One item -> (D,) embedding; `key` (content hash) makes later calls a cache hit."""
        if key is not None:
            with self._lock:
                if key in self.cache:
                    self.cache.move_to_end(key)
                    self.cache_hits += 1
                    return self.cache[key]
        x = self.to_tensor(modality, value).unsqueeze(0).to(self.device, self.dtype)
        tower = TOWER_OF[modality]
        emb = self.model({tower: x})[tower][0]  # (D,)
        self.encoded += 1
        if key is not None:
            with self._lock:
                self.cache[key] = emb
                while len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
        return emb
