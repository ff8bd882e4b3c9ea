"""NExT-GPT's three language stages, end to end, on the committed model's decoders and encoder.

`train-nano --decoders-from --encoder-from` at a hundredth of a percent of its steps: the stages
run in order, the model is assembled in the release layout and loads through the same code as the
committed model. A smoke run of what the unit tests of each stage's parts cannot show together.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from weights.nano import train
from weights.nano.train import DEFAULT_OUT

LANGUAGE_STAGES = ("align_input", "align_output", "instruct")
# what each language stage trains, by key prefix in nextgpt/pytorch_model.safetensors
TRAINED_PREFIXES = ("llama_proj.", "gen_text_hidden_fcs.", "gen_text_hidden_fcs_audio.",
                    "gen_text_hidden_fcs_video.", "llama_model.base_model.model.model.layers.")

pytestmark = pytest.mark.skipif(
    not (DEFAULT_OUT / "nextgpt.json").is_file(),
    reason=f"nano weights are not present at {DEFAULT_OUT} (train them with `nextgpt weights train-nano`)",
)


@pytest.fixture(scope="module")
def retrained(tmp_path_factory) -> Path:
    """A work dir whose language stages re-ran for a few steps on the committed model's other parts."""
    work = tmp_path_factory.mktemp("language-chain")
    train.run(work=work, out=work / "model", quick=0.002, threads=1, jobs=1,
              decoders_from=DEFAULT_OUT, encoder_from=DEFAULT_OUT, log=lambda s: None)
    return work


def _files(model_dir: Path) -> list[str]:
    return sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def tensors(retrained) -> dict[str, tuple[dict, dict]]:
    """Each safetensors file of the committed model -> (the re-trained model's tensors, the committed ones)."""
    return {name: (load_file(retrained / "model" / name), load_file(DEFAULT_OUT / name))
            for name in _files(DEFAULT_OUT) if name.endswith(".safetensors")}


def test_each_language_stage_trains_and_records_a_finite_loss(retrained):
    for stage in LANGUAGE_STAGES:
        done = json.loads((retrained / stage / "DONE.json").read_text())
        assert done["steps"] >= 1, stage
        assert math.isfinite(done["final_loss"]), f"{stage}: loss {done['final_loss']}"


def test_the_assembled_model_has_the_committed_models_layout_keys_and_shapes(retrained, tensors):
    assert _files(retrained / "model") == _files(DEFAULT_OUT)
    for name, (ours, committed) in tensors.items():
        assert ours.keys() == committed.keys(), name
        for key, tensor in committed.items():
            assert (ours[key].shape, ours[key].dtype) == (tensor.shape, tensor.dtype), f"{name}: {key}"


def test_only_the_language_stages_weights_are_new(tensors):
    for name, (ours, committed) in tensors.items():
        changed = {key for key, tensor in committed.items() if not torch.equal(ours[key], tensor)}
        if not name.startswith("nextgpt/"):  # decoders, towers, base LLM: taken as they are
            assert not changed, f"{name}: {sorted(changed)[:3]}"
            continue
        for prefix in TRAINED_PREFIXES:
            assert any(key.startswith(prefix) for key in changed), f"nothing under {prefix} was trained"


def test_the_assembled_model_loads_its_new_weights_and_answers_through_the_library(retrained, tensors):
    from models.generate import SamplingParams
    from models.nextgpt import NextGPT
    from models.types import Message

    saved, _ = tensors["nextgpt/pytorch_model.safetensors"]
    model = NextGPT.from_pretrained(retrained / "model", devices="cpu")
    try:
        loaded = model.llm.llama_proj.weight.detach().to(saved["llama_proj.weight"].dtype)
        result = model.chat([Message("user", "What colour is a red circle?", [])],
                            sampling=SamplingParams(max_new_tokens=8, seed=0))
    finally:
        model.close()
    assert torch.equal(loaded, saved["llama_proj.weight"]), "the library did not load the re-trained projection"
    assert result.usage.prompt_tokens > 0 and 1 <= result.usage.completion_tokens <= 8
