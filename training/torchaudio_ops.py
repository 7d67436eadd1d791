"""The project's only door to torchaudio: every use of it goes through these functions.

torchaudio is in maintenance upstream and its later releases drop features, and a build that
does not match the installed torch fails as it loads its C++ library (README, "Locked
installs"). Keeping every call here means the next break costs one file, and ``spkrec doctor``
exercises exactly these calls. What spkrec uses it for: the mel filterbank of the log-mel front
end, SpecAugment's frequency and time masks, FFT convolution (room reverb), noise at a given
SNR, and resampling (speed-perturbed copies of a voice).
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

VERSION = torchaudio.__version__


def mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """[n_freqs, n_mels] Slaney-style filterbank (librosa's default, as the exported models use)."""
    return torchaudio.functional.melscale_fbanks(n_freqs, f_min, f_max, n_mels, sample_rate, norm="slaney",
                                                 mel_scale="slaney")


def frequency_masking(bins: int) -> nn.Module:
    """SpecAugment's frequency mask, independent per example of a [B, C, F, T] batch."""
    return torchaudio.transforms.FrequencyMasking(bins, iid_masks=True)


def time_masking(frames: int) -> nn.Module:
    """SpecAugment's time mask, independent per example of a [B, C, F, T] batch."""
    return torchaudio.transforms.TimeMasking(frames, iid_masks=True)


def fftconvolve(signal: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Full linear convolution of each row with its kernel, through the FFT."""
    return torchaudio.functional.fftconvolve(signal, kernel)


def add_noise(signal: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """``noise`` scaled to ``snr_db`` below each row of ``signal`` and added."""
    return torchaudio.functional.add_noise(signal, noise, snr_db)


def resample(audio: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """Band-limited resampling (windowed sinc) along the last axis."""
    return torchaudio.functional.resample(audio, orig_freq=orig_freq, new_freq=new_freq)


def self_check() -> str:
    """Run each function once on a tiny input; what ``spkrec doctor`` calls. Returns a summary."""
    fbank = mel_filterbank(65, 20.0, 8000.0, 8, 16000)
    x = torch.randn(2, 64)
    wet = fftconvolve(x, torch.ones(2, 4))
    noisy = add_noise(x, torch.randn(2, 64), torch.tensor([10.0, 20.0]))
    slow = resample(x, 9, 10)
    masked = time_masking(4)(frequency_masking(2)(torch.randn(2, 1, 8, 16)))
    shapes = (tuple(fbank.shape), tuple(wet.shape), tuple(noisy.shape), tuple(slow.shape), tuple(masked.shape))
    if shapes != ((65, 8), (2, 67), (2, 64), (2, 72), (2, 1, 8, 16)):
        raise RuntimeError(f"unexpected shapes {shapes}")
    return "mel filterbank, masks, fftconvolve, add_noise, resample ran"
