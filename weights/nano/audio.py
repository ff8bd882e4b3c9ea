"""The nano audio features (what the AudioLDM VAE reads and the vocoder inverts) and the
vocoder's training losses.

A plain HiFi-GAN generator trained on a waveform loss alone learns to output near-silence (the
phase of a tone is unpredictable, so the mean is zero). A multi-resolution STFT loss (spectral
convergence + L1 of log magnitudes) is blind to phase, but its log term, taken down to the usual
1e-5 floor, is dominated by the many empty bins of a tone's spectrum and again teaches the
generator to be quiet. Flooring the log magnitudes at 0.01 (about -70 dB below a tone's peak)
makes the loss about the partials that are there; an L1 term on the frame loudness (also blind
to phase) brings the level up quickly. With these the stock `SpeechT5HifiGan` learns to play the
tones at their pitch without a discriminator.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from . import config
from .world import SAMPLE_RATE

MEL_MEAN, MEL_STD = -6.0, 4.0  # log-mel normalisation: features roughly in [-2, 2]


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10 ** (np.asarray(m) / 2595.0) - 1.0)


def mel_basis(n_mels: int = config.N_MELS, n_fft: int = config.N_FFT, sr: int = SAMPLE_RATE) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular HTK filters from 0 Hz to Nyquist."""
    bins = np.fft.rfftfreq(n_fft, 1.0 / sr)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_mels + 2))
    fb = np.zeros((n_mels, len(bins)))
    for i in range(n_mels):
        lo, c, hi = edges[i], edges[i + 1], edges[i + 2]
        fb[i] = np.maximum(0, np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)))
    return torch.tensor(fb, dtype=torch.float32)


_BASIS: dict[tuple, torch.Tensor] = {}


def log_mel(wave: torch.Tensor, n_fft: int = config.N_FFT, hop: int = config.HOP, n_mels: int = config.N_MELS,
            normalise: bool = True) -> torch.Tensor:
    """(B, N) waveforms -> (B, N // hop, n_mels) log-mel magnitudes, one frame per `hop` samples."""
    key = (n_fft, n_mels)
    if key not in _BASIS:
        _BASIS[key] = mel_basis(n_mels, n_fft)
    pad = (n_fft - hop) // 2
    x = F.pad(wave.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft, device=wave.device), center=False,
                      return_complex=True).abs()  # (B, F, T)
    mel = torch.matmul(_BASIS[key].to(wave.device), spec).clamp_min(1e-5).log()  # (B, n_mels, T)
    mel = mel.transpose(1, 2)[:, : wave.shape[1] // hop]
    return (mel - MEL_MEAN) / MEL_STD if normalise else mel


def stft_loss(fake: torch.Tensor, real: torch.Tensor, sizes=(256, 512, 1024), floor: float = 0.01) -> torch.Tensor:
    """Multi-resolution STFT loss: spectral convergence + L1 of log magnitudes floored at `floor`."""
    total = 0.0
    for n in sizes:
        win = torch.hann_window(n, device=fake.device)
        sf = torch.stft(fake, n, n // 4, window=win, return_complex=True).abs()
        sr = torch.stft(real, n, n // 4, window=win, return_complex=True).abs()
        sc = torch.linalg.norm(sr - sf, dim=(1, 2)) / torch.linalg.norm(sr, dim=(1, 2)).clamp_min(1e-6)
        total = total + sc.mean() + F.l1_loss(sf.clamp_min(floor).log(), sr.clamp_min(floor).log())
    return total / len(sizes)


def envelope_loss(fake: torch.Tensor, real: torch.Tensor, frame: int = config.HOP) -> torch.Tensor:
    """L1 between the frame-by-frame RMS loudness of two waveforms, relative to the real level."""
    ef = fake.unfold(1, frame, frame).pow(2).mean(-1).sqrt()
    er = real.unfold(1, frame, frame).pow(2).mean(-1).sqrt()
    return F.l1_loss(ef, er) / er.mean().clamp_min(1e-6)


def vocoder_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    return stft_loss(fake, real) + envelope_loss(fake, real)


def spectral_peak(wave: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """The frequency (Hz) with the most energy, ignoring < 60 Hz."""
    w = np.asarray(wave, dtype=np.float64)
    if w.size < 256:
        return 0.0
    spec = np.abs(np.fft.rfft(w * np.hanning(w.size)))
    freqs = np.fft.rfftfreq(w.size, 1.0 / sr)
    spec[freqs < 60] = 0
    return float(freqs[int(np.argmax(spec))])


def rms(wave: np.ndarray) -> float:
    return float(math.sqrt(float(np.mean(np.square(np.asarray(wave, dtype=np.float64)))))) if len(wave) else 0.0
