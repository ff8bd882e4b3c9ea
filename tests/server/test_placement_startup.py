"""Server start-up with the automatic placement: settings, which models get a plan, the log, /health."""
from __future__ import annotations

import json
import logging
import shutil

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from models.placement import GIB, GpuInfo, plan_placement
from server import engine
from server.app import create_app
from server.settings import Settings

RTX_4090 = [GpuInfo(0, "NVIDIA GeForce RTX 4090", int(23.99 * GIB))]


def test_gpu_budget_and_quantize_settings(monkeypatch):
    s = Settings()
    assert s.gpu_budget == 0.9 and s.quantize is None
    for given, wanted in (("4bit", "int4"), ("INT8", "int8"), ("nf4", "int4"), ("", None), ("none", None)):
        assert Settings(quantize=given).quantize == wanted
    monkeypatch.setenv("NEXTGPT_QUANTIZE", "8bit")
    monkeypatch.setenv("NEXTGPT_GPU_BUDGET", "0.75")
    s = Settings()
    assert (s.quantize, s.gpu_budget) == ("int8", 0.75)
    with pytest.raises(ValidationError, match="int8 or int4"):
        Settings(quantize="int3")
    for budget in (0, 1.5):
        with pytest.raises(ValidationError):
            Settings(gpu_budget=budget)
    for name in ("gpu_budget", "quantize"):
        assert Settings.model_fields[name].description


def release_like(tmp_path, tiny_dir, *, name=None, hidden=None):
    """A copy of tiny's config (no weights) named like the release, or with a 4096-wide LLM."""
    folder = tmp_path / "model"
    (folder / "llm").mkdir(parents=True)
    config = json.loads((tiny_dir / "nextgpt.json").read_text())
    config["name"] = name or config["name"]
    (folder / "nextgpt.json").write_text(json.dumps(config))
    llm_config = json.loads((tiny_dir / "llm" / "config.json").read_text())
    llm_config["hidden_size"] = hidden or llm_config["hidden_size"]
    (folder / "llm" / "config.json").write_text(json.dumps(llm_config))
    return folder


def test_only_the_release_sized_model_is_planned(tiny_dir, tmp_path):
    assert not engine.is_release(tiny_dir)
    assert engine.is_release(release_like(tmp_path / "a", tiny_dir, name="nextgpt-7b-tiva-v0"))
    assert engine.is_release(release_like(tmp_path / "b", tiny_dir, hidden=4096))
    assert not engine.is_release(release_like(tmp_path / "c", tiny_dir))
    partial = release_like(tmp_path / "d", tiny_dir)
    shutil.rmtree(partial / "llm")  # no LLM folder: not the release
    assert not engine.is_release(partial)


class FakeModel:
    def __init__(self, placement=None):
        self.placement = placement
        self.batching = None
        self.llm_batching = None
        self.accelerated = None

    def merge_lora(self):
        return False

    def accelerate_decoders(self, where, compile_mode=None):
        self.accelerated = where
        return []

    def enable_batching(self, max_batch):
        self.batching = max_batch

    def enable_llm_batching(self, max_batch, static="auto"):
        self.llm_batching = max_batch


@pytest.fixture()
def loads(monkeypatch):
    """What load_model passes to NextGPT.from_pretrained, with the release and a 24 GB GPU faked."""
    import models.placement
    from models.nextgpt import NextGPT

    calls = []

    def from_pretrained(path, **kwargs):
        calls.append(kwargs)
        return FakeModel(kwargs.get("placement"))

    monkeypatch.setattr(NextGPT, "from_pretrained", staticmethod(from_pretrained))
    monkeypatch.setattr(engine, "resolve_weights", lambda spec: spec)
    monkeypatch.setattr(engine, "is_release", lambda path: path == "release")
    monkeypatch.setattr(models.placement, "detect_gpus", lambda: RTX_4090)
    monkeypatch.setattr(models.placement, "bitsandbytes_available", lambda: True)
    return calls


def test_auto_devices_plan_the_release_and_log_the_table(loads, caplog):
    with caplog.at_level(logging.INFO, logger="nextgpt.server"):
        model = engine.load_model(Settings(weights="release", devices="auto", gpu_budget=0.9, decoder_max_batch=4,
                                          llm_max_batch=3))
    (call,) = loads
    placement = call["placement"]
    assert "devices" not in call and model.placement is placement and model.batching == 4
    assert model.llm_batching == 3
    assert placement.stages["llm"].quantize == "int8" and placement.stages["video"].offload == "model"
    assert placement.describe() in caplog.text and "NVIDIA GeForce RTX 4090" in caplog.text
    loads.clear()
    engine.load_model(Settings(weights="release", devices="auto", quantize="int4"))
    assert loads[0]["placement"].stages["llm"].quantize == "int4"


def test_the_plans_warnings_are_logged(loads, monkeypatch, caplog):
    import models.placement

    monkeypatch.setattr(models.placement, "bitsandbytes_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="nextgpt.server"):
        engine.load_model(Settings(weights="release", devices="auto"))
    placement = loads[0]["placement"]
    assert placement.stages["llm"].quantize is None and placement.warnings
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert all(w in warned for w in placement.warnings)


def test_small_presets_and_explicit_devices_keep_todays_load(loads, monkeypatch, caplog):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    engine.load_model(Settings(weights="tiny", devices="auto"))
    assert loads[-1] == {"devices": "cpu", "limits": Settings().decoder_limits()}
    engine.load_model(Settings(weights="release", devices="cuda:1"))
    assert loads[-1]["devices"] == "cuda:1" and "placement" not in loads[-1]
    engine.load_model(Settings(weights="release", devices='{"llm": "cuda:0", "video": "cuda:1"}'))
    assert loads[-1]["devices"] == {"llm": "cuda:0", "video": "cuda:1"}
    with caplog.at_level(logging.WARNING, logger="nextgpt.server"):
        engine.load_model(Settings(weights="tiny", devices="auto", quantize="int8"))
    assert "quantize=int8 is ignored" in caplog.text and "placement" not in loads[-1]


def test_health_shows_the_plan_when_there_is_one(tmp_path):
    placement = plan_placement(RTX_4090)
    client = TestClient(create_app(Settings(files_dir=tmp_path), model=FakeModel(placement)))  # no lifespan
    body = client.get("/health").json()
    assert body["status"] == "loading" and body["placement"] == json.loads(json.dumps(placement.as_dict()))
    assert body["placement"]["stages"]["llm"]["quantize"] == "int8"
    plain = TestClient(create_app(Settings(files_dir=tmp_path), model=FakeModel()))
    assert plain.get("/health").json() == {"status": "loading"}
