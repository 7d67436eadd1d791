"""Waveform augmentation that speaker systems use: noise at a random SNR, room reverb, gain.

It runs on whole batches with torch ops, so it runs on the GPU when training does. Every
transform is switched by config (``[train.augment]``); SpecAugment masking lives in the
network because it acts on features.
"""

from __future__ import annotations

import torch

from spkrec.training.config import AugmentConfig

from .torchaudio_ops import add_noise, fftconvolve


def coloured_noise(shape: tuple[int, int], exponent: torch.Tensor, generator: torch.Generator,
                   device: torch.device) -> torch.Tensor:
    """Noise whose power falls as 1/f**exponent: 0 white, 1 pink, 2 brown (hum, fans, traffic)."""
    white = torch.randn(shape, generator=generator, device=device)
    spectrum = torch.fft.rfft(white)
    freqs = torch.arange(1, spectrum.shape[-1] + 1, device=device, dtype=torch.float32)
    spectrum = spectrum / freqs[None, :] ** (exponent[:, None] / 2)
    noise = torch.fft.irfft(spectrum, n=shape[1])
    return noise / noise.std(dim=1, keepdim=True).clamp(min=1e-8)


def synthetic_rir(n: int, rate: int, rt60: torch.Tensor, generator: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    """Room impulse responses: a direct path, then noise decaying 60 dB over ``rt60`` seconds."""
    length = int(rate * float(rt60.max()))
    t = torch.arange(length, device=device, dtype=torch.float32)[None, :] / rate
    decay = torch.exp(-6.9078 * t / rt60[:, None])  # ln(1000) = 60 dB in amplitude
    rir = torch.randn((n, length), generator=generator, device=device) * decay
    rir[:, 0] = 1.0
    return rir / rir.norm(dim=1, keepdim=True)


class Augmenter:
    """Applies the configured transforms to a [B, T] batch, each to a random subset of rows."""

    def __init__(self, cfg: AugmentConfig, rate: int, seed: int, device: torch.device) -> None:
        self.cfg, self.rate, self.device = cfg, rate, device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=self.generator, device=self.device)

    def _chosen(self, n: int, prob: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, device=self.device) < prob

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        n, length = batch.shape
        cfg = self.cfg
        if cfg.reverb_prob > 0:
            rows = self._chosen(n, cfg.reverb_prob)
            if rows.any():
                k = int(rows.sum())
                rir = synthetic_rir(k, self.rate, self._uniform(k, *cfg.rt60_s), self.generator, self.device)
                wet = fftconvolve(batch[rows], rir)[:, :length]
                batch = batch.clone()
                batch[rows] = wet * (batch[rows].std(dim=1, keepdim=True) / wet.std(dim=1, keepdim=True).clamp(min=1e-8))
        if cfg.noise_prob > 0:
            rows = self._chosen(n, cfg.noise_prob)
            if rows.any():
                k = int(rows.sum())
                noise = coloured_noise((k, length), self._uniform(k, 0.0, 2.0), self.generator, self.device)
                snr = self._uniform(k, *cfg.snr_db)
                batch = batch.clone()
                batch[rows] = add_noise(batch[rows], noise, snr)
        if cfg.gain_db > 0:
            gain_db = self._uniform(n, -cfg.gain_db, cfg.gain_db)
            batch = batch * (10.0 ** (gain_db / 20.0))[:, None]
        return batch
