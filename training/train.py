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
from typing import Callable, Iterator

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from spkrec.models import __version__
from spkrec.models.artifact import ModelInfo
from spkrec.models.clustering import measure_scales, voice_windows
from spkrec.models.config import Config
from spkrec.models.errors import DataError
from spkrec.models.scoring import normalize
from spkrec.models.windows import fit_length
from spkrec.training.config import TrainConfig

from . import data as datasets
from . import distributed, pretrained
from .augment import Augmenter
from .distributed import Group
from .evaluate import Embedded, embed_clips, evaluate, open_set_eer, prototypes, save_confusion_png
from .export import check_parity, export_onnx
from .features import SpecAugment
from .int8 import RUN_WINDOWS, stamp_ranges, windows_of
from .loader import RunBatches, auto_workers, batch_loader
from .network import MarginLoss, SpeakerNet

CHECKPOINT = "checkpoint.pt"


@dataclass
class RunResult:
    run_dir: Path
    model_path: Path
    metrics: dict
    main: bool = True


def choose_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda was asked for but torch sees no CUDA GPU (use --device auto or cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed every generator. On CUDA, cuDNN may pick its fastest kernels for the fixed crop
    shape (runs there are reproducible in their statistics, not bit for bit); on CPU, exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    fast = device.type == "cuda"
    torch.backends.cudnn.benchmark = fast
    torch.backends.cudnn.deterministic = not fast


def build_net(n_speakers: int, t: TrainConfig) -> SpeakerNet:
    masking = SpecAugment(t.augment.freq_mask_bins, t.augment.time_mask_frames) if t.augment.spec_augment else None
    return SpeakerNet(n_speakers, t.embedding_dim, t.sample_rate, t.n_mels, head=t.loss,
                      scale=t.aam_scale, spec_augment=masking, stem_pool=t.stem_pool, pooling=t.pooling)


def load_backbone(net: SpeakerNet, t: TrainConfig, cache_dir: Path, log: Callable[[str], None]) -> str:
    """Put pretrained weights into the network; returns where they came from."""
    if t.pretrained == "speaker":
        return load_speaker_model(net, t)
    state, source = pretrained.resolve(t.pretrained, cache_dir, log)
    if state is not None:
        state = pretrained.adapt_to_single_channel(state)
        missing, unexpected = net.backbone.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith("fc.")]:
            raise DataError(f"pretrained weights do not fit ResNet50: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return source


def load_speaker_model(net: SpeakerNet, t: TrainConfig) -> str:
    """The shipped base model's whole network (backbone and embedding layer) as the start."""
    from spkrec.models.base import base_model_path
    from spkrec.models.engine import Engine

    path = base_model_path()
    info = Engine(path, provider="cpu").info
    recipe = info.training.get("recipe", {})
    for key in ("stem_pool", "pooling", "embedding_dim", "n_mels", "sample_rate"):
        if key in recipe and recipe[key] != getattr(t, key):
            raise DataError(f"--pretrained speaker: the base model has {key} = {recipe[key]!r} but train.{key} is "
                            f"{getattr(t, key)!r}; set it to match, or use --pretrained imagenet")
    missing, unexpected = net.load_state_dict(pretrained.speaker_state_from_onnx(path), strict=False)
    if unexpected or set(missing) - {"classifier", "linear.weight", "linear.bias"}:
        raise DataError(f"--pretrained speaker: the base model does not fit (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    return f"speaker (base model {info.fingerprint})"


def lr_factor(step: int, total: int, t: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero (or constant) over the whole run."""
    if t.warmup_steps and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.scheduler == "constant":
        return 1.0
    progress = (step - t.warmup_steps) / max(1, total - t.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _embedder(net: SpeakerNet, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    def embed(windows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(windows)).to(device))[0].float().cpu().numpy()
    return embed


def _save_atomically(obj: dict, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    torch.save(obj, partial)
    partial.replace(path)


class Trainer:
    """The network, optimiser and loop of one run, on this process's share of every batch.

    Under torchrun each rank takes every world_size-th crop of the same seeded global batch,
    so ``train.batch_size`` is the global batch and the step count, schedule and learning
    rate mean what they mean in a one-process run.
    """

    def __init__(self, cfg: Config, train_clips: list[datasets.Clip], labels: list[str], group: Group,
                 device: torch.device, log: Callable[[str], None]) -> None:
        t = self.t = cfg.train
        if t.batch_size % group.world_size:
            raise DataError(f"train.batch_size {t.batch_size} must divide evenly among {group.world_size} "
                            "processes (it is the global batch)")
        self.clips, self.labels, self.group, self.device = train_clips, labels, group, device
        self.window = int(round(t.window_s * t.sample_rate))
        self.label_index = {label: i for i, label in enumerate(labels)}
        net = build_net(len(labels), t)
        self.source = load_backbone(net, t, cfg.cache_dir(), log)
        net.freeze(t.freeze_layers)
        self.net = net.to(device).to(memory_format=torch.channels_last)
        self.model = self.net
        if group.active:
            ids = [device.index] if device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.trainable = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=t.lr, weight_decay=t.weight_decay)
        self.per_epoch = datasets.steps_per_epoch(train_clips, self.window, t.batch_size)
        self.min_steps = max(t.min_steps, t.steps_per_speaker * len(labels))
        self.epochs = datasets.epochs_needed(t.epochs, self.min_steps, self.per_epoch)
        self.total = self.epochs * self.per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, self.total, t))
        self.loss_fn = MarginLoss(t.aam_margin, t.aam_scale) if t.loss == "aam" else torch.nn.CrossEntropyLoss()
        self.augmenter = Augmenter(t.augment, t.sample_rate, t.seed + group.rank, device)
        self.use_amp = t.amp and device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.workers = auto_workers(t.workers, device, group.world_size)

    def batches(self, first_epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches from ``first_epoch`` to the end of the run, from one DataLoader."""
        plan = RunBatches(self.clips, self.window, self.t.batch_size, self.t.seed, self.label_index, first_epoch,
                          self.epochs, self.group.rank, self.group.world_size)
        return iter(batch_loader(plan, self.workers, self.device))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        """One optimisation step; returns (summed loss, correct) over this rank's crops."""
        x = self.augmenter(x)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            _, logits = self.model(x)
            loss = self.loss_fn(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.t.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, self.t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.item() * len(y), int((logits.argmax(dim=1) == y).sum())

    def seconds_per_step(self, repeats: int = 2) -> float:
        """Time a forward and backward pass of this rank's batch (random crops; the first call warms
        up and is not counted), without a step: the weights, their gradients and the normalisation
        statistics are left as they were. An estimate of the run's length before it starts."""
        was_training = self.model.training
        self.model.eval()  # batch-norm running statistics stay untouched
        x = torch.randn(self.t.batch_size // self.group.world_size, self.window, device=self.device) * 0.1
        y = torch.zeros(len(x), dtype=torch.long, device=self.device)
        took = []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                loss = self.loss_fn(self.model(x)[1].float(), y)
            loss.backward()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            took.append(time.perf_counter() - started)
        self.optimizer.zero_grad(set_to_none=True)
        self.model.train(was_training)
        return float(np.median(took[1:]))

    def train_epoch(self, epoch: int, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
                    on_step: Callable[[str], None] = lambda stats: None, max_steps: int | None = None) -> dict:
        """One pass over the training audio; the share of wall time spent waiting for the next
        batch (loading and the host-to-GPU copy) is measured alongside the throughput."""
        self.model.train()
        seen = correct = 0
        loss_sum = waited = 0.0
        started = time.perf_counter()
        for _ in range(max_steps if max_steps is not None else self.per_epoch):
            ask = time.perf_counter()
            try:
                x, y = next(batches)
            except StopIteration:
                break
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            waited += time.perf_counter() - ask
            step_loss, step_correct = self.step(x, y)
            seen, correct, loss_sum = seen + len(y), correct + step_correct, loss_sum + step_loss
            elapsed = time.perf_counter() - started
            on_step(f"epoch {epoch + 1}/{self.epochs} loss {loss_sum / seen:.3f} acc {correct / seen:.2f} "
                    f"{seen * self.group.world_size / elapsed:.0f} samples/s, data wait {waited / elapsed:.0%}")
        elapsed = time.perf_counter() - started
        seen_all, correct_all, loss_all, wait_all = distributed.total([seen, correct, loss_sum, waited / elapsed],
                                                                      self.group, self.device)
        return {"epoch": epoch + 1, "loss": loss_all / max(seen_all, 1), "accuracy": correct_all / max(seen_all, 1),
                "samples_per_s": seen_all / elapsed, "data_wait_share": wait_all / self.group.world_size,
                "seconds": elapsed}

    def save_checkpoint(self, path: Path, epoch: int) -> None:
        _save_atomically({"epoch": epoch, "labels": self.labels, "model": self.net.state_dict(),
                          "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                          "augment_rng": self.augmenter.generator.get_state()}, path)

    def restore(self, path: Path) -> int:
        return _restore(path, self.labels, self.net, self.optimizer, self.scheduler,
                        self.augmenter if self.group.main else None)


def _decode_all(data: Path, val_data: Path | None, cfg: Config, group: Group, console: Console,
                warn: Callable[[str], None]) -> tuple[list[datasets.Clip], list[datasets.Clip]]:
    """Decode (under torchrun rank 0 first) and split."""
    t = cfg.train
    cache = cfg.cache_dir() / "decoded" if t.cache_audio else None
    if not group.main:
        distributed.barrier(group)  # rank 0 decodes first and fills the cache the others then read
    with console.status(f"decoding {data} ..."):  # other ranks' consoles are quiet
        clips = datasets.decode(datasets.discover(data), t.sample_rate, warn=warn, cache=cache)
        datasets.require_speakers(clips)
        val_clips = None if val_data is None else datasets.decode(datasets.discover(val_data), t.sample_rate,
                                                                  warn=warn, cache=cache)
    if group.main:
        distributed.barrier(group)
    if val_data is not None:
        return clips, val_clips
    return datasets.split(clips, t.val_fraction, t.seed)


def run(data: Path, run_dir: Path, cfg: Config, val_data: Path | None = None, resume: bool = False,
        console: Console | None = None) -> RunResult:
    """Train, then (on the main process only) evaluate and export. Under torchrun, the other
    ranks return a result with ``main`` false and nothing written."""
    t = cfg.train
    group = distributed.join(t.device)
    try:
        return _run(data, run_dir, cfg, val_data, resume, console or Console(stderr=True), group)
    finally:
        distributed.leave(group)


def _run(data: Path, run_dir: Path, cfg: Config, val_data: Path | None, resume: bool, console: Console,
         group: Group) -> RunResult:
    t = cfg.train
    if not group.main:
        console = Console(stderr=True, quiet=True)
    device = distributed.device_for(group, choose_device(t.device))
    seed_everything(t.seed, device)
    warn = lambda msg: console.print(f"[yellow]{msg}[/]")  # noqa: E731
    if group.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    train_clips, val_clips = _decode_all(data, val_data, cfg, group, console, warn)
    held = datasets.voices_to_hold(len({c.label for c in train_clips + val_clips}), t.val_voices)
    voice_clips: list[datasets.Clip] = []
    if held:
        train_clips, val_clips, voice_clips = datasets.hold_out_voices(train_clips, val_clips, held, t.seed)
    labels = datasets.require_speakers(train_clips)
    train_summary = datasets.summary(train_clips, t.sample_rate)
    if group.main:
        datasets.write_split(run_dir / "split.json", train_clips, val_clips)
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    console.print(f"data: {train_summary['speakers']} speakers, {train_summary['files']} training files "
                  f"({train_summary['seconds'] / 60:.1f} min), {len(val_clips)} validation files"
                  + (f", {held} held-out voices for open-set selection" if held else ""))

    trainer = Trainer(cfg, train_clips, labels, group, device, console.print)
    if group.active:
        console.print(f"distributed: {group.world_size} processes ({group.backend}), "
                      f"{t.batch_size // group.world_size} crops each per step")
    start_epoch = 0
    checkpoint = run_dir / CHECKPOINT
    if resume:
        start_epoch = trainer.restore(checkpoint)
        console.print(f"resuming after epoch {start_epoch} of {trainer.epochs}")
    if trainer.epochs != t.epochs:
        console.print(f"{t.epochs} epochs would be only {t.epochs * trainer.per_epoch} steps: training "
                      f"{trainer.epochs} epochs ({trainer.total} steps of {t.batch_size}) to reach "
                      f"{trainer.min_steps} steps (train.min_steps, train.steps_per_speaker x {len(labels)} speakers)")
    if start_epoch < trainer.epochs:
        per_step = trainer.seconds_per_step()
        remaining = (trainer.total - start_epoch * trainer.per_epoch) * per_step
        console.print(f"estimate: {trainer.total - start_epoch * trainer.per_epoch} steps x {per_step:.2f} s "
                      f"(measured on this {device.type}) = about {_duration(remaining)} of training, plus "
                      "decoding, evaluation and export")
    selector = BestOnHeldOutVoices(trainer.net, voice_clips, trainer.window, device)

    history = []
    columns = [TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False, disable=not group.main) as progress:
        task = progress.add_task("train", total=trainer.total, completed=start_epoch * trainer.per_epoch, stats="")
        batches = trainer.batches(start_epoch)
        for epoch in range(start_epoch, trainer.epochs):
            stats = trainer.train_epoch(epoch, batches, lambda text: progress.update(task, advance=1, stats=text))
            selector.after_epoch(stats)
            history.append(stats)
            if epoch == start_epoch and device.type == "cpu":
                warn_if_long(stats["seconds"] * (trainer.epochs - epoch - 1), trainer.total, console)
            if group.main:  # one writer: the checkpoint is written once, not once per rank
                trainer.save_checkpoint(checkpoint, epoch + 1)
            if not console.is_terminal:
                console.print(f"epoch {epoch + 1}/{trainer.epochs}: loss {stats['loss']:.3f} "
                              f"acc {stats['accuracy']:.3f} {stats['samples_per_s']:.1f} samples/s, "
                              f"data wait {stats['data_wait_share']:.0%}")
    distributed.barrier(group)
    selector.restore_best(console)
    if not group.main:
        return RunResult(run_dir, run_dir / "model.onnx", {}, main=False)
    result = finish(trainer.net, device, run_dir, cfg, labels, train_clips, val_clips, train_summary,
                    trainer.source, history, trainer.total, console, group)
    if voice_clips:
        result.metrics["held_out_voices"] = selector.report()
        (run_dir / "metrics.json").write_text(json.dumps(result.metrics, indent=1))
    return result


class BestOnHeldOutVoices:
    """Open-set model selection: after each epoch, window-pair EER on voices the run never trains
    on; the epoch with the lowest is the one exported. Many-voice runs overfit their training
    voices long before the loss says so (README, "The base model"). Every rank computes the same
    figure on the same audio, so all of them keep the same epoch."""

    def __init__(self, net: SpeakerNet, clips: list[datasets.Clip], window: int, device: torch.device) -> None:
        self.net, self.clips, self.window, self.device = net, clips, window, device
        self.best: tuple[float, int, dict] | None = None
        self.history: list[float] = []

    def after_epoch(self, stats: dict) -> None:
        if not self.clips:
            return
        self.net.eval()
        eer = open_set_eer(_embedder(self.net, self.device), self.clips, self.window)
        self.net.train()
        stats["held_out_voice_eer"] = eer
        self.history.append(eer)
        if self.best is None or eer <= self.best[0]:
            self.best = (eer, stats["epoch"], {k: v.detach().clone() for k, v in self.net.state_dict().items()})

    def restore_best(self, console: Console) -> None:
        if self.best is None:
            return
        eer, epoch, state = self.best
        self.net.load_state_dict(state)
        console.print(f"kept epoch {epoch}: held-out voice EER {eer:.2%} (lowest of {len(self.history)})")

    def report(self) -> dict:
        eer, epoch, _ = self.best
        return {"voices": sorted({c.label for c in self.clips}), "best_epoch": epoch, "eer": eer,
                "per_epoch": self.history}


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{max(1, round(seconds / 60))} min"


def warn_if_long(remaining_s: float, steps: int, console: Console, limit_s: float = 3600.0) -> None:
    """A many-voice run on a CPU: say what it will take, once, after the first epoch."""
    if remaining_s > limit_s:
        console.print(f"[yellow]note: {steps} steps on this CPU will take about {remaining_s / 3600:.1f} more hours. "
                      "A GPU does this in minutes (--device cuda; README, GPU); or fine-tune the shipped "
                      "encoder briefly (--pretrained speaker, the default, with fewer --min-steps "
                      "and train.steps_per_speaker = 0).[/]")


def _restore(checkpoint: Path, labels: list[str], net, optimizer, scheduler, augmenter) -> int:
    """Load a checkpoint into this process; ``augmenter`` None keeps this rank's own noise stream."""
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
    if augmenter is not None:
        augmenter.generator.set_state(state["augment_rng"])
    return int(state["epoch"])


def center(net: SpeakerNet, embedded: list[Embedded]) -> list[Embedded]:
    """Set the network's embedding centre to the mean training embedding; returns the training
    embeddings as the centred network now gives them (the same arithmetic, without re-running it)."""
    mean = np.concatenate([e.windows for e in embedded]).mean(axis=0)
    net.center.copy_(torch.from_numpy(mean.astype(np.float32)))
    return [Embedded(e.label, normalize(e.windows - mean)) for e in embedded]


def _clustering_scales(embed, clips: list[datasets.Clip], window: int, hop: int) -> dict[str, float]:
    """Meeting mode's two clustering thresholds (models.clustering), measured on the run's
    voices; none when they have too little audio (meetings then refuse the model until
    `spkrec scales` stamps them, and the export says so)."""
    voices: dict[str, list[np.ndarray]] = {}
    for clip in clips:
        voices.setdefault(clip.label, []).append(clip.samples)
    try:
        return measure_scales(voice_windows(embed, voices, window, hop))
    except ValueError:
        return {}


def finish(net: SpeakerNet, device: torch.device, run_dir: Path, cfg: Config, labels: list[str],
           train_clips: list[datasets.Clip], val_clips: list[datasets.Clip], train_summary: dict,
           source: str, history: list[dict], steps: int, console: Console, group: Group = Group()) -> RunResult:
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
    with console.status("measuring clustering scales for meeting mode ..."):
        scales = _clustering_scales(embed, val_clips or train_clips, window, int(round(t.hop_s * t.sample_rate)))
    metrics["thresholds"].update(scales)
    if not scales:
        console.print("[yellow]too little audio per voice to measure the clustering scales (two voices with 11 s "
                      "each): meetings refuse this model until `spkrec scales MODEL --voices DIR` stamps them[/]")
    metrics.update(pretrained=source, calibrated_on=calibration_set, history=history,
                   processes={"world_size": group.world_size, "backend": group.backend or "none", "device": str(device)},
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
    with console.status("calibrating int8 on training audio (the CPU's static int8 copy) ..."):
        info = stamp_ranges(model_path, windows_of([c.samples for c in train_clips], window, RUN_WINDOWS))
    metrics["fingerprint"] = info.fingerprint
    _save_atomically({"model": net.state_dict(), "labels": labels, "config": dataclasses.asdict(cfg),
                      "prototypes": protos, "thresholds": dict(info.thresholds), "training": dict(info.training)},
                     run_dir / "model.pt")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if "confusion" in metrics:
        save_confusion_png(metrics["confusion"], labels, run_dir / "confusion.png")
    return RunResult(run_dir, model_path, metrics)
