"""The ``[train]`` section and its ``[train.augment]`` table: the fine-tuning recipe.

Read by the config loader without torch (a daemon validates a shared file's ``[train]`` keys
too), so this module imports nothing from the rest of training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spkrec.models.errors import ConfigError
from spkrec.models.options import Section, option


@dataclass
class AugmentConfig:
    noise_prob: float = option(0.5, lo=0.0, hi=1.0)
    snr_db: list = option([5.0, 20.0], length=2)
    reverb_prob: float = option(0.3, lo=0.0, hi=1.0)
    rt60_s: list = option([0.2, 0.8], length=2)
    gain_db: float = option(6.0, lo=0.0, hi=40.0)
    spec_augment: bool = option(True)
    freq_mask_bins: int = option(10, lo=0, hi=80)
    time_mask_frames: int = option(20, lo=0, hi=400)


@dataclass
class TrainConfig:
    batch_size: int = option(32, lo=1, hi=4096)
    epochs: int = option(5, lo=1, hi=10000)
    min_steps: int = option(300, lo=0, hi=10_000_000)
    steps_per_speaker: int = option(10, lo=0, hi=100_000)
    optimizer: str = option("adamw", choices=("adamw",))
    lr: float = option(1e-3, lo=0.0, hi=1.0)
    weight_decay: float = option(0.0, lo=0.0, hi=1.0)
    scheduler: str = option("cosine", choices=("cosine", "constant"))
    warmup_steps: int = option(0, lo=0, hi=1_000_000)
    grad_clip: float = option(0.0, lo=0.0, hi=1e6)
    loss: str = option("aam", choices=("aam", "softmax"))
    aam_margin: float = option(0.2, lo=0.0, hi=1.0)
    aam_scale: float = option(30.0, lo=1.0, hi=100.0)
    embedding_dim: int = option(256, lo=8, hi=4096)
    sample_rate: int = option(16000, choices=(8000, 16000))
    window_s: float = option(2.0, lo=0.5, hi=10.0)
    hop_s: float = option(0.5, lo=0.1, hi=10.0)
    n_mels: int = option(80, lo=20, hi=128)
    pretrained: str = option("speaker")
    stem_pool: str = option("none", choices=("none", "time", "2x2"))
    pooling: str = option("stats", choices=("stats", "avg"))
    freeze_layers: int = option(0, lo=0, hi=4)
    val_fraction: float = option(0.2, lo=0.0, hi=0.9)
    val_voices: int = option(-1, lo=-1, hi=100_000)
    seed: int = option(0, lo=0, hi=2**31 - 1)
    device: str = option("auto", choices=("auto", "cpu", "cuda"))
    amp: bool = option(True)
    workers: int = option(-1, lo=-1, hi=64)
    cache_audio: bool = option(True)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def validate(cfg: Any) -> None:
    """A training window holds at least one hop; the augmentation ranges are ordered."""
    t = cfg.train
    if t.hop_s > t.window_s:
        raise ConfigError(f"config key 'train.hop_s' ({t.hop_s}) must not exceed 'train.window_s' ({t.window_s})")
    for key, pair in (("train.augment.snr_db", t.augment.snr_db), ("train.augment.rt60_s", t.augment.rt60_s)):
        if not all(isinstance(v, (int, float)) for v in pair) or pair[0] > pair[1]:
            raise ConfigError(f"config key '{key}' must be [low, high] numbers with low <= high, got {pair!r}")


SECTION = Section("train", TrainConfig, validate)
