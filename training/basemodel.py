"""The base speaker model: a general encoder trained on every voice we may use.

``spkrec train`` serves a user's labelled folder: files, per-file splits, a fixed number of
epochs. A general encoder needs something else, so it has its own loop here: hundreds of
voices held in GPU memory with crops cut there (no data wait), speed-perturbed copies as extra
speakers, a margin that grows in and a large-margin finish on longer crops, and the checkpoint
kept by equal-error rate on held-out *voices* (open-set), never on the unseen test set.

    python -m spkrec.training.basemodel train --corpus DIR --out RUN [--imagenet W.pt] [--steps N | --budget-s S]

The corpus folder is what ``training.basecorpus`` packs: ``index.json`` and one audio file per
speaker. ``export`` turns the run's weights into the shipped ONNX file (training.baseexport).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from spkrec.models.errors import DataError
from spkrec.models.windows import frame_windows
from spkrec.training.config import AugmentConfig

from . import pretrained
from .augment import Augmenter
from .evaluate import pair_eer
from .features import SpecAugment
from .network import MarginLoss, SpeakerNet


@dataclass
class Recipe:
    """Every choice of a base-model run; saved with the weights so a run can be repeated."""

    steps: int = 0  # 0: as many as ``budget_s`` allows, measured after warm-up
    budget_s: float = 300.0
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_share: float = 0.05
    margin: float = 0.2
    margin_ramp_share: float = 0.2  # the margin grows from 0 over this share of steps
    scale: float = 30.0
    crop_s: float = 2.0
    long_crop_s: float = 3.0  # the last ``long_share`` of steps: longer crops, larger margin
    long_share: float = 0.15
    long_margin: float = 0.3
    speed_factors: tuple[float, ...] = (0.9, 1.0, 1.1)
    val_voices: int = 16
    evals: int = 12
    stem_pool: str = "none"
    pooling: str = "stats"
    embedding_dim: int = 256
    n_mels: int = 80
    sample_rate: int = 16000
    seed: int = 0
    augment: dict = field(default_factory=lambda: dataclasses.asdict(AugmentConfig()))


# --- corpus ---------------------------------------------------------------------------------

def read_index(corpus: Path) -> dict:
    index = corpus / "index.json"
    if not index.is_file():
        raise DataError(f"{corpus} has no index.json (pack it with python -m spkrec.training.basecorpus)")
    return json.loads(index.read_text())


def load_speakers(corpus: Path, rate: int) -> dict[str, np.ndarray]:
    """label -> float32 mono audio at ``rate``, decoded once."""
    import soundfile as sf

    index = read_index(corpus)
    if int(index["sample_rate"]) != rate:
        raise DataError(f"{corpus} is packed at {index['sample_rate']} Hz, the recipe wants {rate}")
    audio = {}
    for entry in index["speakers"]:
        samples, got = sf.read(corpus / entry["file"], dtype="float32", always_2d=True)
        if got != rate:
            raise DataError(f"{entry['file']}: {got} Hz, expected {rate}")
        audio[entry["label"]] = samples.mean(axis=1)
    return audio


def held_out_voices(labels: list[str], count: int) -> list[str]:
    """A fixed, seed-free choice of LibriSpeech voices kept out of training for model selection."""
    libri = sorted((l for l in labels if l.startswith("libri-")), key=lambda l: hashlib.sha256(l.encode()).hexdigest())
    return sorted(libri[:count])


def speed_copies(audio: torch.Tensor, factors: tuple[float, ...]) -> list[torch.Tensor]:
    """The voice at each speed (0.9 = slower and lower): a changed vocal tract length sounds like
    another person, so each copy is trained as a speaker of its own (Kaldi / WeSpeaker practice)."""
    from .torchaudio_ops import resample

    out = []
    for f in factors:
        if f == 1.0:
            out.append(audio)
            continue
        num = round(f * 10)
        out.append(resample(audio[None], num, 10)[0])
    return out


class GpuCorpus:
    """All training audio as one fp16 tensor on the device; random crops are one gather."""

    def __init__(self, voices: list[torch.Tensor], longest_crop: int, device: torch.device) -> None:
        pieces = []
        for v in voices:
            if v.numel() < longest_crop:  # a voice shorter than a crop is repeated to fill one
                v = v.repeat(math.ceil(longest_crop / v.numel()))
            pieces.append(v)
        self.lengths = torch.tensor([p.numel() for p in pieces], device=device)
        self.offsets = torch.cumsum(self.lengths, 0) - self.lengths
        self.data = torch.cat(pieces).to(device=device, dtype=torch.float16)
        self.classes = len(pieces)
        self.device = device

    def crops(self, n: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n crops of ``length`` samples, speakers drawn uniformly (every voice counts the same)."""
        y = torch.randint(self.classes, (n,), generator=generator, device=self.device)
        room = (self.lengths[y] - length + 1).float()
        start = self.offsets[y] + (torch.rand(n, generator=generator, device=self.device) * room).long()
        index = start[:, None] + torch.arange(length, device=self.device)[None, :]
        return self.data[index].float(), y


