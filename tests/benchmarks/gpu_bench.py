"""Benchmark: spkrec on a GPU machine, in one run.

1. ``spkrec train`` on real speech (the real command, ``--fp16``): the run's own throughput at
   batch 32 and its fp16 copy's accuracy and parity against fp32 (RUN/precision.json).
2. Training throughput of the real loop (``training.train.Trainer``) at batch 32 and larger
   batches on one GPU, with the share of wall time spent waiting for data, and with the
   DataLoader workers off at the largest batch to show what they buy.
3. Inference on the run's model, the same real windows for every system:
   ONNX Runtime CUDA fp32 and fp16 at batch 1 (p50/p95 ms per window, plain and with IO
   binding) and windows per second at batch 64 and 256; the time the first call at a new batch
   size takes with the heuristic conv search the daemon uses versus an exhaustive one; the CPU
   provider on the same machine; PyTorch eager (fp32 and bf16 autocast) on the same GPU.

It runs on a CPU too (``--quick``, smaller figures, CUDA rows skipped), which is how it is
tested before it meets a GPU. Results: a Markdown table on stdout and ``--out`` JSON.

    python tests/benchmarks/gpu_bench.py --data TRAIN_DIR --val VAL_DIR \\
        [--out tests/benchmarks/results/gpu.json] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_bench import machine, percentiles  # noqa: E402

from spkrec.models.config import load_config  # noqa: E402
from spkrec.models.engine import Engine, available_providers  # noqa: E402
from spkrec.models.windows import fit_length  # noqa: E402


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def gpu_machine() -> dict[str, Any]:
    import torch

    info = machine()
    info["onnxruntime_providers"] = available_providers()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
        info["cuda"] = torch.version.cuda
    return info


# ---------------------------------------------------------------- 1. the real training command


def train_run(data: Path, val: Path, run: Path, steps: int, quick: bool) -> dict[str, Any]:
    """`spkrec train ... --fp16` as a user runs it; returns the run's own records."""
    beside = Path(sys.executable).with_name("spkrec")  # the venv's, without needing it activated
    cmd = [str(beside) if beside.is_file() else "spkrec", "train", str(data), "--val", str(val), "--out", str(run), "--pretrained", "none",
           "--epochs", "1", "--min-steps", str(steps), "--batch-size", "8" if quick else "32", "--fp16"]
    if quick:
        cmd += ["--freeze-layers", "3"]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"training failed ({done.returncode}):\n{done.stderr[-3000:]}")
    metrics = json.loads((run / "metrics.json").read_text())
    return {"command": " ".join(cmd), "seconds": round(time.perf_counter() - started, 1),
            "history": metrics["history"], "file_accuracy": metrics.get("file_accuracy"),
            "precision": json.loads((run / "precision.json").read_text())}


# ---------------------------------------------------------------- 2. training throughput


