"""Evaluation of a speaker model on labelled files: accuracy, confusion, EER, minDCF, thresholds.

It works on an ``embed`` function (windows -> unit embeddings), so the same code measures the
PyTorch network right after training and an exported ONNX file through ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from spkrec.models.calibration import verification
from spkrec.models.scoring import cosine_scores, mean_embedding
from spkrec.models.windows import frame_windows

from .data import Clip

EmbedFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Embedded:
    """Window embeddings of one file, with its label."""

    label: str
    windows: np.ndarray  # [n, D]

    @property
    def file_embedding(self) -> np.ndarray:
        return mean_embedding(self.windows)


def embed_clips(embed: EmbedFn, clips: Sequence[Clip], window: int, batch_size: int = 16,
                on_clip: Callable[[], None] | None = None) -> list[Embedded]:
    """Non-overlapping windows of every clip, embedded in batches."""
    out = []
    for clip in clips:
        windows = frame_windows(clip.samples, window, window)
        parts = [embed(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]
        out.append(Embedded(clip.label, np.concatenate(parts)))
        if on_clip:
            on_clip()
    return out


def pair_eer(embeddings: np.ndarray, labels: Sequence[str]) -> float:
    """Equal-error rate over all pairs of the given unit embeddings (same label = target)."""
    scores = embeddings @ embeddings.T
    same = np.equal.outer(np.array(labels), np.array(labels))
    upper = np.triu(np.ones_like(same, dtype=bool), k=1)
    return verification(scores[upper & same], scores[upper & ~same]).eer


def open_set_eer(embed: EmbedFn, clips: Sequence[Clip], window: int, per_voice: int = 8) -> float:
    """Window-pair EER on voices the run never trains on: what enrolling a stranger will meet."""
    windows, labels = [], []
    for e in embed_clips(embed, clips, window):
        room = per_voice - labels.count(e.label)
        windows.append(e.windows[:room])
        labels += [e.label] * len(e.windows[:room])
    return pair_eer(np.concatenate(windows), labels)


def prototypes(embedded: Sequence[Embedded], labels: Sequence[str]) -> np.ndarray:
    """Normalised mean embedding of each speaker's audio: enrollment, applied to training data."""
    rows = []
    for label in labels:
        windows = [e.windows for e in embedded if e.label == label]
        if not windows:
            raise ValueError(f"no audio for speaker {label!r} to build its prototype")
        rows.append(mean_embedding(np.concatenate(windows)))
    return np.stack(rows).astype(np.float32)


def evaluate(embedded: Sequence[Embedded], labels: Sequence[str], protos: np.ndarray) -> dict:
    """Closed-set accuracy, confusion matrix, pair verification and calibrated thresholds.

    Thresholds are calibrated on what the daemon actually scores (one window against every
    speaker prototype), while EER and minDCF are also reported on file pairs, the usual
    verification protocol.
    """
    index = {label: i for i, label in enumerate(labels)}
    known = [e for e in embedded if e.label in index]
    metrics: dict = {"files": len(embedded), "speakers": len({e.label for e in embedded})}
    if known:
        window_scores = np.concatenate([cosine_scores(e.windows, protos) for e in known])
        window_truth = np.concatenate([np.full(len(e.windows), index[e.label]) for e in known])
        file_scores = cosine_scores(np.stack([e.file_embedding for e in known]), protos)
        file_truth = np.array([index[e.label] for e in known])
        confusion = np.zeros((len(labels), len(labels)), dtype=int)
        for truth, guess in zip(file_truth, file_scores.argmax(axis=1)):
            confusion[truth, guess] += 1
        metrics.update(
            window_accuracy=float(np.mean(window_scores.argmax(axis=1) == window_truth)),
            file_accuracy=float(np.mean(file_scores.argmax(axis=1) == file_truth)),
            windows=int(len(window_truth)),
            confusion=confusion.tolist(),
        )
        is_target = np.zeros_like(window_scores, dtype=bool)
        is_target[np.arange(len(window_truth)), window_truth] = True
        if len(labels) > 1:
            v = verification(window_scores[is_target], window_scores[~is_target])
            metrics["window_vs_prototype"] = _verification_dict(v)
            metrics["thresholds"] = {"eer": v.eer_threshold, "far1": v.far1_threshold}
    pairs = _file_pairs(embedded)
    if pairs is not None:
        metrics["file_pairs"] = _verification_dict(verification(*pairs))
    return metrics


def _file_pairs(embedded: Sequence[Embedded]) -> tuple[np.ndarray, np.ndarray] | None:
    """Scores of all same-speaker and different-speaker file pairs."""
    if len(embedded) < 2:
        return None
    files = np.stack([e.file_embedding for e in embedded])
    labels = np.array([e.label for e in embedded])
    scores = files @ files.T
    upper = np.triu_indices(len(files), k=1)
    same = labels[upper[0]] == labels[upper[1]]
    if not same.any() or same.all():
        return None
    return scores[upper][same], scores[upper][~same]


def _verification_dict(v) -> dict:
    return {
        "eer": v.eer,
        "eer_threshold": v.eer_threshold,
        "min_dcf_p0.01": v.min_dcf,
        "far1_threshold": v.far1_threshold,
        "target_trials": v.n_target,
        "nontarget_trials": v.n_nontarget,
    }


def save_confusion_png(confusion: Sequence[Sequence[int]], labels: Sequence[str], path: Path) -> None:
    """The file-level confusion matrix as a picture, for people rather than programs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion)
    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                    color="white" if value > matrix.max() / 2 else "black")
    ax.set_title("file-level confusion")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
