"""Meeting mode: turns, guests for unknown voices, RTTM; offline (`spkrec label`) and through the
virtual microphone, scored with pyannote.metrics' DER against the known turns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pyannote.core import Annotation, Segment
from pyannote.metrics.diarization import DiarizationErrorRate

import conversation
from conftest import ENROLL_FILES, SITE_ENROLLED, play_to_daemon, speaker_files, spkrec
from spkrec.daemon.events import SilenceEvent, SpeakerEvent, StatusEvent, TurnEvent
from spkrec.daemon.guests import GuestClusterer
from spkrec.daemon.meeting import RttmSink, TurnSink, TurnTally, summary
from spkrec.models.private import readable_by_others

GUESTS = ("2414", "3080")  # never enrolled


def _win(end, label, speech=None):
    return SpeakerEvent(end - 2.0, end, label, 0.9, ((label, 0.9),), 1.0, speech=speech or (end - 2.0, end))


def _turns(events, **kw):
    out = []
    sink = TurnSink(change_windows=2, min_turn_s=0.5, emit=out.append, **kw)
    for e in events:
        sink.handle(e)
    sink.handle(StatusEvent("stopped"))
    return [(t.label, round(t.start, 2), round(t.end, 2)) for t in out]


def test_windows_merge_into_turns_closed_by_silence_and_confirmed_changes():
    events = [_win(2.0, "a", speech=(0.5, 2.0)), _win(2.5, "a"), _win(3.0, "b"), _win(3.5, "a"),  # a blip of b
              _win(4.0, "b"), _win(4.5, "b"), _win(5.0, "b", speech=(3.0, 4.6)), SilenceEvent(5.0, 7.0),
              _win(9.0, "c", speech=(8.0, 9.0))]
    # a: from its speech onset to the centre of b's first confirmed window; b: to where its speech
    # stopped; c: still open when the stream stops, closed there
    assert _turns(events) == [("a", 0.5, 3.0), ("b", 3.0, 4.6), ("c", 8.0, 9.0)]


def test_short_turns_are_dropped():
    assert _turns([_win(2.0, "a", speech=(1.8, 2.0)), SilenceEvent(2.0, 4.0)]) == []


def test_guests_stay_consistent_are_capped_and_merge():
    rng = np.random.default_rng(0)
    voices = rng.normal(size=(3, 64))
    clusterer = GuestClusterer(threshold=0.5, merge_threshold=0.8, max_guests=2)
    labels = [clusterer.assign(voices[i % 2] + 0.3 * rng.normal(size=64), 0.5)[0] for i in range(20)]
    assert labels[0::2] == ["Guest 1"] * 10 and labels[1::2] == ["Guest 2"] * 10
    third, _ = clusterer.assign(voices[2], 0.5)
    assert third in ("Guest 1", "Guest 2")  # the cap: no third guest
    merging = GuestClusterer(threshold=0.99, merge_threshold=0.9, max_guests=5)
    first = merging.assign(voices[0], 0.5)[0]
    merging.assign(voices[0] + 0.2 * rng.normal(size=64), 0.5)  # a new guest, then merged into the first
    assert len(merging.guests) == 1 and merging.current("Guest 2") == first == "Guest 1"


def test_rttm_lines_go_out_as_turns_close_and_guests_get_their_final_names(tmp_path):
    """Nothing per turn is kept: lines are written as turns close, and at the end a guest merged
    into an older one is renamed in the file, which only its owner can read."""
    merged: dict[str, str] = {}
    path = tmp_path / "new" / "standup.rttm"
    sink = RttmSink(path, "stand up", lambda label: merged.get(label, label))
    for i in range(1000):
        sink.handle(TurnEvent(2.0 * i, 2.0 * i + 1.5, ("Guest 2", "ann")[i % 2], 2.0 * i + 2))
    assert path.read_text().count("Guest_2") == 500 and len(sink.written) == 2
    merged["Guest 2"] = "Guest 1"
    sink.handle(TurnEvent(2000.0, 2001.0, "Guest 1", 2001.0))
    sink.close()
    rows = [line.split() for line in path.read_text().splitlines()]
    assert len(rows) == 1001 and {r[7] for r in rows} == {"Guest_1", "ann"} and rows[0][1] == "stand_up"
    assert rows[1][3:5] == ["2.000", "1.500"] and not readable_by_others(path)
    assert not path.with_name(path.name + ".partial").exists()


def test_the_summary_is_kept_as_totals_under_final_labels():
    turns = [TurnEvent(0.0, 2.0, "Guest 2", 2.0), TurnEvent(2.0, 3.0, "ann", 3.0), TurnEvent(3.0, 4.0, "Guest 1", 4.0)]
    tally = TurnTally()
    for turn in turns:
        tally.add(turn)
    final = tally.renamed(lambda label: "Guest 1" if label == "Guest 2" else label)
    assert summary(final) == [("Guest 1", 3.0, 2, 0.75), ("ann", 1.0, 1, 0.25)]
    assert summary(turns) == summary(tally)  # a list of turns still works


def test_the_guests_file_is_owner_only(tmp_path):
    clusterer = GuestClusterer(threshold=0.5, merge_threshold=0.9, max_guests=3)
    clusterer.assign(np.ones(8), 0.5)
    clusterer.save(tmp_path / "guests.json", "fp")
    assert not readable_by_others(tmp_path / "guests.json")
    assert json.loads((tmp_path / "guests.json").read_text())["guests"][0]["label"] == "Guest 1"


@pytest.fixture(scope="module")
def meeting(site, tmp_path_factory):
    """Two enrolled voices and two strangers taking turns, labelled offline via the real CLI."""
    root = tmp_path_factory.mktemp("meeting")
    speakers = (*SITE_ENROLLED, *GUESTS)
    order = [(speaker_files(s)[i], s) for i in range(ENROLL_FILES, ENROLL_FILES + 2) for s in speakers]
    wav = root / "standup.wav"
    turns = conversation.assemble(order, wav, gap_s=2.0)  # shorter pauses: see the meeting benchmark
    rttm, events = root / "standup.rttm", root / "events.jsonl"
    done = spkrec("label", str(wav), "--rttm", str(rttm), "--events", str(events), "--model", site["model"],
                  "--config", str(site["config"]), check=True)
    return {"wav": wav, "turns": turns, "rttm": rttm, "events": events, "output": done.stderr, "root": root}


def _annotation(turns) -> Annotation:
    a = Annotation()
    for start, end, label in turns:
        a[Segment(start, end)] = label
    return a


def _rttm_turns(path: Path) -> list[tuple[float, float, str]]:
    rows = [line.split() for line in path.read_text().splitlines()]
    assert all(r[0] == "SPEAKER" and r[2] == "1" and len(r) == 10 for r in rows)
    return [(float(r[3]), float(r[3]) + float(r[4]), r[7]) for r in rows]


def test_label_writes_an_rttm_close_to_the_reference(meeting):
    hypothesis = _rttm_turns(meeting["rttm"])
    assert {r.split()[1] for r in meeting["rttm"].read_text().splitlines()} == {"standup"}
    der = DiarizationErrorRate(collar=0.25)(_annotation(meeting["turns"]), _annotation(hypothesis),
                                           uem=Segment(0, meeting["turns"][-1][1]))
    # The base model's DER on meetings of unseen voices is 13-30 % (README, "Base model: measured");
    # this bound catches a broken pipeline (a turn logic or RTTM error puts DER near or above 1).
    assert der < 0.45, (der, hypothesis)
    # enrolled voices by name, strangers as guests (how consistently: the meeting benchmark)
    labels = {label for _, _, label in hypothesis}
    assert set(SITE_ENROLLED) <= labels and any(label.startswith("Guest_") for label in labels), labels
    assert all(_majority(hypothesis, meeting["turns"], who).startswith("Guest_") for who in GUESTS)
    assert "meeting summary" in meeting["output"] and "share" in meeting["output"]


def _majority(hypothesis, reference, who: str) -> str:
    """The hypothesis label covering most of ``who``'s reference speech."""
    cover: dict[str, float] = {}
    for start, end, label in reference:
        if label != who:
            continue
        for h_start, h_end, h_label in hypothesis:
            cover[h_label] = cover.get(h_label, 0.0) + max(0.0, min(end, h_end) - max(start, h_start))
    return max(cover, key=cover.get)


