"""Who spoke when, without knowing who: clustering window embeddings into speakers.

The scale a cosine score lives on depends on what it compares. Two single windows of one
voice agree less than a window and the centroid of that voice's many windows, and two
centroids of one voice agree more still. So a clustering threshold taken from single-window
verification (the model's ``eer``) merges too little once clusters grow, and a hand-picked one
fits one encoder only. The model carries both scales instead, measured at export on held-out
voices (``measure_scales``):

- ``cluster_window``: a window against the centroid of a speaker's other windows;
- ``cluster_centroid``: the centroids of two stretches of speech (``SEGMENT_WINDOWS`` windows).

Each is the equal-error point between same-voice and different-voice pairs, so a merge is
as likely to be wrong one way as the other, for any encoder in the contract.

The agglomerative clustering merges the closest pair of clusters first, by the cosine of their
centroids, against the threshold for the size of the smaller (a window's scale while it is a
few windows, a centroid's once both are segments), and stops when no pair clears its
threshold. Clusters with too little speech to be a speaker are then folded into the closest
large one (a cough, a mixed window at a change of speaker), as pyannote does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np

from .calibration import verification
from .errors import ModelError
from .scoring import normalize
from .windows import frame_windows

SEGMENT_WINDOWS = 8  # windows in a centroid of `cluster_centroid`: 4.5 s of speech at hop 0.5 s
SCALE_KEYS = ("cluster_window", "cluster_centroid")


@dataclass(frozen=True)
class Scales:
    """The two clustering thresholds of a model (cosines), read from its metadata."""

    window: float
    centroid: float

    @classmethod
    def of(cls, thresholds: Mapping[str, float], source: str | None = None) -> "Scales":
        """A model's scales. A model without them is refused: no threshold that stands in for
        them fits every encoder (a window ``eer`` merged four voices of an encoder whose cosines
        run high into one guest), and `spkrec scales` stamps them in a minute."""
        if any(k not in thresholds for k in SCALE_KEYS):
            raise ModelError(f"{source or 'the model'} carries no clustering scales, which meetings and the one-voice "
                             f"check of enrollment need: stamp them with `spkrec scales {source or 'MODEL'} --voices "
                             "DIR` (DIR/<voice>/<files>, voices it never trained on; README, Meetings)")
        return cls(float(thresholds["cluster_window"]), float(thresholds["cluster_centroid"]))

    def threshold(self, size: "int | np.ndarray") -> "float | np.ndarray":
        """The merge threshold for two clusters, the smaller of which has ``size`` windows: the
        window scale for one window, the centroid scale from SEGMENT_WINDOWS on, and in between
        a straight line (a cluster of four windows is neither a window nor a segment)."""
        share = np.clip((np.asarray(size) - 1) / (SEGMENT_WINDOWS - 1), 0.0, 1.0)
        return self.window + share * (self.centroid - self.window)


def _segments(windows: np.ndarray) -> list[np.ndarray]:
    """Centroids of consecutive, non-overlapping runs of SEGMENT_WINDOWS windows (unit rows)."""
    step = SEGMENT_WINDOWS + 3  # 3 hops apart: two segments share no audio (2-s windows, hop 0.5 s)
    return [normalize(windows[i:i + SEGMENT_WINDOWS].mean(axis=0))
            for i in range(0, len(windows) - SEGMENT_WINDOWS + 1, step)]


def two_parts(embeddings: np.ndarray, iterations: int = 20) -> tuple[float, float]:
    """Split window embeddings in two (spherical 2-means, started from the sign of the first
    principal direction); returns the smaller part's share of the windows and the cosine of the
    two parts' centroids. One voice recorded in several sessions splits by session into parts
    that still agree like two stretches of one voice; two voices split into parts that do not."""
    e = normalize(embeddings)
    centred = e - e.mean(axis=0)
    labels = (centred @ np.linalg.svd(centred, full_matrices=False)[2][0] > 0).astype(int)
    for _ in range(iterations + 1):
        if labels.min() == labels.max():
            return 0.0, 1.0
        centroids = normalize(np.stack([e[labels == j].mean(axis=0) for j in (0, 1)]))
        nearest = np.argmax(e @ centroids.T, axis=1)
        if np.array_equal(nearest, labels):
            break
        labels = nearest
    share = float(labels.mean())
    return min(share, 1.0 - share), float(centroids[0] @ centroids[1])


def voice_windows(embed: Callable[[np.ndarray], np.ndarray], voices: Mapping[str, Iterable[np.ndarray]],
                  window: int, hop: int) -> dict[str, np.ndarray]:
    """Window embeddings at ``hop`` of each voice's recordings, in order: what measure_scales takes."""
    out = {}
    for voice, recordings in voices.items():
        windows = [frame_windows(audio, window, hop) for audio in recordings if audio.size >= window]
        parts = [embed(w[i:i + 16]) for w in windows for i in range(0, len(w), 16)]
        if parts:
            out[voice] = np.concatenate(parts)
    return out


