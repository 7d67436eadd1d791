"""The training run: data -> augment -> network -> loop -> evaluate -> export.

One call of ``run`` turns a labelled folder (or CSV) into RUN_DIR with checkpoint.pt,
model.pt, model.onnx, metrics.json, confusion.png, split.json and config.json.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from spkrec.models import __version__
from spkrec.models.artifact import ModelInfo
from spkrec.models.config import Config, TrainConfig
from spkrec.models.errors import DataError
from spkrec.models.scoring import normalize
from spkrec.models.windows import fit_length

from . import data as datasets
from . import pretrained
from .augment import Augmenter
from .evaluate import Embedded, embed_clips, evaluate, prototypes, save_confusion_png
from .export import check_parity, export_onnx
from .features import SpecAugment
from .network import MarginLoss, SpeakerNet

CHECKPOINT = "checkpoint.pt"


@dataclass
class RunResult:
    run_dir: Path
    model_path: Path
    metrics: dict


def choose_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda was asked for but torch sees no CUDA GPU (use --device auto or cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def build_net(n_speakers: int, t: TrainConfig) -> SpeakerNet:
    masking = SpecAugment(t.augment.freq_mask_bins, t.augment.time_mask_frames) if t.augment.spec_augment else None
    return SpeakerNet(n_speakers, t.embedding_dim, t.sample_rate, t.n_mels, head=t.loss,
                      scale=t.aam_scale, spec_augment=masking)


def load_backbone(net: SpeakerNet, spec: str, cache_dir: Path, log: Callable[[str], None]) -> str:
    """Put pretrained weights into the backbone; returns where they came from."""
    state, source = pretrained.resolve(spec, cache_dir, log)
    if state is not None:
        state = pretrained.adapt_to_single_channel(state)
        missing, unexpected = net.backbone.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith("fc.")]:
            raise DataError(f"pretrained weights do not fit ResNet50: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return source


def lr_factor(step: int, total: int, t: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero (or constant) over the whole run."""
    if t.warmup_steps and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.scheduler == "constant":
        return 1.0
    progress = (step - t.warmup_steps) / max(1, total - t.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _batch_tensor(clips: list[datasets.Clip], batch: list[tuple[int, int]], window: int) -> np.ndarray:
    return np.stack([fit_length(clips[i].samples[o : o + window], window) for i, o in batch])


def _embedder(net: SpeakerNet, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    def embed(windows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(windows).to(device))[0].float().cpu().numpy()
    return embed


def _save_atomically(obj: dict, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    torch.save(obj, partial)
    partial.replace(path)


def run(data: Path, run_dir: Path, cfg: Config, val_data: Path | None = None, resume: bool = False,
        console: Console | None = None) -> RunResult:
    console = console or Console(stderr=True)
    t = cfg.train
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(t.seed)
    rate, window = t.sample_rate, int(round(t.window_s * t.sample_rate))
    warn = lambda msg: console.print(f"[yellow]{msg}[/]")  # noqa: E731

    with console.status(f"decoding {data} ..."):
        clips = datasets.decode(datasets.discover(data), rate, warn=warn)
        datasets.require_speakers(clips)
        if val_data is not None:
            train_clips, val_clips = clips, datasets.decode(datasets.discover(val_data), rate, warn=warn)
        else:
            train_clips, val_clips = datasets.split(clips, t.val_fraction, t.seed)
    labels = datasets.require_speakers(train_clips)
    datasets.write_split(run_dir / "split.json", train_clips, val_clips)
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    label_index = {label: i for i, label in enumerate(labels)}
    train_summary = datasets.summary(train_clips, rate)
    console.print(f"data: {train_summary['speakers']} speakers, {train_summary['files']} training files "
                  f"({train_summary['seconds'] / 60:.1f} min), {len(val_clips)} validation files")

    device = choose_device(t.device)
    net = build_net(len(labels), t)
    source = load_backbone(net, t.pretrained, cfg.cache_dir(), console.print)
    net.freeze(t.freeze_layers)
    net = net.to(device).to(memory_format=torch.channels_last)
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=t.lr, weight_decay=t.weight_decay)
    per_epoch = datasets.steps_per_epoch(train_clips, window, t.batch_size)
    epochs = datasets.epochs_needed(t.epochs, t.min_steps, per_epoch)
    total = epochs * per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, t))
    loss_fn = MarginLoss(t.aam_margin, t.aam_scale) if t.loss == "aam" else torch.nn.CrossEntropyLoss()
    augmenter = Augmenter(t.augment, rate, t.seed, device)
    use_amp = t.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    start_epoch = 0
    checkpoint = run_dir / CHECKPOINT
    if resume:
        start_epoch = _restore(checkpoint, labels, net, optimizer, scheduler, augmenter)
        console.print(f"resuming after epoch {start_epoch} of {epochs}")
    if epochs != t.epochs:
        console.print(f"{t.epochs} epochs would be only {t.epochs * per_epoch} steps: training {epochs} epochs "
                      f"({total} steps of {t.batch_size}) to reach train.min_steps = {t.min_steps}")

    history = []
    columns = [TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("train", total=total, completed=start_epoch * per_epoch, stats="")
        for epoch in range(start_epoch, epochs):
            net.train()
            seen = correct = 0
            loss_sum = 0.0
            started = time.perf_counter()
            for batch in datasets.epoch_batches(train_clips, window, t.batch_size, t.seed, epoch):
                x = torch.from_numpy(_batch_tensor(train_clips, batch, window)).to(device, non_blocking=True)
                y = torch.tensor([label_index[train_clips[i].label] for i, _ in batch], device=device)
                x = augmenter(x)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    _, logits = net(x)
                    loss = loss_fn(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if t.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, t.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                seen += len(batch)
                correct += int((logits.argmax(dim=1) == y).sum())
                loss_sum += loss.item() * len(batch)
                rate_now = seen / (time.perf_counter() - started)
                progress.update(task, advance=1, stats=f"epoch {epoch + 1}/{epochs} loss {loss_sum / seen:.3f} "
                                f"acc {correct / seen:.2f} {rate_now:.1f} samples/s")
            history.append({"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1),
                            "samples_per_s": seen / (time.perf_counter() - started)})
            _save_atomically({"epoch": epoch + 1, "labels": labels, "model": net.state_dict(),
                              "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                              "augment_rng": augmenter.generator.get_state()}, checkpoint)
            if not console.is_terminal:
                console.print(f"epoch {epoch + 1}/{epochs}: loss {history[-1]['loss']:.3f} "
                              f"acc {history[-1]['accuracy']:.3f} {history[-1]['samples_per_s']:.1f} samples/s")

    return finish(net, device, run_dir, cfg, labels, train_clips, val_clips, train_summary, source, history,
                  total, console)


def _restore(checkpoint: Path, labels: list[str], net, optimizer, scheduler, augmenter) -> int:
    if not checkpoint.is_file():
        raise DataError(f"--resume: no checkpoint in {checkpoint.parent}")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if state["labels"] != labels:
        raise DataError("--resume: the checkpoint was trained on other speakers than this dataset holds")
    missing, unexpected = net.load_state_dict(state["model"], strict=False)
    if unexpected or set(missing) - {"center"}:  # "center" is set after training; older checkpoints lack it
        raise DataError(f"--resume: {checkpoint} does not fit this network (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    augmenter.generator.set_state(state["augment_rng"])
    return int(state["epoch"])


def center(net: SpeakerNet, embedded: list[Embedded]) -> list[Embedded]:
    """Set the network's embedding centre to the mean training embedding; returns the training
    embeddings as the centred network now gives them (the same arithmetic, without re-running it)."""
    mean = np.concatenate([e.windows for e in embedded]).mean(axis=0)
    net.center.copy_(torch.from_numpy(mean.astype(np.float32)))
    return [Embedded(e.label, normalize(e.windows - mean)) for e in embedded]


def finish(net: SpeakerNet, device: torch.device, run_dir: Path, cfg: Config, labels: list[str],
           train_clips: list[datasets.Clip], val_clips: list[datasets.Clip], train_summary: dict,
           source: str, history: list[dict], steps: int, console: Console) -> RunResult:
    """Prototypes, evaluation, calibrated thresholds, ONNX export with parity, metrics on disk."""
    t = cfg.train
    window = int(round(t.window_s * t.sample_rate))
    net.eval()
    embed = _embedder(net, device)
    with console.status("embedding training audio for speaker prototypes ..."):
        train_embedded = center(net, embed_clips(embed, train_clips, window))
        protos = prototypes(train_embedded, labels)
    with console.status("evaluating on validation files ..."):
        val_embedded = embed_clips(embed, val_clips, window)
    metrics = evaluate(val_embedded, labels, protos) if val_embedded else {}
    calibration_set = "validation"
    if "thresholds" not in metrics:
        calibration_set = "training (no validation files)"
        metrics["thresholds"] = evaluate(train_embedded, labels, protos)["thresholds"]  # >= 2 speakers: always set
    metrics.update(pretrained=source, calibrated_on=calibration_set, history=history,
                   recipe={k: v for k, v in dataclasses.asdict(t).items() if k != "augment"},
                   augment=dataclasses.asdict(t.augment), train_data=train_summary)

    info = ModelInfo(
        sample_rate=t.sample_rate, window_s=t.window_s, hop_s=t.hop_s, embedding_dim=t.embedding_dim,
        labels=tuple(labels), prototypes=protos, thresholds=metrics["thresholds"], fingerprint="",
        training={"spkrec_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "pretrained": source, "data": {k: v for k, v in train_summary.items() if k != "per_speaker"},
                  "loss": t.loss, "steps": steps,
                  "validation": {k: metrics[k] for k in ("file_accuracy", "window_accuracy") if k in metrics}},
    )
    model_path = run_dir / "model.onnx"
    with console.status("exporting ONNX and checking parity ..."):
        info = export_onnx(net, info, model_path)
        parity_clips = val_clips or train_clips
        batch = np.stack([fit_length(c.samples, window) for c in parity_clips[:4]])
        metrics["parity_max_abs_diff"] = check_parity(net, model_path, batch)
    metrics["fingerprint"] = info.fingerprint
    _save_atomically({"model": net.state_dict(), "labels": labels, "config": dataclasses.asdict(cfg),
                      "prototypes": protos, "thresholds": dict(info.thresholds), "training": dict(info.training)},
                     run_dir / "model.pt")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if "confusion" in metrics:
        save_confusion_png(metrics["confusion"], labels, run_dir / "confusion.png")
    return RunResult(run_dir, model_path, metrics)