def training_throughput(data: Path, batches: list[int], steps: int, quick: bool) -> list[dict[str, Any]]:
    """Samples/s of the real Trainer loop per batch size: one warm-up epoch slice, then a timed one."""
    import torch

    from spkrec.training import data as datasets
    from spkrec.training.distributed import Group
    from spkrec.training.train import Trainer, choose_device, seed_everything

    cfg = load_config(None)
    cfg.train.pretrained = "none"
    if quick:
        cfg.train.freeze_layers = 3
    device = choose_device("auto")
    seed_everything(0, device)
    clips = datasets.decode(datasets.discover(data), cfg.train.sample_rate, warn=lambda m: None,
                            cache=cfg.cache_dir() / "decoded")
    labels = datasets.require_speakers(clips)
    rows = []
    plan = [(b, -1) for b in batches] + [(batches[-1], 0)]
    for batch, workers in plan:
        c = copy.deepcopy(cfg)
        c.train.batch_size, c.train.workers = batch, workers
        # Enough crops for warm-up + timed steps in each epoch, whatever the size of the data.
        window = int(round(c.train.window_s * c.train.sample_rate))
        repeat = max(1, -(-(steps + 3) * batch // len(datasets.crops_per_epoch(clips, window))))
        trainer = Trainer(c, clips * repeat, labels, Group(), device, log)
        n_workers = trainer.workers
        try:
            batches = trainer.batches(0)
            trainer.train_epoch(0, batches, max_steps=3)  # cuDNN autotuning, allocator growth, worker start
            stats = trainer.train_epoch(1, batches, max_steps=steps)
        except torch.OutOfMemoryError:
            rows.append({"batch": batch, "workers": n_workers, "error": "out of memory"})
            break
        finally:
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
            batches = None  # stops this size's worker processes
            del trainer
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
        rows.append({"batch": batch, "workers": n_workers,
                     "samples_per_s": round(stats["samples_per_s"], 1),
                     "data_wait_share": round(stats["data_wait_share"], 4), "steps": steps,
                     "peak_gib": None if peak is None else round(peak, 1)})
        log(f"train batch {batch} workers {rows[-1]['workers']}: {rows[-1]['samples_per_s']} samples/s, "
            f"data wait {stats['data_wait_share']:.1%}")
    return rows


# ---------------------------------------------------------------- 3. inference


def timed(fn: Callable[[], Any], repeats: int, sync: Callable[[], None] = lambda: None) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return times


def ort_rows(path: Path, name: str, provider: str, windows: np.ndarray, sizes: list[int], repeats: int,
             io_binding: bool = False) -> dict[str, Any]:
    engine = Engine(path, provider=provider, io_binding=io_binding)
    if engine.device_name != provider:
        return {"system": name, "error": f"asked for {provider}, session runs on {engine.provider}"}
    row: dict[str, Any] = {"system": name, "provider": engine.provider}
    one = windows[:1]
    engine.embed(one)
    row["batch1_ms"] = percentiles(timed(lambda: engine.embed(one), repeats))
    for size in sizes:
        batch = np.resize(windows, (size, windows.shape[1]))
        engine.embed(batch)
        ms = float(np.median(timed(lambda: engine.embed(batch), max(3, repeats // 20))))
        row[f"batch{size}_windows_per_s"] = round(size / ms * 1000, 1)
    return row


def first_call_ms(path: Path, search: str, windows: np.ndarray) -> dict[str, float]:
    """ms of the first call at each new batch size: what a hop pays when one more stream turns voiced."""
    engine = Engine(path, provider="cuda", cuda_options={"cudnn_conv_algo_search": search})
    out = {}
    for size in (1, 2, 3, 4):
        engine.embed(np.resize(windows, (size, windows.shape[1])))
        out[str(size)] = round(engine.last_ms, 1)
    return out


def torch_rows(run: Path, windows: np.ndarray, sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    import torch

    from spkrec.training.reexport import load_run

    net, _, _ = load_run(run)
    net = net.cuda().eval()
    sync = torch.cuda.synchronize
    rows = []
    for name, dtype in (("PyTorch eager fp32", None), ("PyTorch eager bf16 autocast", torch.bfloat16)):
        def embed(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                return net(x)[0].float().cpu()

        one = torch.from_numpy(windows[:1])
        embed(one.cuda())
        row: dict[str, Any] = {"system": name, "provider": f"torch {torch.__version__}",
                               "batch1_ms": percentiles(timed(lambda: embed(one.cuda()), repeats, sync))}
        for size in sizes:
            batch = torch.from_numpy(np.resize(windows, (size, windows.shape[1])))
            embed(batch.cuda())
            ms = float(np.median(timed(lambda: embed(batch.cuda()), max(3, repeats // 20), sync)))
            row[f"batch{size}_windows_per_s"] = round(size / ms * 1000, 1)
        rows.append(row)
    return rows


def inference(run: Path, val: Path, quick: bool) -> dict[str, Any]:
    from spkrec.training import data as datasets

    engine = Engine(run / "model.onnx", provider="cpu")
    clips = datasets.decode(datasets.discover(val), engine.info.sample_rate, warn=lambda m: None)
    windows = np.stack([fit_length(np.asarray(c.samples), engine.info.window_samples) for c in clips[:32]])
    sizes = [8] if quick else [64, 256]
    repeats = 10 if quick else 200
    fp32, fp16 = run / "model.onnx", run / "model.fp16.onnx"
    rows = []
    cuda = "CUDAExecutionProvider" in available_providers()
    if cuda:
        for name, path in (("ORT CUDA fp32", fp32), ("ORT CUDA fp16", fp16)):
            rows.append(ort_rows(path, name, "cuda", windows, sizes, repeats))
            rows.append(ort_rows(path, name + " + IO binding", "cuda", windows, [], repeats, io_binding=True))
            log(f"{name}: {rows[-2]}")
    rows.append(ort_rows(fp32, "ORT CPU fp32", "cpu", windows, [8] if quick else [64], 5 if quick else 50))
    log(f"cpu: {rows[-1]}")
    out: dict[str, Any] = {"windows": len(windows), "window_s": engine.info.window_s, "rows": rows}
    if cuda:
        out["first_call_ms"] = {s: first_call_ms(fp32, s, windows) for s in ("HEURISTIC", "EXHAUSTIVE")}
    import torch

    if torch.cuda.is_available():
        rows += torch_rows(run, windows, sizes, repeats)
    return out


# ---------------------------------------------------------------- report


def report(result: dict[str, Any]) -> str:
    lines = ["| system | batch 1 p50 / p95 ms | windows/s, larger batches |", "|---|---|---|"]
    for row in result.get("inference", {}).get("rows", []):
        if "error" in row:
            lines.append(f"| {row['system']} | {row['error']} | |")
            continue
        b1 = row["batch1_ms"]
        big = ", ".join(f"b{k[5:].split('_')[0]}: {v:,.0f}" for k, v in row.items() if k.endswith("windows_per_s"))
        lines.append(f"| {row['system']} | {b1['p50']} / {b1['p95']} | {big} |")
    lines += ["", "| training batch | workers | samples/s | waiting for data | peak GiB |", "|---|---|---|---|---|"]
    for row in result["training"]:
        if "error" in row:
            lines.append(f"| {row['batch']} | {row['workers']} | {row['error']} | | |")
        else:
            lines.append(f"| {row['batch']} | {row['workers']} | {row['samples_per_s']:,.0f} | "
                         f"{row['data_wait_share']:.1%} | {row['peak_gib']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="training folder (<speaker>/<files>)")
    parser.add_argument("--val", type=Path, required=True, help="validation folder (same speakers)")
    parser.add_argument("--out", type=Path, default=Path("tests/benchmarks/results/gpu.json"))
    parser.add_argument("--run", type=Path, help="keep the training run here (default: a temporary folder)")
    parser.add_argument("--steps", type=int, default=300, help="steps of the real training run")
    parser.add_argument("--batches", default="32,64,128,256,512", help="training batch sizes to time")
    parser.add_argument("--quick", action="store_true", help="small figures, for a CPU smoke run")
    parser.add_argument("--training-only", action="store_true",
                        help="only the training-throughput stage (merged into an existing --out)")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    result: dict[str, Any] = {"machine": gpu_machine(), "command": " ".join(sys.argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after each stage, so a stage that fails leaves the earlier figures
        args.out.write_text(json.dumps(result, indent=1))

    if args.training_only:
        if args.out.is_file():
            result = {**json.loads(args.out.read_text()), "training_command": result["command"]}
        result["training"] = training_throughput(args.data, [int(b) for b in args.batches.split(",")],
                                                 4 if args.quick else 30, args.quick)
        save()
        print(report(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or Path(tmp) / "run"
        log("training run")
        result["train_run"] = train_run(args.data, args.val, run, args.steps, args.quick)
        save()
        log(f"training run done: {result['train_run']['seconds']} s")
        result["inference"] = inference(run, args.val, args.quick)
        save()
        batches = [int(b) for b in args.batches.split(",")]
        result["training"] = training_throughput(args.data, batches, 4 if args.quick else 30, args.quick)
        save()
    print(report(result))


if __name__ == "__main__":
    main()
