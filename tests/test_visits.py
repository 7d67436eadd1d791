"""A door visit's evidence on real speech: the shipped model, real LibriSpeech recordings, the
live pipeline replaying them (daemon/door/replay.py, the code `spkrec calibrate` runs)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ENROLL_FILES, speaker_files

import conversation
from spkrec.daemon.commands import enroll
from spkrec.daemon.door.config import DoorConfig
from spkrec.daemon.door.replay import critical, door_decisions, visits
from spkrec.models.audio import load_audio
from spkrec.models.config import Config
from spkrec.models.engine import Engine
from spkrec.models.scoring import mean_embedding, normalize
from spkrec.models.utterance import embed_once, embed_utterance, pieces

VOICES = ("533", "3005")


@pytest.fixture(scope="module")
def engine(base_model):
    return Engine(base_model, "cpu")


@pytest.fixture(scope="module")
def roster(engine):
    cfg = Config()
    prints = []
    for name in VOICES:
        sample = enroll.gather([load_audio(p, 16000) for p in speaker_files(name)[:ENROLL_FILES]], 16000, cfg.vad)
        prints.append(mean_embedding(enroll.embed(engine, sample)))
    prints = np.stack(prints)
    return lambda: (VOICES, prints)


def test_pauses_and_the_time_limit_cut_visits_and_each_ends_with_a_final_word(engine, roster, tmp_path):
    wav = tmp_path / "two.wav"
    files = speaker_files("3005")[ENROLL_FILES:ENROLL_FILES + 2]
    turns = conversation.assemble([(p, "3005") for p in files], wav, gap_s=3.0)
    door = DoorConfig(authorized=["3005"], every_s=1.0)
    heard = visits(engine, wav, roster, door, Config())
    assert len(heard) == 2  # the 3-s pause ended the first visit
    for attempt, (start, end, _) in zip(heard, turns):
        assert [e.final for e in attempt] == [False] * (len(attempt) - 1) + [True]
        voiced = [e.voiced_s for e in attempt]
        assert voiced == sorted(voiced) and voiced[-1] <= end - start + 0.5
        assert all(b - a >= 0.99 for a, b in zip(voiced, voiced[1:-1]))  # every second of new voice, not each hop
        assert {e.label for e in attempt} == {"3005"} and min(e.score for e in attempt) > 0.3  # strangers score near 0
    limited = visits(engine, wav, roster, DoorConfig(authorized=["3005"], visit_s=4.0, max_visit_s=4.0), Config())
    assert len(limited) > 2 and all(a[-1].end - a[0].start <= 4.0 + 1.0 for a in limited)


def test_calibration_measures_exactly_where_the_live_door_opens(engine, roster):
    """The critical threshold replayed from the evidence is the edge of the live policy itself."""
    path = speaker_files("3005")[-1]
    door = DoorConfig(authorized=["3005"])
    (attempt, *_) = visits(engine, path, roster, door, Config())
    edge = critical(attempt, door, 0.0)
    assert np.isfinite(edge)
    below = door_decisions(engine, path, roster, door, Config(), edge - 1e-4)
    above = door_decisions(engine, path, roster, door, Config(), edge + 1e-4)
    assert [d.granted for d in below][:1] == [True]
    assert not any(d.granted for d in above) and above[0].reason == "unknown voice"
    # the other voice is enrolled but not authorised: it opens at no threshold
    assert critical(attempt, DoorConfig(authorized=["533"]), 0.0) == float("-inf")


def test_one_pass_embeddings_of_short_and_long_audio(engine):
    speech = load_audio(speaker_files("533")[0], 16000)
    info = engine.info
    short = speech[: info.window_samples // 2]
    assert np.allclose(np.linalg.norm(embed_once(engine, short)), 1.0, atol=1e-4)  # repeated up to one window
    cut = pieces(np.arange(20 * 16000, dtype=np.float32), 8 * 16000, info.window_samples)
    assert cut.shape == (3, 20 * 16000 // 3)  # equal pieces of at most 8 s, one batch
    whole = embed_utterance(engine, speech)
    parts = normalize(engine.embed(pieces(speech, 8 * 16000, info.window_samples)).mean(0, keepdims=True))[0]
    assert np.allclose(whole, parts, atol=1e-5)
