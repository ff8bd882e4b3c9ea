"""ImageBind's input preprocessing, reproduced from the behaviour of `imagebind/data.py`
(imagebind-unofficial 0.1.1) without torchvision transforms, torchaudio or pytorchvideo.

The arithmetic follows the upstream loaders operation by operation (same torch ops, same dtypes,
same order) so the tensors match them to float32 rounding; tests/test_preprocess.py checks this
against reference tensors made by the upstream code itself.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

if TYPE_CHECKING:
    from .media import VideoClip

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 224

SAMPLE_RATE = 16000
AUDIO_CLIPS, AUDIO_CLIP_SECONDS = 3, 2
MEL_BINS, MEL_FRAMES = 128, 204
# upstream passes these to transforms.Normalize(mean, std): (x - mean) / std, no extra factor 2
AUDIO_MEAN, AUDIO_STD = -4.268, 9.138
WINDOW, SHIFT, FFT_SIZE = 400, 160, 512  # kaldi: 25 ms / 10 ms at 16 kHz, padded to a power of two

VIDEO_CLIPS, VIDEO_CLIP_SECONDS, FRAMES_PER_CLIP = 5, 2, 2


# ---------------------------------------------------------------------------------- clip timing

def clip_times(duration: float, clip_seconds: int, clips: int) -> list[tuple[Fraction, Fraction]]:
    """pytorchvideo's ConstantClipsPerVideoSampler: `clips` starts spread evenly over
    [0, duration - clip_seconds], in exact Fraction arithmetic (the float duration converted
    exactly), each clip [start, start + clip_seconds)."""
    max_start = Fraction(max(duration - clip_seconds, 0))
    step = Fraction(max_start, clips)
    times = []
    for i in range(clips):
        times.append((step * i, step * i + clip_seconds))
        if step * (i + 1) > max_start:  # upstream's end-of-video stop; unreachable for these clips
            break
    return times


# ---------------------------------------------------------------------------------- image

def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """(3, 224, 224) float32: PIL bicubic resize of the short side to 224 (long side truncated as
    torchvision computes it), centre crop with round(), /255, CLIP mean/std."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = IMAGE_SIZE, int(IMAGE_SIZE * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    top = int(round((new_h - IMAGE_SIZE) / 2.0))
    left = int(round((new_w - IMAGE_SIZE) / 2.0))
    img = img.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    x = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))  # (H, W, 3)
    x = x.permute(2, 0, 1).contiguous().to(torch.float32).div(255)  # (3, H, W)
    mean = torch.as_tensor(CLIP_MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(CLIP_STD, dtype=torch.float32).view(-1, 1, 1)
    return x.sub_(mean).div_(std)


# ---------------------------------------------------------------------------------- audio

def _mel_scale(freq: torch.Tensor) -> torch.Tensor:
    return 1127.0 * (1.0 + freq / 700.0).log()


def _mel_banks() -> torch.Tensor:
    """(MEL_BINS, FFT_SIZE // 2 + 1) triangular filters, 20 Hz to Nyquist, equally spaced on
    kaldi's mel scale; the last FFT bin (Nyquist) gets no weight, as in kaldi."""
    n_fft_bins = FFT_SIZE // 2
    mel_low = 1127.0 * math.log(1.0 + 20.0 / 700.0)
    mel_high = 1127.0 * math.log(1.0 + (SAMPLE_RATE / 2) / 700.0)
    delta = (mel_high - mel_low) / (MEL_BINS + 1)
    b = torch.arange(MEL_BINS).unsqueeze(1)  # (bins, 1)
    left, centre, right = mel_low + b * delta, mel_low + (b + 1.0) * delta, mel_low + (b + 2.0) * delta
    mel = _mel_scale(SAMPLE_RATE / FFT_SIZE * torch.arange(n_fft_bins)).unsqueeze(0)  # (1, 256)
    up = (mel - left) / (centre - left)
    down = (right - mel) / (right - centre)
    banks = torch.max(torch.zeros(1), torch.min(up, down))  # (bins, 256)
    return F.pad(banks, (0, 1), mode="constant", value=0)  # (bins, 257)


_MEL_BANKS: torch.Tensor | None = None


def kaldi_fbank(wave: torch.Tensor) -> torch.Tensor:
    """(1, N) float32 at 16 kHz -> (frames, 128) log mel energies, as torchaudio's
    compliance.kaldi.fbank with ImageBind's settings: snip_edges, no dither, DC offset removed,
    preemphasis 0.97, symmetric Hann ("hanning") window, power spectrum, no energy term."""
    global _MEL_BANKS
    if _MEL_BANKS is None:
        _MEL_BANKS = _mel_banks()
    x = wave[0]  # kaldi reads channel 0
    if x.numel() < WINDOW:
        return torch.empty(0, MEL_BINS)
    n = 1 + (x.numel() - WINDOW) // SHIFT
    frames = x.as_strided((n, WINDOW), (SHIFT * x.stride(0), x.stride(0)))  # (n, 400)
    frames = frames - torch.mean(frames, dim=1).unsqueeze(1)
    previous = F.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)  # x[-1] := x[0]
    frames = frames - 0.97 * previous[:, :-1]
    frames = frames * torch.hann_window(WINDOW, periodic=False, dtype=frames.dtype).unsqueeze(0)
    frames = F.pad(frames.unsqueeze(0), (0, FFT_SIZE - WINDOW), mode="constant", value=0).squeeze(0)
    power = torch.fft.rfft(frames).abs().pow(2.0)  # (n, 257)
    mel = torch.mm(power, _MEL_BANKS.to(power.dtype).T)  # (n, 128)
    return torch.max(mel, torch.tensor(torch.finfo(torch.float).eps, dtype=mel.dtype)).log()