# --- scoring --------------------------------------------------------------------------------

@torch.no_grad()
def embed(net: SpeakerNet, windows: np.ndarray, device: torch.device, batch: int = 64) -> np.ndarray:
    net.eval()
    out = []
    for i in range(0, len(windows), batch):
        x = torch.from_numpy(windows[i:i + batch]).to(device)
        feats = net.features(x)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            raw = net.encode(feats.contiguous(memory_format=torch.channels_last))
        out.append(net.outputs(raw.float())[0].float().cpu().numpy())
    return np.concatenate(out)


def voice_eer(net: SpeakerNet, voices: dict[str, np.ndarray], recipe: Recipe, device: torch.device) -> float:
    """Window-pair EER on held-out voices: 2-s windows, one second apart, up to 8 a voice."""
    length = int(recipe.crop_s * recipe.sample_rate)
    windows, labels = [], []
    for label, audio in voices.items():
        w = frame_windows(audio, length, recipe.sample_rate)[:8]
        windows.append(w)
        labels += [label] * len(w)
    return pair_eer(embed(net, np.concatenate(windows), device), labels)


def file_eer(net: SpeakerNet, test_dir: Path, recipe: Recipe, device: torch.device) -> float:
    """File-pair EER on a test set laid out ``<speaker>/<utterance>.*``: mean window embedding per file."""
    import soundfile as sf

    length, hop = int(recipe.crop_s * recipe.sample_rate), recipe.sample_rate // 2
    means, labels = [], []
    for path in sorted(p for p in test_dir.glob("*/*") if p.suffix in (".opus", ".flac", ".wav", ".ogg")):
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        if rate != recipe.sample_rate:
            raise DataError(f"{path}: {rate} Hz, expected {recipe.sample_rate}")
        e = embed(net, frame_windows(audio.mean(axis=1), length, hop), device).mean(axis=0)
        means.append(e / np.linalg.norm(e))
        labels.append(path.parent.name)
    return pair_eer(np.stack(means), labels)


# --- training -------------------------------------------------------------------------------

def build(recipe: Recipe, classes: int) -> SpeakerNet:
    a = recipe.augment
    masking = SpecAugment(a["freq_mask_bins"], a["time_mask_frames"]) if a["spec_augment"] else None
    return SpeakerNet(classes, recipe.embedding_dim, recipe.sample_rate, recipe.n_mels, head="aam",
                      scale=recipe.scale, spec_augment=masking, stem_pool=recipe.stem_pool, pooling=recipe.pooling)


def lr_at(step: int, total: int, recipe: Recipe) -> float:
    warm = max(1, int(recipe.warmup_share * total))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def margin_at(step: int, total: int, recipe: Recipe) -> float:
    if step >= total - int(recipe.long_share * total):
        return recipe.long_margin
    return recipe.margin * min(1.0, step / max(1, recipe.margin_ramp_share * total))


