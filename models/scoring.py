"""Cosine scoring of embeddings against speaker prototypes, and the open-set decision."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNKNOWN = "unknown"


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Unit-length rows; a zero row stays zero instead of becoming NaN."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def mean_embedding(embeddings: np.ndarray) -> np.ndarray:
    """The normalised mean: how a file, a speaker or an enrollment becomes one voiceprint."""
    return normalize(normalize(embeddings).mean(axis=0))


def cosine_scores(embeddings: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """[..., D] x [N, D] -> [..., N] cosine similarities."""
    return normalize(embeddings) @ normalize(prototypes).T


@dataclass(frozen=True)
class Decision:
    """Who a window or file is attributed to, with the evidence."""

    label: str  # a speaker name, or UNKNOWN
    score: float  # best cosine score
    candidates: tuple[tuple[str, float], ...]  # best first

    @property
    def known(self) -> bool:
        return self.label != UNKNOWN


def decide(scores: np.ndarray, labels: tuple[str, ...] | list[str], threshold: float,
           margin: float = 0.0, top_k: int = 5) -> Decision:
    """Open-set decision over one row of scores.

    The best label wins only if its score clears ``threshold`` and beats the runner-up by
    ``margin``: a voice that sits between two enrolled speakers is "unknown", not a coin flip.
    """
    order = np.argsort(-scores)[: max(top_k, 2)]
    candidates = tuple((labels[i], float(scores[i])) for i in order)
    if not candidates:
        return Decision(UNKNOWN, 0.0, ())
    best = candidates[0][1]
    runner_up = candidates[1][1] if len(candidates) > 1 else -1.0
    accepted = best >= threshold and best - runner_up >= margin
    return Decision(candidates[0][0] if accepted else UNKNOWN, best, candidates[:top_k])