def _melspec(clip: torch.Tensor) -> torch.Tensor:
    """(1, n) clip -> (1, 128, 204). Subtracts the clip's mean IN PLACE: `clip` is a view of the
    whole waveform, so later overlapping clips see the edit. Upstream does this (by accident);
    the weights were trained with it, so it is kept."""
    clip -= clip.mean()
    spec = kaldi_fbank(clip).transpose(0, 1)  # (128, frames)
    pad = MEL_FRAMES - spec.size(1)
    if pad > 0:
        spec = F.pad(spec, (0, pad), mode="constant", value=0)
    elif pad < 0:
        spec = spec[:, :MEL_FRAMES]
    return spec.unsqueeze(0)


def audio_to_tensor(wave16k: np.ndarray) -> torch.Tensor:
    """(N,) float mono at 16 kHz -> (3, 1, 128, 204): 3 clips of 2 s spread over the sound,
    kaldi fbank each, normalised (x + 4.268) / 9.138."""
    wave = _wave_tensor(wave16k)
    return torch.stack([_clip_fbank(wave, span) for span in audio_clip_spans(wave.size(1))], dim=0)


def distinct_audio_clips(wave16k: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct clips of `audio_to_tensor` (K, 1, 128, 204), K <= 3, and how many of its 3
    clips each is (K,): a sound of 2 s or less is one clip three times (to float rounding: the
    repeats subtract their already removed mean again, see `_melspec`), and ImageBind's audio
    embedding, the mean over the clips, is then that clip's."""
    wave = _wave_tensor(wave16k)
    spans = audio_clip_spans(wave.size(1))
    distinct = list(dict.fromkeys(spans))
    return (torch.stack([_clip_fbank(wave, span) for span in distinct], dim=0),
            torch.tensor([spans.count(span) for span in distinct]))


def audio_clip_spans(n_samples: int) -> list[tuple[int, int]]:
    """The sample spans [start, end) of the 3 clips of 2 s over a sound of `n_samples` at 16 kHz."""
    return [(int(start * SAMPLE_RATE), int(end * SAMPLE_RATE))
            for start, end in clip_times(n_samples / SAMPLE_RATE, AUDIO_CLIP_SECONDS, AUDIO_CLIPS)]


def _wave_tensor(wave16k: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(wave16k, dtype=np.float32, copy=True)).reshape(1, -1)  # (1, N)


def _clip_fbank(wave: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    """One clip's normalised fbank (1, 128, 204)."""
    clip = wave[:, span[0]:span[1]]  # a view, on purpose
    mean = torch.as_tensor(AUDIO_MEAN, dtype=torch.float32)
    std = torch.as_tensor(AUDIO_STD, dtype=torch.float32)
    return _melspec(clip).sub_(mean).div_(std)


# ---------------------------------------------------------------------------------- video

def video_frame_indices(n_frames: int, fps: float) -> list[int]:
    """The stream indices ImageBind reads: for each of 5 clips of 2 s, the frames decord returns
    for [start, end) (index ceil(fps * t)), then 2 of them by linspace. Clip-major, 10 entries."""
    chosen = []
    for start, end in clip_times(n_frames / fps, VIDEO_CLIP_SECONDS, VIDEO_CLIPS):
        first = math.ceil(fps * start)
        stop = min(math.ceil(fps * end), n_frames)
        count = stop - first
        if count <= 0:  # cannot happen with decord's duration; keep the last frame rather than fail
            chosen += [n_frames - 1] * FRAMES_PER_CLIP
            continue
        picks = torch.linspace(0, count - 1, FRAMES_PER_CLIP).clamp(0, count - 1).long()
        chosen += [first + int(p) for p in picks]
    return chosen


def _short_side_scale(x: torch.Tensor, size: int) -> torch.Tensor:
    """pytorchvideo's ShortSideScale: (C, T, H, W) -> short side `size`, long side floored."""
    _, _, h, w = x.shape
    if w < h:
        new_h, new_w = int(math.floor((float(h) / w) * size)), size
    else:
        new_h, new_w = size, int(math.floor((float(w) / h) * size))
    return F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)


def _three_crops(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """ImageBind's SpatialCrop(num_crops=3): start, centre, end of the long side (C, T, H, W)."""
    h, w = x.shape[2], x.shape[3]
    y0, x0 = int(math.ceil((h - size) / 2)), int(math.ceil((w - size) / 2))
    crops = []
    for i in range(3):
        y, xx = y0, x0
        if h > w:
            y = (0, y0, h - size)[i]
        else:
            xx = (0, x0, w - size)[i]
        crops.append(x[:, :, y:y + size, xx:xx + size])
    return crops


def video_to_tensor(video: "VideoClip") -> torch.Tensor:
    """VideoClip -> (15, 3, 2, 224, 224): 5 clips x 3 spatial crops, clip-major."""
    indices = video_frame_indices(video.n_frames, video.fps)
    mean = torch.as_tensor(CLIP_MEAN, dtype=torch.float32)[:, None, None, None]
    std = torch.as_tensor(CLIP_STD, dtype=torch.float32)[:, None, None, None]
    out = []
    for c in range(VIDEO_CLIPS):
        picks = indices[c * FRAMES_PER_CLIP:(c + 1) * FRAMES_PER_CLIP]
        frames = np.stack([video.frame(i) for i in picks])  # (T, H, W, 3) uint8
        x = torch.from_numpy(frames).to(torch.float32).permute(3, 0, 1, 2)  # (3, T, H, W), 0..255
        x = _short_side_scale(x / 255.0, IMAGE_SIZE)
        x = x.clone().sub_(mean).div_(std)
        out += _three_crops(x, IMAGE_SIZE)
    return torch.stack(out, dim=0)  # (15, 3, 2, 224, 224)
