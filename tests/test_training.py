"""Train a small model on real speech through the CLI, export it, and check the artifact."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import torch

from spkrec.models.engine import Engine
from spkrec.models.windows import fit_length
from spkrec.training import data as datasets
from spkrec.training.export import parity
from spkrec.training.reexport import load_run

from conftest import LIBRI, TRAIN_SPEAKERS, spkrec


def _validation(run_dir):
    split = json.loads((run_dir / "split.json").read_text())
    return [datasets.Item(__import__("pathlib").Path(r["path"]), r["label"]) for r in split["validation"]]


def test_run_writes_model_metrics_and_plots(trained_run):
    for name in ("model.onnx", "model.pt", "checkpoint.pt", "metrics.json", "confusion.png", "split.json", "config.json"):
        assert (trained_run / name).is_file(), name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for key in ("file_accuracy", "window_accuracy", "confusion", "file_pairs", "thresholds", "pretrained"):
        assert key in metrics, key
    assert metrics["pretrained"].startswith("speaker (base model")  # the default: fine-tune the shipped encoder
    assert set(metrics["file_pairs"]) >= {"eer", "min_dcf_p0.01"}
    assert np.array(metrics["confusion"]).sum() == len(_validation(trained_run))
    assert metrics["parity_max_abs_diff"] <= 1e-3


def test_metadata_round_trips_into_the_runtime(trained_run):
    info = Engine(trained_run / "model.onnx", provider="cpu").info
    assert info.labels == TRAIN_SPEAKERS
    assert info.sample_rate == 16000 and info.window_s == 2.0 and info.hop_s == 0.5
    assert info.prototypes.shape == (3, info.embedding_dim)
    assert np.allclose(np.linalg.norm(info.prototypes, axis=1), 1.0, atol=1e-5)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert info.fingerprint == metrics["fingerprint"]
    assert info.thresholds["eer"] == metrics["thresholds"]["eer"]
    assert info.training["pretrained"] == metrics["pretrained"]
    assert info.training["data"]["speakers"] == 3


def test_pytorch_and_onnxruntime_agree_on_real_speech(trained_run):
    net = load_run(trained_run)[0]
    clips = datasets.decode(_validation(trained_run), 16000)
    # dynamic batch and length: 3 windows of 3 s, longer than the 2 s the graph was traced with
    batch = np.stack([fit_length(c.samples, 48000) for c in clips[:3]])
    assert parity(net, trained_run / "model.onnx", batch) <= 1e-3


def test_model_loads_and_runs_without_torch(trained_run):
    code = (
        "import sys, numpy as np\n"
        "from spkrec.models.engine import Engine\n"
        f"e = Engine({str(trained_run / 'model.onnx')!r}, provider='cpu')\n"
        "out = e.embed(np.random.default_rng(0).standard_normal((2, 24000)).astype(np.float32) * 0.1)\n"
        "assert out.shape == (2, e.info.embedding_dim)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok', e.provider)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok CPUExecutionProvider")


def test_identify_names_held_out_files(trained_run):
    items = _validation(trained_run)
    done = spkrec("identify", "--model", str(trained_run / "model.onnx"), "--json", *[str(i.path) for i in items], check=True)
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) == len(items)
    correct = sum(r["candidates"][0][0] == i.label for r, i in zip(results, items))
    assert correct >= 2 * len(items) / 3, results
    assert all(len(r["candidates"]) == 3 and r["score"] == r["candidates"][0][1] for r in results)


def test_eval_command_writes_metrics(trained_run, speakers_dir, tmp_path):
    done = spkrec("eval", str(trained_run / "model.onnx"), str(speakers_dir), "--out", str(tmp_path), "--json", check=True)
    metrics = json.loads(done.stdout)
    assert metrics["files"] == 30 and 0.0 <= metrics["file_pairs"]["eer"] <= 1.0
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "confusion.png").stat().st_size > 1000


def test_reexport_with_int8_and_fp16_copies(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    done = spkrec("export", str(run), "--int8", "--fp16", check=True)
    assert "parity" in done.stderr
    report = json.loads((run / "precision.json").read_text())
    assert report["int8"]["megabytes"] < report["fp32"]["megabytes"] / 2
    int8 = Engine(run / "model.int8.onnx", provider="cpu")
    assert int8.info.precision == "int8" and int8.info.labels == TRAIN_SPEAKERS
    assert report["int8"]["min_cosine_to_fp32"] > 0.98 and report["int8"]["file_accuracy"] == report["fp32"]["file_accuracy"]
    ops = {n.op_type for n in __import__("onnx").load(str(run / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # static QDQ, not dynamic ConvInteger
    assert "ConvInteger" not in ops
    # fp16: half the size, the same decisions on the validation files, embeddings within rounding.
    fp16 = Engine(run / "model.fp16.onnx", provider="cpu")
    assert fp16.info.precision == "fp16" and fp16.info.labels == TRAIN_SPEAKERS
    assert report["fp16"]["megabytes"] < report["fp32"]["megabytes"] * 0.6
    assert report["fp16"]["min_cosine_to_fp32"] > 0.999
    assert report["fp16"]["file_accuracy"] == report["fp32"]["file_accuracy"]
    # copies of another precision compute the same embedding space: voiceprints serve all of them
    assert fp16.info.fingerprint == int8.info.fingerprint == Engine(run / "model.onnx", provider="cpu").info.fingerprint


def test_torchrun_two_gloo_processes_train_like_one(speakers_dir, tmp_path):
    """`torchrun --nproc-per-node 2 spkrec train ...` on CPU: one process group (gloo), each rank
    half of every batch, one writer for checkpoints and the model, the usual results."""
    torchrun = Path(sys.executable).with_name("torchrun")
    spkrec_exe = Path(sys.executable).with_name("spkrec")
    run = tmp_path / "run"
    done = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "--no-python", str(spkrec_exe),
                           "train", str(speakers_dir), "--out", str(run), "--epochs", "1", "--min-steps", "0",
                           "--steps-per-speaker", "0", "--batch-size", "8", "--freeze-layers", "3", "--pretrained", "none",
                           "--stem-pool", "2x2", "--pooling", "avg", "--seed", "0"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("distributed: 2 processes (gloo), 4 crops each per step") == 1  # rank 0 speaks
    assert done.stderr.count("model written:") == 1
    assert done.stderr.count("estimate: ") == 1  # measured by every rank, said by one
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["processes"] == {"world_size": 2, "backend": "gloo", "device": "cpu"}
    history = metrics["history"][0]
    assert history["samples_per_s"] > 0 and 0 <= history["data_wait_share"] < 1
    assert torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["epoch"] == 1
    assert not list(run.glob("*.partial"))
    assert Engine(run / "model.onnx", provider="cpu").info.labels == TRAIN_SPEAKERS


def test_resume_continues_from_the_checkpoint(trained_run, speakers_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["epoch"]
    extra = before + 1
    done = spkrec("train", str(speakers_dir), "--out", str(run), "--epochs", str(extra), "--min-steps", "0",
                  "--steps-per-speaker", "0", "--batch-size", "16", "--freeze-layers", "4", "--resume", check=True)
    assert f"resuming after epoch {before}" in done.stderr
    # the estimate counts only what is left, timed on this machine before the first step
    estimate = re.search(r"estimate: (\d+) steps x ([\d.]+) s \(measured on this cpu\) = about \d+ min", done.stderr)
    assert estimate and 0 < int(estimate[1]) and 0 < float(estimate[2]), done.stderr
    assert done.stderr.index("estimate:") < done.stderr.index("model written:")
    assert torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["epoch"] == extra


def test_broken_and_foreign_models_are_one_line_errors(trained_run, tmp_path, speakers_dir):
    wav = str(next((speakers_dir / "1688").iterdir()))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 100)
    old = tmp_path / "old.onnx"
    model = onnx.load(str(trained_run / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == "spkrec.format_version":
            prop.value = "99"
    onnx.save(model, str(old))
    for path, expected in ((tmp_path / "missing.onnx", "model file not found"), (corrupt, "not a loadable ONNX model"),
                           (old, "format version 99")):
        done = spkrec("identify", "--model", str(path), wav)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("spkrec: error:") and expected in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_same_seed_same_model(speakers_dir, tmp_path):
    fingerprints = []
    for name in ("a", "b"):
        spkrec("train", str(speakers_dir), "--out", str(tmp_path / name), "--epochs", "1", "--min-steps", "2", "--steps-per-speaker", "0",
               "--batch-size", "4", "--freeze-layers", "3", "--pretrained", "none", "--stem-pool", "2x2",
               "--pooling", "avg", "--seed", "7", check=True)
        fingerprints.append(json.loads((tmp_path / name / "metrics.json").read_text())["fingerprint"])
    assert fingerprints[0] == fingerprints[1]
    assert (tmp_path / "a" / "split.json").read_text() == (tmp_path / "b" / "split.json").read_text()


def test_held_out_voices_pick_the_epoch_and_stay_out_of_training(tmp_path):
    """With train.val_voices set, whole voices are kept out of training and the epoch exported is
    the one with the lowest open-set EER on them."""
    data = tmp_path / "voices"
    data.mkdir()
    voices = sorted(d.name for d in LIBRI.iterdir() if d.is_dir())[:5]
    for speaker in voices:
        (data / speaker).symlink_to(LIBRI / speaker, target_is_directory=True)
    config = tmp_path / "config.toml"
    config.write_text("[train]\nval_voices = 2\n")
    run = tmp_path / "run"
    done = spkrec("train", str(data), "--out", str(run), "--config", str(config), "--epochs", "2", "--min-steps", "0",
                  "--steps-per-speaker", "0", "--batch-size", "4", "--freeze-layers", "4", "--pretrained", "none",
                  "--stem-pool", "2x2", "--pooling", "avg", "--seed", "0", check=True)  # the machinery, cheaply
    metrics = json.loads((run / "metrics.json").read_text())
    held = metrics["held_out_voices"]
    assert len(held["voices"]) == 2 and len(held["per_epoch"]) == 2
    assert held["eer"] == min(held["per_epoch"]) and f"kept epoch {held['best_epoch']}" in done.stderr
    labels = Engine(run / "model.onnx", provider="cpu").info.labels
    assert len(labels) == 3 and not set(labels) & set(held["voices"])
