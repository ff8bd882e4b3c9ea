"""verify catches what a broken download or conversion leaves: a missing shard, a truncated file,
a wrong shape, an extra key, a missing component; and says so with a non-zero exit."""
import json
import shutil

import pytest
from safetensors.torch import load_file

from weights.convert import save_tensors
from weights.verify import verify


@pytest.fixture()
def model(tiny_dir, tmp_path):
    return shutil.copytree(tiny_dir, tmp_path / "model")


def problems(model, only):
    return [p for check in verify(model, only) for p in check.problems]


def shard_llm(model):
    """The tiny LLM as two shards and an index, as the delta step writes the real one."""
    state = load_file(str(model / "llm" / "model.safetensors"))
    keys = sorted(state)
    weight_map = {}
    for i, half in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:]), 1):
        name = f"model-{i:05d}-of-00002.safetensors"
        save_tensors({k: state[k] for k in half}, model / "llm" / name)
        weight_map.update({k: name for k in half})
    (model / "llm" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (model / "llm" / "model.safetensors").unlink()


def test_intact_copy_passes(model):
    shard_llm(model)
    assert problems(model, ("llm",)) == []


def test_missing_shard(model):
    shard_llm(model)
    (model / "llm" / "model-00002-of-00002.safetensors").unlink()
    found = problems(model, ("llm",))
    assert any("missing shard model-00002-of-00002.safetensors" in p for p in found)
    assert any("missing" in p and "model.layers" in p for p in found)  # and the keys it held


def test_truncated_file(model):
    path = model / "image_decoder" / "unet" / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4096])
    assert any("truncated" in p and "unet" in p for p in problems(model, ("image",)))


def test_wrong_shape(model):
    path = model / "imagebind" / "model.safetensors"
    state = load_file(str(path))
    key = "modality_heads.vision.2.weight"
    state[key] = state[key][:, :-1].contiguous()
    save_tensors(state, path)
    assert any(f"wrong shape {key}" in p for p in problems(model, ("llm",)))


def test_extra_key(model):
    path = model / "audio_decoder" / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    state["decoder.extra.weight"] = state["decoder.conv_in.weight"]
    save_tensors(state, path)
    assert any("unexpected" in p and "decoder.extra.weight" in p for p in problems(model, ("audio",)))


def test_missing_component_fails_the_cli(model, capsys):
    from weights.cli import main

    shutil.rmtree(model / "video_decoder" / "unet")
    assert main(["weights", "verify", str(model), "--only", "video"]) == 1
    out = capsys.readouterr().out
    assert "video decoder (video_decoder/): FAILED" in out and "unet/ is missing" in out
