"""Training subcommands of ``spkrec``: train, export, eval, weights, default-model.

Registered through the ``spkrec.commands`` entry point, so the daemon's command line lists
them without importing this room; torch is imported only when one of them runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from spkrec.models.config import Config


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> dict:
    """Add the training subcommands; returns {name: handler}."""
    p = sub.add_parser("train", parents=[common], help="fine-tune ResNet50 on labelled speaker audio and export ONNX",
                       description="Train a speaker model on DATA (a folder per speaker, or a path,label CSV) and "
                                   "write RUN_DIR/model.onnx, metrics.json, confusion.png and checkpoints.")
    p.add_argument("data", type=Path, help="folder of <speaker>/<files> or a CSV manifest (path,label)")
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run folder to write")
    p.add_argument("--val", type=Path, help="explicit validation folder or CSV (default: a seeded split of DATA)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    _precision_flags(p)
    _train_flags(p)

    p = sub.add_parser("export", parents=[common], help="re-export a run's model (optionally int8 / fp16 copies)",
                       description="Write model.onnx again from RUN_DIR/model.pt, with parity check; --int8 and "
                                   "--fp16 add copies and report their accuracy, parity and speed next to fp32.")
    p.add_argument("run_dir", type=Path, help="a folder written by `spkrec train`")
    p.add_argument("--out", type=Path, help="output path (default RUN_DIR/model.onnx)")
    _precision_flags(p)

    p = sub.add_parser("eval", parents=[common], help="evaluate an ONNX model on labelled audio",
                       description="Closed-set accuracy (per window and per file), confusion matrix, EER and minDCF "
                                   "of MODEL on DATA, through ONNX Runtime.")
    p.add_argument("model", type=Path, help="a spkrec ONNX model")
    p.add_argument("data", type=Path, help="folder of <speaker>/<files> or a CSV manifest")
    p.add_argument("--out", type=Path, help="folder for metrics.json and confusion.png")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")

    p = sub.add_parser("weights", parents=[common], help="fetch and cache ImageNet ResNet50 weights (offline-safe)",
                       description="Build the ImageNet ResNet50 state dict used by --pretrained imagenet and cache it.")

    p = sub.add_parser("default-model", parents=[common], help="show the shipped base model, or rebuild it (--rebuild)",
                       description="Without --rebuild: the base model the package ships (path, fingerprint, data). "
                                   "With --rebuild: its recipe, end to end: gather and pack every voice the "
                                   "model may learn from, train the base encoder (a GPU: README, 'The base model') "
                                   "and export it to --out.")
    p.add_argument("--rebuild", action="store_true", help="run the recipe instead of showing the shipped model")
    p.add_argument("--out", type=Path, help="with --rebuild: the ONNX file to write")
    p.add_argument("--shared", type=Path, default=Path("../shared/data"),
                   help="folder with librispeech-train-clean-100/ and fsdd/ (default ../shared/data)")
    p.add_argument("--work", type=Path, help="with --rebuild: folder for the packed corpus and the run "
                                            "(default: CACHE/base-model)")
    p.add_argument("--steps", type=int, default=3477, help="optimisation steps (the shipped model's run: 3477)")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu (a CPU takes days)")
    return {"train": cmd_train, "export": cmd_export, "eval": cmd_eval, "weights": cmd_weights,
            "default-model": cmd_default_model}


def _precision_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (static int8, 7-bit weights: agrees with fp32 on any CPU)")
    p.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (half precision, for GPUs)")


def _precisions(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(name for name in ("int8", "fp16") if getattr(args, name))


def _train_flags(p: argparse.ArgumentParser) -> None:
    flags = [
        ("--epochs", int, "train.epochs", "epochs (an epoch covers each file's audio about once)"),
        ("--min-steps", int, "train.min_steps", "raise epochs until at least this many optimisation steps run"),
        ("--steps-per-speaker", int, "train.steps_per_speaker", "raise epochs until this many steps per speaker run"),
        ("--batch-size", int, "train.batch_size", "batch size"),
        ("--lr", float, "train.lr", "peak learning rate"),
        ("--loss", str, "train.loss", "aam (default) or softmax (the original recipe)"),
        ("--pretrained", str, "train.pretrained", "speaker (the shipped base model), imagenet, none, or a state-dict PATH"),
        ("--stem-pool", str, "train.stem_pool", "none (the base model's), time or 2x2 (ImageNet's, 4x less CPU work)"),
        ("--pooling", str, "train.pooling", "stats (mean and std over time, the base model's) or avg (ImageNet's)"),
        ("--device", str, "train.device", "auto, cpu or cuda"),
        ("--seed", int, "train.seed", "random seed (split, crops, augmentation, init)"),
        ("--freeze-layers", int, "train.freeze_layers", "freeze the stem and the first N-1 ResNet stages"),
    ]
    for flag, kind, key, text in flags:
        metavar = {int: "N", float: "X", str: "NAME"}[kind]
        p.add_argument(flag, type=kind, dest=key, metavar=metavar, help=f"{text} [{key}]")


def _console() -> Console:
    return Console(stderr=True)


def cmd_train(args: argparse.Namespace, cfg: Config) -> int:
    from .reexport import precision_report
    from .train import run

    result = run(args.data, args.out, cfg, val_data=args.val, resume=args.resume, console=_console())
    if not result.main:  # another torchrun process: rank 0 reports and exports
        return 0
    print_metrics(result.metrics, _console())
    if _precisions(args):
        precision_report(result.model_path, args.out, _console(), _precisions(args), cfg.model.provider)
    _console().print(f"model written: [bold]{result.model_path}[/]")
    return 0


def cmd_export(args: argparse.Namespace, cfg: Config) -> int:
    from .reexport import precision_report, reexport

    path = reexport(args.run_dir, args.out, _console())
    if _precisions(args):
        precision_report(path, args.run_dir, _console(), _precisions(args), cfg.model.provider)
    return 0


def cmd_eval(args: argparse.Namespace, cfg: Config) -> int:
    from .reexport import evaluate_onnx

    metrics = evaluate_onnx(args.model, args.data, args.out, cfg, _console())
    if args.json:
        print(json.dumps(metrics, indent=1))
    else:
        print_metrics(metrics, Console())
    return 0


def cmd_weights(args: argparse.Namespace, cfg: Config) -> int:
    from . import pretrained

    state, source = pretrained.resolve("imagenet", cfg.cache_dir(), _console().print)
    _console().print(f"ImageNet ResNet50 weights ready ({len(state)} tensors): {source}")
    return 0


def cmd_default_model(args: argparse.Namespace, cfg: Config) -> int:
    if not args.rebuild:
        return _show_base_model()
    from spkrec.models.errors import DataError

    if args.out is None:
        raise DataError("spkrec default-model --rebuild needs --out PATH (the shipped file stays as it is)")
    import torch

    from . import basecorpus, baseexport, basemodel, pretrained

    if args.device != "cpu" and not torch.cuda.is_available():
        raise DataError("the base model's recipe needs a CUDA GPU (about 7 minutes of an H100); "
                        "pass --device cpu to run it here anyway (days on a small CPU)")
    console = _console()
    work = args.work or cfg.cache_dir() / "base-model"
    corpus = work / "corpus"
    if not (corpus / "index.json").is_file():
        basecorpus.pack(basecorpus.gather(args.shared, cfg.cache_dir() / "base-corpus", console.print), corpus)
    state, source = pretrained.resolve("imagenet", cfg.cache_dir(), console.print)
    weights = work / "imagenet.pt"
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, weights)
    basemodel.main(["train", "--corpus", str(corpus), "--out", str(work / "run"), "--imagenet", str(weights),
                    "--steps", str(args.steps), "--stem-pool", "none", "--device", args.device])
    baseexport.export_base(work / "run" / "base.pt", corpus, args.out, console.print)
    return 0


def _show_base_model() -> int:
    from spkrec.models.base import base_model_path
    from spkrec.models.engine import Engine

    path = base_model_path()
    info = Engine(path, provider="cpu").info
    t = info.training
    table = Table(title="shipped base model", show_header=False)
    for name, value in [("file", str(path)), ("fingerprint", info.fingerprint), ("size", f"{path.stat().st_size / 1e6:.1f} MB"),
                        ("window / hop", f"{info.window_s:g} s / {info.hop_s:g} s at {info.sample_rate} Hz"),
                        ("trained on", ", ".join(f"{k} {v['voices']}" for k, v in t.get("data", {}).items())),
                        ("pretrained", str(t.get("pretrained", ""))),
                        ("thresholds", ", ".join(f"{k} {v:.3f}" for k, v in info.thresholds.items()))]:
        table.add_row(name, value)
    Console().print(table)
    print(path)
    return 0


def print_metrics(metrics: dict, console: Console) -> None:
    """The headline numbers of a run or evaluation as one table."""
    table = Table(title="evaluation", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [("file accuracy", metrics.get("file_accuracy"), "{:.1%}"),
            ("window accuracy", metrics.get("window_accuracy"), "{:.1%}"),
            ("EER, file pairs", metrics.get("file_pairs", {}).get("eer"), "{:.2%}"),
            ("minDCF(0.01), file pairs", metrics.get("file_pairs", {}).get("min_dcf_p0.01"), "{:.3f}"),
            ("EER, window vs prototype", metrics.get("window_vs_prototype", {}).get("eer"), "{:.2%}"),
            ("threshold (EER point)", metrics.get("thresholds", {}).get("eer"), "{:.3f}"),
            ("threshold (1% FAR)", metrics.get("thresholds", {}).get("far1"), "{:.3f}"),
            ("parity max |diff|", metrics.get("parity_max_abs_diff"), "{:.1e}")]
    for name, value, fmt in rows:
        if value is not None:
            table.add_row(name, fmt.format(value))
    if "pretrained" in metrics:
        table.add_row("pretrained", str(metrics["pretrained"]))
    console.print(table)
