"""The base model's ONNX file: the trained encoder, calibrated on held-out voices, fp16 storage.

A general encoder has no trained speakers: its file carries no labels, and its thresholds are
measured the way the daemon scores, on the voices the run held out (never the unseen test set):
a window against the voiceprint of the rest of its voice (``eer``, ``far1``), and the enrollment
agreement statistic of one voice against two voices mixed (``consistency``), and the two
clustering scales of meeting mode (``models.clustering.measure_scales``).

The weights are stored as fp16 with a Cast to float32 in front of each (ONNX Runtime folds the
casts when the session is built): the file stays under the 50 MB a shipped model may weigh, and
inference still runs in float32 on any provider (the front end's DFT and mel matrices too:
their rounding moves embeddings less than the weights' own, checked at export).

    python -m spkrec.training.baseexport RUN/base.pt --corpus DIR --out models/base/spkrec-base.onnx
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from spkrec.models import __version__
from spkrec.models.artifact import ModelInfo, save_atomically, stamp
from spkrec.models.calibration import verification
from spkrec.models.clustering import measure_scales
from spkrec.models.engine import Engine
from spkrec.models.errors import ModelError
from spkrec.models.scoring import mean_embedding, normalize
from spkrec.models.windows import fit_length, frame_windows

from .basemodel import Recipe, build, load_speakers, read_index
from .export import export_onnx
from .network import SpeakerNet

MIN_COSINE_TO_FP32 = 0.999


class Encoder(nn.Module):
    """The network without a classifier: embeddings, and an empty logits output (no trained
    speakers), so the file keeps the contract's two outputs."""

    def __init__(self, net: SpeakerNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding, _ = self.net(waveform)
        return embedding, embedding[:, :0]


def load_encoder(path: Path) -> tuple[SpeakerNet, Recipe, dict]:
    """(network in eval mode, recipe, training report) from a base-model run's ``base.pt``."""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    recipe = Recipe(**{**saved["recipe"], "speed_factors": tuple(saved["recipe"]["speed_factors"])})
    net = build(recipe, classes=1)
    missing, unexpected = net.load_state_dict({k: v.float() for k, v in saved["weights"].items()}, strict=False)
    if unexpected or set(missing) - {"classifier"}:
        raise ModelError(f"{path} does not fit the recipe's network (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net.eval(), recipe, saved["report"]


def _window_embeddings(net: SpeakerNet, audio: np.ndarray, recipe: Recipe) -> np.ndarray:
    windows = frame_windows(audio, int(recipe.crop_s * recipe.sample_rate), recipe.sample_rate // 2)
    with torch.no_grad():
        return net(torch.from_numpy(windows))[0].numpy()


def calibrate(per_voice: dict[str, np.ndarray]) -> dict:
    """Thresholds from held-out voices' window embeddings (hop 0.5 s).

    Targets: each window against the voiceprint of its voice's windows that do not overlap it;
    non-targets: each window against every other voice's full voiceprint.
    """
    labels = sorted(per_voice)
    prints = np.stack([mean_embedding(per_voice[l]) for l in labels])
    targets, nontargets = [], []
    for i, label in enumerate(labels):
        e = per_voice[label]
        for j in range(len(e)):
            rest = [k for k in range(len(e)) if abs(k - j) >= 4]  # 4 hops = one 2-s window apart
            if rest:
                targets.append(float(e[j] @ mean_embedding(e[rest])))
            nontargets += [float(e[j] @ prints[k]) for k in range(len(labels)) if k != i]
    v = verification(np.array(targets), np.array(nontargets))
    return {"eer": v.eer_threshold, "far1": v.far1_threshold, "window_eer": v.eer,
            "targets": len(targets), "nontargets": len(nontargets)}


def consistency_threshold(per_voice: dict[str, np.ndarray]) -> tuple[float, dict]:
    """The enrollment agreement (5th percentile of window . mean, as ``daemon.enroll`` checks it)
    below which an enrollment is refused as more than one voice: the median over two held-out
    voices recorded as one enrollment in equal shares (the hardest mixture for this statistic;
    unequal ones score lower). One held-out utterance scores well above it, but several
    recordings of one real voice less so (0.45-0.5 on test-other), hence the median, not a
    stricter point."""
    def agreement(e: np.ndarray) -> float:
        return float(np.percentile(e @ mean_embedding(e), 5))

    labels = sorted(per_voice)
    single = [agreement(per_voice[l]) for l in labels]
    mixed = [agreement(np.concatenate([per_voice[a], per_voice[b]]))
             for i, a in enumerate(labels) for b in labels[i + 1:]]
    threshold = float(np.median(mixed))
    return threshold, {"single_voice_min": float(np.min(single)), "mixed_median": threshold,
                       "single_refused": float(np.mean(np.array(single) < threshold)),
                       "mixed_accepted": float(np.mean(np.array(mixed) >= threshold))}


def fp16_storage(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store float32 tensors of 1024 values or more (initializers and the front end's constant
    DFT and mel matrices) as fp16 initializers behind a Cast back to float32."""
    graph = model.graph
    casts, kept, nodes = [], [], []

    def stored_half(name: str, array: np.ndarray) -> None:
        half = numpy_helper.from_array(array.astype(np.float16), name + "_fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [name], to=TensorProto.FLOAT, name=f"/storage/{name}/Cast"))

    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and np.prod(init.dims) >= 1024:
            stored_half(init.name, numpy_helper.to_array(init))
        else:
            kept.append(init)
    for node in graph.node:
        value = node.attribute[0].t if node.op_type == "Constant" and node.attribute[0].name == "value" else None
        if value is not None and value.data_type == TensorProto.FLOAT and np.prod(value.dims) >= 1024:
            stored_half(node.output[0], numpy_helper.to_array(value))
        else:
            nodes.append(node)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    return model


def corpus_summary(corpus: Path, held_out: list[str]) -> dict:
    """Voices, minutes and licences per origin that training used (held-out voices apart)."""
    origins: dict[str, dict] = {}
    for s in read_index(corpus)["speakers"]:
        if s["label"] in held_out:
            continue
        o = origins.setdefault(s["origin"], {"voices": 0, "minutes": 0.0, "licence": s.get("licence", "")})
        o["voices"] += 1
        o["minutes"] = round(o["minutes"] + s["seconds"] / 60, 1)
    return origins


def export_base(weights: Path, corpus: Path, out: Path, log=print) -> ModelInfo:
    net, recipe, report = load_encoder(weights)
    speakers = load_speakers(corpus, recipe.sample_rate)
    held_out = {l: speakers[l] for l in report["val_voices"]}
    per_voice = {l: _window_embeddings(net, a, recipe) for l, a in held_out.items()}
    # Centring and unit length happen inside the network; the embeddings are as the daemon sees them.
    cal = calibrate(per_voice)
    consistency, consistency_report = consistency_threshold(per_voice)
    thresholds = {"eer": cal["eer"], "far1": cal["far1"], "consistency": consistency, **measure_scales(per_voice)}
    log(f"held-out voices: window EER {cal['window_eer']:.2%}, thresholds {json.dumps(thresholds)}")
    training = {
        "spkrec_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kind": "base encoder", "pretrained": report["pretrained"], "loss": "aam",
        "steps": report["best_step"], "run_steps": report["steps"], "device": report.get("device", ""),
        "data": corpus_summary(corpus, report["val_voices"]), "held_out_voices": report["val_voices"],
        "validation": {"held_out_voice_window_pair_eer": report["best_val_voice_eer"],
                       "held_out_window_vs_voiceprint_eer": cal["window_eer"],
                       "consistency": consistency_report},
        "recipe": {k: v for k, v in dataclasses.asdict(recipe).items() if k != "augment"},
    }
    info = ModelInfo(sample_rate=recipe.sample_rate, window_s=recipe.crop_s, hop_s=0.5,
                     embedding_dim=recipe.embedding_dim, labels=(),
                     prototypes=np.zeros((0, recipe.embedding_dim), np.float32), thresholds=thresholds,
                     fingerprint="", training=training, precision="fp16-storage")
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "fp32.onnx"
        export_onnx(Encoder(net), info, full)
        model = fp16_storage(onnx.load(str(full)))
    info = stamp(model, info)
    save_atomically(model, out)
    cosine = check_against_torch(net, out, held_out)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB), fingerprint {info.fingerprint}, "
        f"lowest cosine to float32 {cosine:.5f}")
    return info


def check_against_torch(net: SpeakerNet, path: Path, voices: dict[str, np.ndarray]) -> float:
    """Lowest cosine between the file's embeddings and float32 PyTorch's on real windows."""
    batch = np.stack([fit_length(a, 32000) for a in list(voices.values())[:8]])
    with torch.no_grad():
        reference = net(torch.from_numpy(batch))[0].numpy()
    served = Engine(path, provider="cpu").embed(batch)
    cosine = float(np.min(np.sum(normalize(reference) * normalize(served), axis=1)))
    if cosine < MIN_COSINE_TO_FP32:
        raise ModelError(f"fp16 storage moved embeddings too far (lowest cosine to float32 {cosine:.4f})")
    return cosine


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spkrec.training.baseexport", description=__doc__.split("\n")[0])
    parser.add_argument("weights", help="base.pt of a base-model run")
    parser.add_argument("--corpus", required=True, help="the packed corpus the run trained on (its held-out voices)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    export_base(Path(args.weights), Path(args.corpus), Path(args.out))


if __name__ == "__main__":
    main()
