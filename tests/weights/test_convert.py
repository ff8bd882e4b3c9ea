"""Pickles to safetensors: the delta tensor by tensor, the release checkpoint, ImageBind, `.bin` folders."""
import io
import pathlib
import json

import pytest
import torch
from safetensors.torch import load_file

from tests.weights.release_files import llama_repos, pickled
from weights.convert import ConvertError, convert_bin_folder, convert_checkpoint, convert_imagebind
from weights.delta import DeltaError, apply_delta
from weights.tensorfiles import TensorFileError, read_header


def write(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_delta_is_applied_one_shard_at_a_time(tiny_dir, tmp_path, monkeypatch):
    import weights.delta as delta_module

    base, delta = llama_repos(tiny_dir)
    loads = []
    real_load = delta_module.load_pickle
    monkeypatch.setattr(delta_module, "load_pickle", lambda p: loads.append(p.name) or real_load(p))
    out = apply_delta(write(tmp_path / "base", base), write(tmp_path / "delta", delta), tmp_path / "llm",
                      max_shard_bytes=100_000, progress=False)
    assert loads == ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]  # each once
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shard_names = sorted(set(index["weight_map"].values()))
    assert len(shard_names) > 2 and all((out / s).is_file() for s in shard_names)  # bounded output shards
    merged = {}
    for name in shard_names:
        merged.update(load_file(str(out / name)))
    vicuna = load_file(str(tiny_dir / "llm" / "model.safetensors"))
    assert merged.keys() == vicuna.keys()
    assert all(torch.allclose(merged[k], vicuna[k], atol=1e-6) for k in vicuna)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == vicuna["lm_head.weight"].shape[0]


def test_delta_that_does_not_fit_is_refused(tiny_dir, tmp_path):
    base, delta = llama_repos(tiny_dir)
    state = torch.load(io.BytesIO(delta["pytorch_model-00002-of-00002.bin"]), weights_only=True)
    victim = next(k for k in state if k.endswith("mlp.up_proj.weight"))
    state[victim] = state[victim][:, :3]
    delta["pytorch_model-00002-of-00002.bin"] = pickled(state)
    with pytest.raises(DeltaError, match=f"{victim}: base .* cannot make"):
        apply_delta(write(tmp_path / "base", base), write(tmp_path / "delta", delta), tmp_path / "llm", progress=False)
    assert not (tmp_path / "llm").exists()  # nothing half-written is left


def test_release_checkpoint_conversion_unwraps_and_keeps_dtypes(tiny_dir, tmp_path):
    state = load_file(str(tiny_dir / "nextgpt" / "pytorch_model.safetensors"))
    (tmp_path / "pytorch_model.pt").write_bytes(pickled({"module": state}))  # a DeepSpeed-style wrapper
    convert_checkpoint(tmp_path / "pytorch_model.pt", tmp_path / "out.safetensors")
    out = load_file(str(tmp_path / "out.safetensors"))
    assert out.keys() == state.keys() and all(torch.equal(out[k], state[k]) for k in state)
    assert {v.dtype for v in out.values()} == {torch.float16}


class Payload:
    """Unpickling this would create a file: what a malicious checkpoint would do, less harmfully."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


def test_pickled_code_is_never_run(tmp_path):
    (tmp_path / "evil.pt").write_bytes(pickled({"w": torch.zeros(2), "x": Payload(tmp_path / "ran")}))
    with pytest.raises(ConvertError, match="holds more than tensors and was not unpickled"):
        convert_checkpoint(tmp_path / "evil.pt", tmp_path / "out.safetensors")
    assert not (tmp_path / "ran").exists()


def test_imagebind_conversion_keeps_the_towers_nextgpt_uses(tiny_dir, tmp_path):
    from weights.tiny import TINY_IMAGEBIND

    state = load_file(str(tiny_dir / "imagebind" / "model.safetensors"))
    (tmp_path / "imagebind_huge.pth").write_bytes(pickled(state))
    out = convert_imagebind(tmp_path / "imagebind_huge.pth", tmp_path / "imagebind", TINY_IMAGEBIND)
    kept = read_header(out / "model.safetensors")
    assert {k.split(".")[1] for k in kept} == {"vision", "audio"}
    assert json.loads((out / "config.json").read_text()) == TINY_IMAGEBIND


def test_bin_folder_gets_the_names_loaders_read(tmp_path):
    state = {"a": torch.ones(2), "b": torch.zeros(3)}
    write(tmp_path / "te", {"pytorch_model.bin": pickled(state)})
    write(tmp_path / "unet", {"diffusion_pytorch_model-00001-of-00001.bin": pickled(state),
                              "diffusion_pytorch_model.bin.index.json": json.dumps(
                                  {"weight_map": {"a": "diffusion_pytorch_model-00001-of-00001.bin",
                                                  "b": "diffusion_pytorch_model-00001-of-00001.bin"}}).encode()})
    convert_bin_folder(tmp_path / "te")
    convert_bin_folder(tmp_path / "unet")
    assert sorted(p.name for p in (tmp_path / "te").iterdir()) == ["model.safetensors"]
    index = json.loads((tmp_path / "unet" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"diffusion_pytorch_model-00001-of-00001.safetensors"}
    assert not list((tmp_path / "unet").glob("*.bin*"))


def test_truncated_safetensors_is_detected(tiny_dir, tmp_path):
    data = (tiny_dir / "llm" / "model.safetensors").read_bytes()
    for cut, phrase in ((len(data) - 10, "truncated"), (200, "does not fit"), (4, "too short")):
        (tmp_path / "x.safetensors").write_bytes(data[:cut])
        with pytest.raises(TensorFileError, match=phrase):
            read_header(tmp_path / "x.safetensors")
