"""The speaker network: log-mel front end -> ResNet50 -> embedding, plus the training heads."""

from __future__ import annotations

import copy
import math

import torch
import torchvision
from torch import nn

from .features import LogMel, SpecAugment


class StatsPool(nn.Module):
    """[B, C, freq, time] -> [B, 2C]: mean and standard deviation over time of the
    frequency-averaged maps. A voice is a distribution of frames; the spread carries speaker
    information that a plain average throws away (x-vector / WeSpeaker pooling)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype  # statistics in float32 (a variance overflows fp16), the result as it came
        x = x.float().mean(dim=2)
        mean = x.mean(dim=-1)
        std = torch.sqrt(x.var(dim=-1, unbiased=False).clamp(min=1e-5))
        return torch.cat([mean, std], dim=1).to(dtype)


# Stem max-pool: ImageNet's 2x2 halves frequency and time; "time" halves time only, so layer4
# keeps 5 of the 80 mel rows instead of 3 for about twice the convolution work; "none" keeps
# the full 40 rows after conv1 for about four times the work.
STEM_POOLS = {"2x2": (2, 2), "time": (1, 2), "none": None}
POOLINGS = ("avg", "stats")


def resnet50_backbone(stem_pool: str, pooling: str) -> tuple[nn.Module, int]:
    """torchvision's ResNet50 on one input channel, shaped for speech; returns (net, output width)."""
    backbone = torchvision.models.resnet50(weights=None)
    backbone.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    stride = STEM_POOLS[stem_pool]
    backbone.maxpool = nn.Identity() if stride is None else nn.MaxPool2d(3, stride=stride, padding=1)
    backbone.fc = nn.Identity()
    if pooling == "stats":
        backbone.avgpool = StatsPool()
        return backbone, 4096
    return backbone, 2048


class SpeakerNet(nn.Module):
    """waveform [B, T] -> (unit embedding [B, D], logits [B, n_speakers]).

    With the AAM head the classifier rows are unit speaker directions in embedding space,
    so its logits are scaled cosine scores: classification and open-set scoring agree.
    """

    def __init__(self, n_speakers: int, embedding_dim: int = 256, sample_rate: int = 16000,
                 n_mels: int = 80, head: str = "aam", scale: float = 30.0,
                 spec_augment: SpecAugment | None = None, stem_pool: str = "2x2", pooling: str = "avg") -> None:
        super().__init__()
        self.frontend = LogMel(sample_rate, n_mels)
        self.spec_augment = spec_augment or nn.Identity()
        self.backbone, width = resnet50_backbone(stem_pool, pooling)
        self.embed = nn.Sequential(nn.Linear(width, embedding_dim), nn.BatchNorm1d(embedding_dim))
        # Mean of the training embeddings, set once training ends (zero while training): without it a
        # briefly trained model puts every voice in one narrow cone and all cosines sit near 1.
        self.register_buffer("center", torch.zeros(embedding_dim))
        self.head = head
        if head == "aam":
            self.classifier = nn.Parameter(torch.empty(n_speakers, embedding_dim))
            nn.init.xavier_uniform_(self.classifier)
        else:  # the original recipe: a plain linear classifier over the embedding
            self.linear = nn.Linear(embedding_dim, n_speakers)
        self.logit_scale = scale

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.spec_augment(self.frontend(waveform))[:, None]  # [B, 1, mels, frames]

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """The heavy part: ResNet50 and the embedding layer (what fp16 export halves)."""
        return self.embed(self.backbone(features))

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.outputs(self.encode(self.features(waveform)))

    def outputs(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        unit = nn.functional.normalize(raw, dim=-1)
        embedding = nn.functional.normalize(unit - self.center, dim=-1)
        if self.head == "aam":
            logits = unit @ nn.functional.normalize(self.classifier, dim=-1).T * self.logit_scale
        else:
            logits = self.linear(raw)
        return embedding, logits

    def freeze(self, stages: int) -> None:
        """Freeze the stem and the first ``stages - 1`` residual stages (0 = train everything)."""
        if stages <= 0:
            return
        modules = [self.backbone.conv1, self.backbone.bn1] + [getattr(self.backbone, f"layer{i}") for i in range(1, stages)]
        for module in modules:
            for p in module.parameters():
                p.requires_grad_(False)


class HalfPrecision(nn.Module):
    """A copy of a trained network with an fp16 ResNet and embedding layer between the float32
    front end (mel power overflows fp16 before the log) and float32 scoring; for GPU export."""

    def __init__(self, net: SpeakerNet) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).eval()
        self.net.backbone.half()
        self.net.embed.half()

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.outputs(self.net.encode(self.net.features(waveform).half()).float())


class MarginLoss(nn.Module):
    """Additive angular margin (ArcFace) cross-entropy on the AAM head's scaled cosines."""

    def __init__(self, margin: float, scale: float) -> None:
        super().__init__()
        self.margin, self.scale = margin, scale
        self.cos_m, self.sin_m = math.cos(margin), math.sin(margin)
        # Beyond theta = pi - m the margin would make the target easier, not harder.
        self.threshold = math.cos(math.pi - margin)
        self.fallback = math.sin(math.pi - margin) * margin

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cosine = (logits / self.scale).float().clamp(-1.0, 1.0)
        if self.margin > 0:
            sine = torch.sqrt((1.0 - cosine * cosine).clamp(min=1e-7))
            phi = cosine * self.cos_m - sine * self.sin_m
            phi = torch.where(cosine > self.threshold, phi, cosine - self.fallback)
            one_hot = nn.functional.one_hot(target, cosine.shape[1]).bool()
            cosine = torch.where(one_hot, phi, cosine)
        return nn.functional.cross_entropy(cosine * self.scale, target)
