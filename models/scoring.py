"""Cosine scoring of embeddings against speaker prototypes, and the open-set decision."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

UNKNOWN = "unknown"
GUEST_PREFIX = "Guest"  # meeting mode's voices nobody enrolled: "Guest 1", "Guest 2", ...
_GUEST = re.compile(rf"^{GUEST_PREFIX}[\s_-]*\d+$", re.IGNORECASE)  # also as RTTM writes it ("Guest_1")


def guest_label(number: int) -> str:
    return f"{GUEST_PREFIX} {number}"


def is_guest(label: str) -> bool:
    """A meeting guest's label, however it is spelt: never an enrolled name (the gallery refuses it)."""
    return bool(_GUEST.match(label))


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


def as_norm(scores: np.ndarray, enroll_cohort: np.ndarray, test_cohort: np.ndarray, top_k: int) -> np.ndarray:
    """Adaptive symmetric score normalisation (AS-norm) against an impostor cohort.

    ``scores`` [T, N] are raw cosines of T tests against N voiceprints; ``enroll_cohort`` [N, C]
    and ``test_cohort`` [T, C] are the cosines of each voiceprint and each test against the C
    cohort voices. Each side is standardised by the mean and spread of its ``top_k`` closest
    cohort scores, so a voiceprint that resembles many people no longer scores high for all of
    them. Returns scores on a z-scale: thresholds calibrated on raw cosines do not carry over.
    """
    def top_stats(cohort_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = min(top_k, cohort_scores.shape[-1])
        top = -np.partition(-cohort_scores, k - 1, axis=-1)[..., :k]
        return top.mean(axis=-1), np.maximum(top.std(axis=-1), 1e-6)

    mu_e, sd_e = top_stats(np.asarray(enroll_cohort, np.float64))
    mu_t, sd_t = top_stats(np.asarray(test_cohort, np.float64))
    scores = np.asarray(scores, np.float64)
    return 0.5 * ((scores - mu_e[None, :]) / sd_e[None, :] + (scores - mu_t[:, None]) / sd_t[:, None])
