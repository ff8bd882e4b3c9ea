"""Stages trained side by side (weights/nano/schedule.py): the same weights as one at a time."""
from __future__ import annotations

import json

import pytest

from weights.nano import train
from weights.nano.common import Context
from weights.nano.schedule import LOG, SCHEDULE

INDEPENDENT = ["vocoder", "image_vae", "audio_vae"]  # none reads another's output
WEIGHTS = ["vocoder/model.safetensors", "image_vae/diffusion_pytorch_model.safetensors",
           "audio_vae/diffusion_pytorch_model.safetensors"]


def test_stages_trained_side_by_side_come_out_byte_identical_to_one_at_a_time(tmp_path):
    alone, side = tmp_path / "alone", tmp_path / "side"
    train.run(work=alone, stages=INDEPENDENT, quick=0.001, threads=1, jobs=1, log=lambda s: None)
    logs: list[str] = []
    train.run(work=side, stages=INDEPENDENT, quick=0.001, threads=1, jobs=2, log=logs.append)

    for path in WEIGHTS:
        assert (side / path).read_bytes() == (alone / path).read_bytes(), path
    spans = json.loads((side / SCHEDULE).read_text())["stages"]
    assert set(spans) == set(INDEPENDENT)
    first, second = sorted(spans.values())[:2]
    assert second[0] < first[1]  # two of them ran at the same time
    assert any("starting beside" in line for line in logs)
    ctx = Context(work=side)
    for stage in INDEPENDENT:
        assert ctx.done(stage) and ctx.progress(stage)["step"] == ctx.progress(stage)["total"] == 2
        assert "done in" in (side / stage / LOG).read_text()  # each stage's own output, in its own log


def test_a_stage_that_fails_beside_another_stops_the_run_with_the_end_of_its_log(tmp_path):
    ctx = Context(work=tmp_path)
    for stage in ("tokenizers", "image_vae"):  # marked done with nothing written: image_unet cannot load its VAE
        ctx.mark_done(stage, {"seconds": 0.0})
    with pytest.raises(SystemExit, match="stage image_unet failed") as failed:
        train.run(work=tmp_path, stages=["image_unet", "vocoder"], quick=0.001, threads=1, jobs=2,
                  log=lambda s: None)
    assert str(tmp_path / "image_unet" / LOG) in str(failed.value)
    assert not ctx.done("image_unet")
    # the next run goes on where this one stopped: image_unet is still to train, and still fails.
    # Alone it trains in this process, so its own error comes through (the tokenizer it cannot load)
    with pytest.raises(OSError, match="tokenizers/clip"):
        train.run(work=tmp_path, stages=["image_unet"], quick=0.001, threads=1, jobs=2, log=lambda s: None)
    assert not ctx.done("image_unet")


def test_a_stage_waiting_on_others_starts_alone_once_they_are_done(tmp_path):
    """image_unet reads tokenizers and image_vae: those two start side by side, image_unet after
    both, alone (its threads may spin), even while the last of them is still exiting."""
    logs: list[str] = []
    train.run(work=tmp_path, stages=["image_unet"], quick=0.001, threads=1, jobs=2, log=logs.append)
    starts = {line.split("]")[0][1:]: line for line in logs if "starting" in line}
    assert set(starts) == {"tokenizers", "image_vae", "image_unet"}
    assert "beside" in starts["image_vae"] and "beside" not in starts["image_unet"]
    assert Context(work=tmp_path).done("image_unet")


def test_a_stage_extended_side_by_side_is_waited_for_by_the_stages_that_read_it(tmp_path):
    """image_vae done with fewer steps than the budget asks is extended from its end state; its old
    marker must not let image_unet start on the VAE before the extension ends."""
    train.run(work=tmp_path, stages=["image_vae"], quick=0.001, threads=1, jobs=1, log=lambda s: None)
    ctx = Context(work=tmp_path)
    ctx.mark_done("image_vae", {**ctx.info("image_vae"), "steps": 1})  # as if the budget had grown
    logs: list[str] = []
    # three slots: only the old marker could hold image_unet back from starting at once
    train.run(work=tmp_path, stages=["image_unet"], quick=0.001, threads=1, jobs=3, log=logs.append)
    starts = {line.split("]")[0][1:]: line for line in logs if "starting" in line}
    assert set(starts) == {"tokenizers", "image_vae", "image_unet"}
    assert "beside image_vae" not in starts["image_unet"]
    assert ctx.info("image_vae")["steps"] == 2 and ctx.done("image_unet")
    assert "extended from step" in (tmp_path / "image_vae" / LOG).read_text()