def test_turn_events_match_the_rttm(meeting):
    """Same turns; labels may differ only where a guest was later merged into an older one
    (events are live, the RTTM is rewritten with final labels at the end)."""
    turns = [e for e in conversation.read_events(meeting["events"]) if e["event"] == "turn"]
    rttm = _rttm_turns(meeting["rttm"])
    assert [(round(t["start"], 3), round(t["end"], 3)) for t in turns] == [(round(s, 3), round(e, 3)) for s, e, _ in rttm]
    for event, (_, _, label) in zip(turns, rttm):
        assert event["label"].replace(" ", "_") == label or (event["label"].startswith("Guest") and
                                                             label.startswith("Guest_"))


def test_a_guest_can_be_enrolled_under_a_real_name(meeting, site, tmp_path):
    guests_file = meeting["rttm"].with_suffix(".guests.json")
    saved = json.loads(guests_file.read_text())
    label = _majority(_rttm_turns(meeting["rttm"]), meeting["turns"], GUESTS[0]).replace("_", " ")
    assert label in {g["label"] for g in saved["guests"]}
    config = tmp_path / "config.toml"
    config.write_text(site["config"].read_text().replace(str(site["gallery"]), str(tmp_path / "g.sqlite")))
    spkrec("enroll", "carol", "--from-guest", label, "--guests", str(guests_file), "--model", site["model"],
           "--config", str(config), check=True)
    listed = spkrec("speakers", "--config", str(config), check=True).stdout
    assert "carol" in listed
    missing = spkrec("enroll", "dave", "--from-guest", "Guest 99", "--guests", str(guests_file), "--model",
                     site["model"], "--config", str(config))
    assert missing.returncode != 0 and "no 'Guest 99'" in missing.stderr and "Traceback" not in missing.stderr


def test_virtual_microphone_gives_the_same_turns(meeting, site, mic):
    events = meeting["root"] / "mic.jsonl"
    stderr, offset = play_to_daemon(mic, meeting["wav"], events, "--meeting", "--model", site["model"], "--config",
                                    str(site["config"]))
    assert "meeting summary" in stderr
    live = [(e["start"] - offset, e["end"] - offset, e["label"]) for e in conversation.read_events(events)
            if e["event"] == "turn"]
    offline = [(e["start"], e["end"], e["label"]) for e in conversation.read_events(meeting["events"])
               if e["event"] == "turn"]
    # The offline turns, scored as a diarization of the live ones (optimal label mapping, so guest
    # numbering may differ), with a collar of one hop. Through a microphone the window grid sits a
    # fraction of a hop off the file's, so near-tied windows and the online guest clustering tip
    # differently: 0.27 measured with the base model. The README states this bound; a pipeline
    # fault (lost audio, broken turn logic) gives far more.
    disagreement = DiarizationErrorRate(collar=0.5)(_annotation(offline), _annotation(live),
                                                    uem=Segment(0, meeting["turns"][-1][1]))
    assert disagreement < 0.35, (disagreement, offline, live)
