"""models/preprocess.py against ImageBind's own loaders.

tests/models/fixtures/imagebind_ref/reference.npz holds what `imagebind/data.py` (imagebind-unofficial
0.1.1, run by tests/models/fixtures/make_imagebind_reference.py) made from the files in inputs/. Our
decode + preprocess must give the same tensors:
- image, audio at 16 kHz, video: max abs difference <= 1e-5 (float32 rounding headroom; the
  difference measured when the references were made is 0.0 for all of them). Video is compared on
  a t[..., ::8, ::8] subsample plus the mean of every (clip, channel, frame) slice.
- audio at 44.1 kHz: upstream resamples with torchaudio's sinc filter, we with soxr, so only the
  mel bins below about 5 kHz are compared (max diff <= 0.01); the top bins, near the resamplers'
  different cut-offs, differ by up to about 0.8 in log-mel.
"""
from __future__ import annotations

import json
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import media, preprocess

HERE = Path(__file__).parent / "fixtures" / "imagebind_ref"
INPUTS = HERE / "inputs"
TOL = 1e-5


@lru_cache(maxsize=1)
def references() -> dict[str, np.ndarray]:
    with np.load(HERE / "reference.npz") as refs:
        return {k: refs[k] for k in refs.files}


def names(kind: str) -> list[str]:
    manifest = json.loads((HERE / "manifest.json").read_text())
    return sorted({k.split("/")[1] for k in manifest["shapes"] if k.startswith(kind + "/")})


def test_fixtures_are_small():
    total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file())
    assert total < 3_000_000


@pytest.mark.parametrize("name", names("image"))
def test_image_matches_upstream(name):
    ours = preprocess.image_to_tensor(media.decode_image((INPUTS / name).read_bytes()))
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
    assert np.abs(ours.numpy() - references()[f"image/{name}"]).max() <= TOL


# Where a mel bin's power is near float32's floor (log power below -10, about 45 dB under a
# quiet bin), its log moves with the FFT's last-bit rounding, which differs between CPUs (the
# same torch on an AMD EPYC and on the machine that wrote the references: up to 7e-4 there).
LOG_POWER_FLOOR = -10.0


@pytest.mark.parametrize("name", [n for n in names("audio") if "_16k_" in n])
def test_audio_16k_matches_upstream(name):
    ours = preprocess.audio_to_tensor(media.decode_audio((INPUTS / name).read_bytes()))
    assert ours.shape == (3, 1, 128, 204) and ours.dtype == torch.float32
    ref = references()[f"audio/{name}"]
    diff = np.abs(ours.numpy() - ref)
    audible = ref * preprocess.AUDIO_STD + preprocess.AUDIO_MEAN > LOG_POWER_FLOOR  # the bins' log power
    assert audible.mean() > 0.5  # most of the spectrogram is compared to the last bits
    assert diff[audible].max() <= 5 * TOL
    assert diff.mean() <= TOL


def test_audio_44k1_close_to_upstream_below_5khz():
    name = "tone_44k1_3s.wav"
    ours = preprocess.audio_to_tensor(media.decode_audio((INPUTS / name).read_bytes())).numpy()
    diff = np.abs(ours - references()[f"audio/{name}"])[:, 0, :96, 2:196]  # bins < ~5 kHz, inner frames
    assert diff.max() <= 0.01
    assert np.abs(ours - references()[f"audio/{name}"]).mean() <= 0.01


def test_in_place_mean_quirk_is_what_upstream_does():
    """Subtracting each clip's mean on a copy instead (the 'clean' version) does not match."""
    wave = media.decode_audio((INPUTS / "speechlike_16k_5s.wav").read_bytes())
    ref = references()["audio/speechlike_16k_5s.wav"]
    clean = []
    for start, end in preprocess.clip_times(len(wave) / 16000, 2, 3):
        piece = wave[int(start * 16000):int(end * 16000)].copy()  # a copy: edits stay local
        clean.append(preprocess._melspec(torch.from_numpy(piece)[None]))
    clean = (torch.stack(clean) + 4.268) / 9.138
    assert np.abs(clean.numpy() - ref).max() > 1e-3


@pytest.mark.parametrize("name", names("video"))
def test_video_matches_upstream(name):
    clip = media.decode((INPUTS / name).read_bytes(), "video")
    refs = references()
    assert clip.duration == pytest.approx(float(refs[f"video/{name}/duration"]))
    ours = preprocess.video_to_tensor(clip)
    assert ours.shape == (15, 3, 2, 224, 224) and ours.dtype == torch.float32
    assert np.abs(ours[..., ::8, ::8].numpy() - refs[f"video/{name}/strided"]).max() <= TOL
    assert np.abs(ours.double().mean(dim=(-2, -1)).numpy() - refs[f"video/{name}/means"]).max() <= TOL


def test_video_from_all_frames_equals_kept_frames():
    data = (INPUTS / "landscape_10fps_6p4s.mp4").read_bytes()
    full = preprocess.video_to_tensor(media.decode(data, "video", video_frames="all"))
    assert torch.equal(full, preprocess.video_to_tensor(media.decode(data, "video")))


def test_clip_times_use_exact_fractions():
    times = preprocess.clip_times(6.4, 2, 5)
    assert len(times) == 5 and times[0] == (0, 2)
    # 6.4 is not exactly representable: the starts are exact multiples of Fraction(6.4 - 2) / 5
    assert times[1][0] == Fraction(6.4 - 2) / 5 and times[4][1] == Fraction(6.4 - 2) * 4 / 5 + 2
    assert preprocess.clip_times(1.0, 2, 3) == [(0, 2)] * 3  # shorter than a clip: all at 0


def test_video_frame_indices():
    # 64 frames at 10 fps: clips start every 0.88 s; frames [ceil(10 t), ceil(10 (t + 2))), ends by linspace
    assert preprocess.video_frame_indices(64, 10.0) == [0, 19, 9, 28, 18, 37, 27, 46, 36, 55]
    assert preprocess.video_frame_indices(1, 30.0) == [0] * 10


def test_small_and_odd_images():
    for size in [(1, 1), (224, 224), (225, 1000), (3000, 17)]:
        x = preprocess.image_to_tensor(Image.new("RGB", size, (10, 200, 30)))
        assert x.shape == (3, 224, 224)
        expected = (torch.tensor([10, 200, 30]) / 255 - torch.tensor(preprocess.CLIP_MEAN)) / torch.tensor(
            preprocess.CLIP_STD)
        assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=1e-4)


def test_short_audio():
    x = preprocess.audio_to_tensor(np.zeros(400, np.float32))  # exactly one fbank window
    assert x.shape == (3, 1, 128, 204) and torch.isfinite(x).all()
    assert preprocess.kaldi_fbank(torch.zeros(1, 399)).shape == (0, 128)


def test_audio_input_is_not_modified():
    wave = media.decode_audio((INPUTS / "short_16k_1p3s.wav").read_bytes())
    before = wave.copy()
    preprocess.audio_to_tensor(wave)
    assert np.array_equal(wave, before)