class Run:
    """One base-model training run on one device."""

    def __init__(self, recipe: Recipe, speakers: dict[str, np.ndarray], imagenet: Path | None,
                 device: torch.device, log: Callable[[str], None]) -> None:
        self.recipe, self.device, self.log = recipe, device, log
        torch.manual_seed(recipe.seed)
        torch.backends.cudnn.benchmark = device.type == "cuda"
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        self.val = {l: speakers[l] for l in held_out_voices(list(speakers), recipe.val_voices)}
        self.train_labels = sorted(l for l in speakers if l not in self.val)
        voices = []
        for label in self.train_labels:
            wave = torch.from_numpy(speakers[label]).to(device)
            voices += speed_copies(wave, recipe.speed_factors)
        self.corpus = GpuCorpus(voices, int(recipe.long_crop_s * recipe.sample_rate), device)
        self.net = build(recipe, self.corpus.classes)
        self.source = "none (random init)"
        if imagenet is not None:
            state = pretrained.adapt_to_single_channel(
                {k: v.float() for k, v in torch.load(imagenet, map_location="cpu", weights_only=True).items()})
            missing, unexpected = self.net.backbone.load_state_dict(state, strict=False)
            if unexpected or [k for k in missing if not k.startswith("fc.")]:
                raise DataError(f"{imagenet} does not fit ResNet50 (missing {missing[:3]}, unexpected {unexpected[:3]})")
            self.source = f"imagenet ({imagenet.name})"
        self.net.to(device).to(memory_format=torch.channels_last)
        decay = [p for p in self.net.parameters() if p.ndim > 1]
        rest = [p for p in self.net.parameters() if p.ndim <= 1]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                      {"params": rest, "weight_decay": 0.0}], lr=recipe.lr)
        self.augment = Augmenter(AugmentConfig(**{k: v for k, v in recipe.augment.items()}), recipe.sample_rate,
                                 recipe.seed, device)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(recipe.seed)
        self.seconds = {l: len(a) / recipe.sample_rate for l, a in speakers.items()}

    def step(self, step: int, total: int) -> tuple[float, float]:
        r = self.recipe
        long = step >= total - int(r.long_share * total)
        length = int((r.long_crop_s if long else r.crop_s) * r.sample_rate)
        for group in self.opt.param_groups:
            group["lr"] = r.lr * lr_at(step, total, r)
        loss_fn = MarginLoss(margin_at(step, total, r), r.scale)
        x, y = self.corpus.crops(r.batch_size, length, self.generator)
        x = self.augment(x)
        self.net.train()
        feats = self.net.features(x).contiguous(memory_format=torch.channels_last)  # float32 front end
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            raw = self.net.encode(feats)
        _, logits = self.net.outputs(raw.float())
        loss = loss_fn(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach(), (logits.argmax(1) == y).float().mean().detach()

    def plan(self, warm_steps: int = 30) -> tuple[int, float]:
        """Steps that fit the time budget, timed on real steps (which also train)."""
        r = self.recipe
        if r.steps:
            return r.steps, 0.0
        self.step(0, 10**6)  # cuDNN picks its kernels for this shape
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(warm_steps):
            self.step(0, 10**6)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        per_step = (time.perf_counter() - start) / warm_steps
        long_cost = r.long_crop_s / r.crop_s
        effective = per_step * (1 + r.long_share * (long_cost - 1)) * 1.04  # ~4 % for evaluations
        return max(100, int(r.budget_s / effective)), per_step

    def train(self) -> dict:
        r = self.recipe
        started = time.perf_counter()
        total, per_step = self.plan()
        self.log(f"{self.corpus.classes} training classes ({len(self.train_labels)} voices x "
                 f"{len(r.speed_factors)} speeds), {len(self.val)} held-out voices; {total} steps "
                 f"({per_step * 1000:.0f} ms a step measured)")
        every = max(1, total // r.evals)
        history, best, best_state = [], 1.0, None
        loss_sum = acc_sum = 0.0
        deadline = started + r.budget_s * 1.2 if not r.steps else math.inf
        for step in range(total):
            if time.perf_counter() > deadline and history:  # a slower device than measured: keep the best so far
                self.log(f"time budget exceeded at step {step} of {total}: stopping with the best checkpoint")
                break
            loss, acc = self.step(step, total)
            loss_sum, acc_sum = loss_sum + loss, acc_sum + acc
            if (step + 1) % every == 0 or step + 1 == total:
                eer = voice_eer(self.net, self.val, r, self.device)
                n = (step % every) + 1
                row = {"step": step + 1, "loss": float(loss_sum) / n, "accuracy": float(acc_sum) / n,
                       "val_voice_eer": eer, "margin": margin_at(step, total, r),
                       "seconds": round(time.perf_counter() - started, 1)}
                history.append(row)
                loss_sum = acc_sum = 0.0
                self.log(json.dumps(row))
                if eer <= best:
                    best, best_state = eer, {k: v.detach().clone().cpu() for k, v in self.net.state_dict().items()}
        self.net.load_state_dict(best_state)
        self.set_center()
        return {"steps": total, "ms_per_step": per_step * 1000, "history": history, "best_val_voice_eer": best,
                "best_step": min(history, key=lambda h: h["val_voice_eer"])["step"],
                "seconds": time.perf_counter() - started, "pretrained": self.source,
                "train_voices": len(self.train_labels), "val_voices": sorted(self.val),
                "classes": self.corpus.classes, "train_seconds": sum(self.seconds[l] for l in self.train_labels)}

    def set_center(self, count: int = 2048) -> None:
        """Centre the embedding space on the mean of training crops (as ``spkrec train`` does)."""
        r = self.recipe
        self.net.center.zero_()
        x, _ = self.corpus.crops(count, int(r.crop_s * r.sample_rate), self.generator)
        e = embed(self.net, x.cpu().numpy(), self.device)
        self.net.center.copy_(torch.from_numpy(e.mean(axis=0)).to(self.device))


def weights_for_export(net: SpeakerNet) -> dict[str, torch.Tensor]:
    """The encoder's weights in fp16 (the classifier over training classes is dropped)."""
    return {k: (v.half() if v.is_floating_point() and k != "center" else v).cpu()
            for k, v in net.state_dict().items() if k != "classifier"}


def train_main(args: argparse.Namespace) -> None:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    recipe = Recipe(steps=args.steps, budget_s=args.budget_s, stem_pool=args.stem_pool, pooling=args.pooling,
                    batch_size=args.batch_size, seed=args.seed, val_voices=args.val_voices)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = (out / "train.log").open("a")

    def log(text: str) -> None:
        print(text, flush=True)
        log_file.write(text + "\n")
        log_file.flush()

    speakers = load_speakers(Path(args.corpus), recipe.sample_rate)
    log(f"corpus: {len(speakers)} voices, {sum(len(a) for a in speakers.values()) / recipe.sample_rate / 60:.1f} min")
    run = Run(recipe, speakers, Path(args.imagenet) if args.imagenet else None, device, log)
    if args.barrier:
        wait_for_peers(Path(args.barrier), args.peers)
    report = run.train()
    if args.test:
        report["test_file_pair_eer"] = file_eer(run.net, Path(args.test), recipe, device)
        log(f"unseen test set, file-pair EER {report['test_file_pair_eer']:.2%}")
    report["recipe"] = dataclasses.asdict(recipe)
    report["device"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    torch.save({"weights": weights_for_export(run.net), "recipe": dataclasses.asdict(recipe), "report": report},
               out / "base.pt")
    (out / "report.json").write_text(json.dumps(report, indent=1))
    log(f"best held-out voice EER {report['best_val_voice_eer']:.2%} at step {report['best_step']} of {report['steps']}")


def wait_for_peers(folder: Path, peers: int, timeout_s: float = 120.0) -> None:
    """Runs that share one GPU start timing together, so each measures its step time under the
    same sharing it will train with."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"ready.{os.getpid()}").touch()
    end = time.monotonic() + timeout_s
    while len(list(folder.glob("ready.*"))) < peers and time.monotonic() < end:
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spkrec.training.basemodel", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the base encoder on a packed corpus")
    t.add_argument("--corpus", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--imagenet", help="ImageNet ResNet50 state dict (fp16 or fp32); omitted: random init")
    t.add_argument("--test", help="unseen test set <speaker>/<utterance> for a final report (never for selection)")
    t.add_argument("--steps", type=int, default=0)
    t.add_argument("--budget-s", type=float, default=300.0)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--stem-pool", default="none", choices=("2x2", "time", "none"))
    t.add_argument("--pooling", default="stats", choices=("avg", "stats"))
    t.add_argument("--val-voices", type=int, default=16)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--barrier", help="folder where runs sharing one GPU wait for each other before timing")
    t.add_argument("--peers", type=int, default=1)
    args = parser.parse_args(argv)
    if args.command == "train":
        train_main(args)


if __name__ == "__main__":
    main()
