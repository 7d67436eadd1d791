"""The log-mel front end, as a torch module that exports to plain ONNX.

It is part of the network, so the exported model takes raw waveforms and training and
serving cannot drift apart. The short-time Fourier transform is a 1-D convolution with a
fixed windowed DFT basis: ONNX's STFT operator is not implemented by every execution
provider, while Conv runs everywhere (CPU, CUDA, quantised).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import torchaudio_ops


class LogMel(nn.Module):
    """waveform [B, T] -> log-mel [B, n_mels, frames], mean-normalised per utterance."""

    def __init__(self, sample_rate: int = 16000, n_mels: int = 80, win_s: float = 0.025,
                 hop_s: float = 0.010, f_min: float = 20.0, f_max: float | None = None) -> None:
        super().__init__()
        self.win_length = int(round(win_s * sample_rate))
        self.hop_length = int(round(hop_s * sample_rate))
        n_fft = 2 ** math.ceil(math.log2(self.win_length))
        n_freqs = n_fft // 2 + 1
        t = torch.arange(self.win_length, dtype=torch.float64)
        k = torch.arange(n_freqs, dtype=torch.float64)[:, None]
        window = torch.hann_window(self.win_length, periodic=True, dtype=torch.float64)
        angle = 2 * math.pi * k * t / n_fft
        basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window], dim=0)
        self.register_buffer("basis", basis[:, None, :].float(), persistent=False)
        fbank = torchaudio_ops.mel_filterbank(n_freqs, f_min, f_max or sample_rate / 2, n_mels,
                                              sample_rate)  # [n_freqs, n_mels]
        self.register_buffer("fbank", fbank.T.contiguous().float(), persistent=False)
        self.n_freqs = n_freqs

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        spec = nn.functional.conv1d(waveform[:, None, :], self.basis, stride=self.hop_length)
        real, imag = spec[:, : self.n_freqs], spec[:, self.n_freqs :]
        power = real * real + imag * imag  # [B, F, frames]
        mel = torch.matmul(self.fbank, power)  # [B, n_mels, frames]
        logmel = torch.log(mel + 1e-6)
        return logmel - logmel.mean(dim=-1, keepdim=True)


class SpecAugment(nn.Module):
    """Frequency and time masking on log-mel features; active only in training mode."""

    def __init__(self, freq_mask_bins: int, time_mask_frames: int) -> None:
        super().__init__()
        self.freq = torchaudio_ops.frequency_masking(freq_mask_bins) if freq_mask_bins else None
        self.time = torchaudio_ops.time_masking(time_mask_frames) if time_mask_frames else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return features
        x = features[:, None]  # iid masks want [B, C, F, T]
        if self.freq is not None:
            x = self.freq(x)
        if self.time is not None:
            x = self.time(x)
        return x[:, 0]