def measure_scales(per_voice: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Both clustering thresholds from held-out voices' window embeddings (hop 0.5 s, in order).

    Windows: each window against the centroid of a stretch of its own voice it does not
    overlap, and against every stretch of the other voices. Centroids: every pair of stretches,
    same voice or not. Equal-error points of each.
    """
    voices = {v: normalize(e) for v, e in per_voice.items() if len(e) >= SEGMENT_WINDOWS}
    if len(voices) < 2:
        raise ValueError("clustering scales need at least two voices with 4.5 s of speech each")
    segs = {v: _segments(e) for v, e in voices.items()}
    window_same, window_diff, seg_same, seg_diff = [], [], [], []
    step = SEGMENT_WINDOWS + 3
    for v, e in voices.items():
        for s, centroid in enumerate(segs[v]):
            lo, hi = s * step - 3, s * step + SEGMENT_WINDOWS + 3  # windows overlapping this stretch
            outside = [j for j in range(len(e)) if j < lo or j >= hi]
            window_same += [float(x) for x in e[outside] @ centroid]
        others = np.concatenate([np.stack(segs[w]) for w in voices if w != v])
        window_diff += [float(x) for x in (e[::2] @ others.T).ravel()]
    names = sorted(voices)
    for i, v in enumerate(names):
        a = np.stack(segs[v])
        seg_same += [float(a[p] @ a[q]) for p in range(len(a)) for q in range(p + 1, len(a))]
        for w in names[i + 1:]:
            seg_diff += [float(x) for x in (a @ np.stack(segs[w]).T).ravel()]
    if not window_same or not seg_same:
        raise ValueError("clustering scales need voices with at least 11 s of speech (two stretches)")
    return {"cluster_window": verification(np.array(window_same), np.array(window_diff)).eer_threshold,
            "cluster_centroid": verification(np.array(seg_same), np.array(seg_diff)).eer_threshold}


def agglomerate(sums: np.ndarray, scales: Scales, max_clusters: int = 0, sizes: np.ndarray | None = None) -> np.ndarray:
    """Cluster index per row. A row is a window's embedding, or the sum of a cluster's unit
    embeddings with its ``sizes`` (the live clustering starts from its speakers so far).
    Centroid linkage; each step merges the pair whose cosine clears the threshold for the
    smaller one's size by the most, and goes on below it while there are more than
    ``max_clusters`` (0: no limit). O(n^2) memory: callers bound n."""
    n = len(sums)
    if n == 0:
        return np.zeros(0, int)
    sums = np.asarray(sums, np.float64).copy()
    sizes = np.ones(n, int) if sizes is None else np.asarray(sizes, int).copy()
    members = np.arange(n)
    alive = np.ones(n, bool)
    unit = normalize(sums).astype(np.float64)
    limits = scales.threshold(np.minimum.outer(sizes, sizes))
    margin = unit @ unit.T - limits
    np.fill_diagonal(margin, -np.inf)
    while alive.sum() > 1:
        flat = int(np.argmax(margin))
        i, j = divmod(flat, n)
        if not margin[i, j] > 0 and not 0 < max_clusters < alive.sum():
            break
        sums[i] += sums[j]
        sizes[i] += sizes[j]
        members[members == j] = i
        alive[j] = False
        margin[j, :] = margin[:, j] = -np.inf
        row = normalize(sums[alive]).astype(np.float64) @ (sums[i] / np.linalg.norm(sums[i]))
        limits = scales.threshold(np.minimum(sizes[i], sizes[alive]))
        margin[i, alive] = margin[alive, i] = row - limits
        margin[i, i] = -np.inf
    _, labels = np.unique(members, return_inverse=True)
    return labels


def fold_small(sums: np.ndarray, labels: np.ndarray, weights: np.ndarray, min_weight: float) -> np.ndarray:
    """Clusters whose total weight (seconds of speech) is under ``min_weight`` join the closest
    cluster that is not, row by row; renumbered by first appearance."""
    totals = np.bincount(labels, weights=weights)
    large = np.flatnonzero(totals >= min_weight)
    if large.size == 0:
        large = np.array([int(np.argmax(totals))])
    centroids = centroids_of(sums, labels)[large]
    out = labels.copy()
    small = ~np.isin(labels, large)
    if small.any():
        out[small] = large[np.argmax(normalize(sums[small]) @ centroids.T, axis=1)]
    return by_first_appearance(out)


def by_first_appearance(labels: np.ndarray) -> np.ndarray:
    """Cluster indices renumbered 0, 1, ... in the order they first occur (guest numbers follow it)."""
    _, first = np.unique(labels, return_index=True)
    order = {k: r for r, k in enumerate(labels[np.sort(first)])}
    return np.array([order[k] for k in labels], int)


def centroids_of(sums: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit centroid per cluster index 0..max(labels) (rows: unit embeddings or cluster sums)."""
    out = np.zeros((int(labels.max()) + 1, sums.shape[1]))
    np.add.at(out, labels, sums)
    return normalize(out)


MAX_CLUSTERED = 2000  # windows clustered at once (16 minutes of speech); more are assigned to them


def cluster(embeddings: np.ndarray, weights: np.ndarray, scales: Scales, min_speaker_s: float,
            max_speakers: int = 0) -> np.ndarray:
    """Speaker index per window (0, 1, ... by first appearance): agglomerate, then fold the
    clusters with less than ``min_speaker_s`` of speech (``weights``: seconds per window) into the
    closest speaker. A long recording is clustered on an even subsample of MAX_CLUSTERED windows,
    whose centroids then take every window: the cost stays bounded however long the meeting."""
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, int)
    embeddings = normalize(embeddings)
    pick = np.linspace(0, n - 1, min(n, MAX_CLUSTERED)).round().astype(int)
    labels = agglomerate(embeddings[pick], scales, max_speakers)
    labels = fold_small(embeddings[pick], labels, weights[pick] * n / len(pick), min_speaker_s)
    if len(pick) < n:
        labels = np.argmax(normalize(embeddings) @ centroids_of(embeddings[pick], labels).T, axis=1)
        labels = fold_small(embeddings, labels, weights, min_speaker_s)
    return labels
