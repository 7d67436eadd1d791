"""Working with finished runs and exported models: re-export, int8 copies, ONNX evaluation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from spkrec.models.artifact import ModelInfo
from spkrec.models.config import Config, from_dict
from spkrec.models.engine import Engine
from spkrec.models.errors import DataError, ModelError
from spkrec.models.windows import fit_length
from spkrec.training.config import TrainConfig

from . import data as datasets
from .evaluate import embed_clips, evaluate, save_confusion_png
from .export import check_parity, export_onnx, speed_ms
from .int8 import RUN_WINDOWS, quantize_copy, windows_of
from .network import HalfPrecision, SpeakerNet
from .train import build_net


def _validation_clips(run_dir: Path, rate: int, part: str = "validation") -> list[datasets.Clip]:
    split = json.loads((run_dir / "split.json").read_text())
    rows = split[part] or split["train"]
    items = [datasets.Item(Path(r["path"]), r["label"]) for r in rows]
    return datasets.decode(items, rate, warn=lambda m: None)


def load_run(run_dir: Path) -> tuple[SpeakerNet, dict, TrainConfig]:
    """A finished run's network (eval mode), its saved record, and its training config.

    Config keys this version no longer knows are dropped: they cannot change the network
    ``build_net`` makes, and a run from an older spkrec should still re-export.
    """
    saved_path = run_dir / "model.pt"
    if not saved_path.is_file():
        raise DataError(f"{run_dir} has no model.pt: train first with `spkrec train DATA --out {run_dir}`")
    saved = torch.load(saved_path, map_location="cpu", weights_only=False)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    # runs from before the speech-shaped network had torchvision's stem max-pool and average pooling
    train = {"stem_pool": "2x2", "pooling": "avg", **saved["config"]["train"]}
    t = from_dict({"train": {k: v for k, v in train.items() if k in known}}).train
    net = build_net(len(saved["labels"]), t)
    missing, unexpected = net.load_state_dict(saved["model"], strict=False)
    if unexpected or set(missing) - {"center"}:  # runs from before centring have no "center": zero, as trained
        raise ModelError(f"{run_dir / 'model.pt'} does not fit this spkrec's network: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    return net.eval(), saved, t


def reexport(run_dir: Path, out: Path | None, console: Console) -> Path:
    """model.pt -> ONNX again (same metadata), with the parity check."""
    net, saved, t = load_run(run_dir)
    info = ModelInfo(sample_rate=t.sample_rate, window_s=t.window_s, hop_s=t.hop_s, embedding_dim=t.embedding_dim,
                     labels=tuple(saved["labels"]), prototypes=np.asarray(saved["prototypes"], np.float32),
                     thresholds=saved["thresholds"], fingerprint="", training=saved["training"])
    path = out or run_dir / "model.onnx"
    info = export_onnx(net, info, path)
    clips = _validation_clips(run_dir, t.sample_rate)[:4]
    diff = check_parity(net, path, np.stack([fit_length(c.samples, info.window_samples) for c in clips]))
    console.print(f"exported {path} (fingerprint {info.fingerprint}, parity max |diff| {diff:.1e})")
    return path


def precision_report(model_path: Path, run_dir: Path, console: Console, precisions: tuple[str, ...],
                     provider: str = "cpu") -> dict:
    """Write model.<precision>.onnx copies and compare each with fp32 on the run's validation
    files: accuracy, EER, embedding parity, speed at batch 1 and size. Kept in RUN_DIR/precision.json.

    int8 is measured on the CPU (its purpose); fp16 on ``provider`` (CUDA where it is meant to run;
    on a CPU, ONNX Runtime runs it through casts, so only its accuracy is meaningful there).
    """
    fp32 = Engine(model_path, provider="cpu")
    clips = _validation_clips(run_dir, fp32.info.sample_rate)
    windows = np.stack([fit_length(c.samples, fp32.info.window_samples) for c in clips[:16]])
    paths = {"fp32": model_path}
    for precision in precisions:
        dst = model_path.with_name(f"{model_path.stem}.{precision}.onnx")
        if precision == "int8":  # static: from the model's ranges, or measured on the run's training audio
            quantize_copy(model_path, dst, lambda: windows_of(
                [c.samples for c in _validation_clips(run_dir, fp32.info.sample_rate, "train")],
                fp32.info.window_samples, RUN_WINDOWS))
        else:  # traced from the run's network rather than converted graph-side: see HalfPrecision
            export_onnx(HalfPrecision(load_run(run_dir)[0]), dataclasses.replace(fp32.info, precision="fp16"), dst,
                        copy_of=True)
        paths[precision] = dst
    table = Table(title="precision copies vs fp32 (validation files)")
    for column in ("model", "provider", "file acc", "window acc", "EER (pairs)", "min cos to fp32",
                   "ms/window (b=1)", "MB"):
        table.add_column(column, justify="right")
    reference = fp32.embed(windows)
    report = {}
    for name, path in paths.items():
        where = "cpu" if name == "int8" else provider
        engine = Engine(path, provider=where)
        metrics = _evaluate(engine, clips)
        cosine = float(np.min(np.sum(engine.embed(windows) * reference, axis=1)))
        ms = speed_ms(path, fp32.info.window_samples, provider=where)
        report[name] = {"provider": engine.provider, "file_accuracy": metrics.get("file_accuracy"),
                        "window_accuracy": metrics.get("window_accuracy"),
                        "eer": metrics.get("file_pairs", {}).get("eer"), "min_cosine_to_fp32": cosine,
                        "ms_per_window": ms, "megabytes": path.stat().st_size / 1e6}
        r = report[name]
        table.add_row(name, engine.provider.replace("ExecutionProvider", ""), _pct(r["file_accuracy"]),
                      _pct(r["window_accuracy"]), _pct(r["eer"]), f"{cosine:.4f}", f"{ms:.1f}",
                      f"{r['megabytes']:.0f}")
    console.print(table)
    (run_dir / "precision.json").write_text(json.dumps(report, indent=1))
    return report


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _evaluate(engine: Engine, clips: list[datasets.Clip]) -> dict:
    embedded = embed_clips(engine.embed, clips, engine.info.window_samples)
    return evaluate(embedded, list(engine.info.labels), engine.info.prototypes)


def evaluate_onnx(model: Path, data: Path, out: Path | None, cfg: Config, console: Console) -> dict:
    """Evaluate an exported model on labelled audio through ONNX Runtime."""
    engine = Engine(model, provider=cfg.model.provider, threads=cfg.model.threads)
    with console.status(f"decoding {data} ..."):
        clips = datasets.decode(datasets.discover(data), engine.info.sample_rate,
                                warn=lambda m: console.print(f"[yellow]{m}[/]"))
    if not clips:
        raise DataError(f"no usable audio in {data}")
    with console.status(f"embedding {len(clips)} files ..."):
        metrics = _evaluate(engine, clips)
    unknown = sorted({c.label for c in clips} - set(engine.info.labels))
    if unknown:
        metrics["labels_not_in_model"] = unknown
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        if "confusion" in metrics:
            save_confusion_png(metrics["confusion"], list(engine.info.labels), out / "confusion.png")
    return metrics
