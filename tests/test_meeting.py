"""Meeting mode: clustering with the model's scales, turns from frames, guests, relabels, RTTM;
offline (`spkrec label`) and live through the virtual microphone, scored with pyannote.metrics'
DER against the known turns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pyannote.core import Annotation, Segment
from pyannote.metrics.diarization import DiarizationErrorRate

import conversation
from conftest import ENROLL_FILES, SITE_ENROLLED, play_to_daemon, speaker_files, spkrec
from spkrec.daemon.pipeline.events import RelabelEvent, TurnEvent
from spkrec.daemon.meeting.incremental import IncrementalClusterer
from spkrec.daemon.meeting.session import LiveMeeting, Namer, OfflineMeeting, RttmSink, TurnTally, summary
from spkrec.models.clustering import Scales, cluster, measure_scales
from spkrec.daemon.meeting.config import MeetingConfig
from spkrec.models.audio import AudioTally
from spkrec.models.config import from_dict
from spkrec.models.errors import ConfigError, ModelError
from spkrec.models.private import readable_by_others
from spkrec.models.scoring import normalize
from spkrec.models.segmentation import FRAME_S, Frame, TurnBuilder, WindowRecord, frames

GUESTS = ("2414", "3080")  # never enrolled


def _voices(rng, n, dim=64):
    return normalize(rng.normal(size=(n, dim)))


def _windows(rng, voice, n, noise=0.9):
    """Window embeddings of one synthetic voice: its direction plus per-window noise."""
    return normalize(voice + noise * rng.normal(size=(n, voice.size)) / np.sqrt(voice.size))


def _scales(rng) -> Scales:
    held_out = {f"v{i}": _windows(rng, v, 30) for i, v in enumerate(_voices(rng, 12))}
    return Scales(**{k.split("_")[1]: v for k, v in measure_scales(held_out).items()})


def test_scales_are_measured_per_size_and_a_model_without_them_is_refused():
    rng = np.random.default_rng(0)
    held_out = {f"v{i}": _windows(rng, v, 30) for i, v in enumerate(_voices(rng, 12))}
    scales = measure_scales(held_out)
    # a centroid of many windows is a cleaner sample of a voice than one window: its scale is higher
    assert set(scales) == {"cluster_window", "cluster_centroid"}
    assert scales["cluster_window"] < scales["cluster_centroid"]
    assert Scales.of({"eer": 0.4, **scales}) == Scales(scales["cluster_window"], scales["cluster_centroid"])
    with pytest.raises(ModelError, match="spkrec scales old.onnx --voices DIR"):
        Scales.of({"eer": 0.4, "cluster_window": 0.3}, "old.onnx")
    with pytest.raises(ValueError):
        measure_scales({"only": held_out["v0"]})


def test_clustering_finds_the_speakers_without_being_told_how_many():
    rng = np.random.default_rng(1)
    scales = _scales(rng)
    for n in (2, 4, 6):
        voices = _voices(rng, n)
        truth = np.repeat(np.arange(n), 40)
        turns = rng.permutation(np.arange(n * 4)) % n  # each voice speaks in 4 turns of 10 windows
        truth = np.concatenate([[v] * 10 for v in turns])
        windows = np.stack([_windows(rng, voices[v], 1)[0] for v in truth])
        found = cluster(windows, np.full(len(truth), 0.5), scales, min_speaker_s=2.0)
        assert found.max() + 1 == n
        # one cluster per voice: the labels are a renaming of the truth
        assert len(set(zip(found.tolist(), truth.tolist()))) == n


def _records(timeline, voices, rng, hop=0.5, window=2.0, noise=0.3):
    """Windows over a timeline of (start, end, voice index): each window's embedding mixes the
    voices it covers in proportion to their time in it, as a real window straddling a change does."""
    end = timeline[-1][1]
    out = []
    t = 0.0
    while t + window <= end + 1e-9:
        share = np.zeros(len(voices))
        spans = []
        for a, b, v in timeline:
            overlap = max(0.0, min(b, t + window) - max(a, t))
            share[v] += overlap
            if overlap > 0:
                spans.append((max(a, t), min(b, t + window)))
        if share.sum() > 0:
            x = normalize(share @ voices + noise * rng.normal(size=voices.shape[1]) / np.sqrt(voices.shape[1]))
            out.append(WindowRecord(t, t + window, tuple(spans), x))
        t += hop
    return out


def _turns(frames_, max_pause_s=1.0, min_turn_s=0.5):
    out = []
    builder = TurnBuilder(max_pause_s, min_turn_s, out.append)
    for frame in frames_:
        builder.push(frame)
    builder.finish()
    return [(t.speaker, round(t.start, 2), round(t.end, 2)) for t in out]


def test_a_change_of_voice_is_placed_inside_the_window_not_on_its_edge():
    rng = np.random.default_rng(2)
    voices = _voices(rng, 2)
    for change in (5.0, 5.1, 5.3, 5.4):
        records = _records([(0.0, change, 0), (change, 11.0, 1)], voices, rng)
        turns = _turns(frames(records, voices, 0.0, 11.0))
        assert [t[0] for t in turns] == [0, 1]
        # windows are 2 s long and start every 0.5 s: the frames put the change within half a hop
        # of where it is (a window's edge would be up to 1 s off, its centre up to 0.25 s + jitter)
        assert abs(turns[0][2] - change) <= 0.25 + 1e-9 and turns[1][1] == turns[0][2], (change, turns)


def _frames(spec):
    """Frames from a string, one character per 0.1 s: a digit is a speaker, '.' is silence."""
    return [Frame(i * FRAME_S, int(c) if c != "." else -1) for i, c in enumerate(spec)]


def test_turns_bridge_short_pauses_absorb_blips_and_drop_short_turns():
    # a pause of 0.5 s stays inside a turn, one of 1.5 s ends it; 0.3 s of another voice is a blip;
    # 0.8 s of a voice is a turn; 0.3 s alone is not
    spec = "0" * 20 + "." * 5 + "0" * 10 + "111" + "0" * 10 + "." * 15 + "1" * 20 + "0" * 8 + "1" * 3 + "." * 20 + "2" * 3
    assert _turns(_frames(spec)) == [(0, 0.0, 4.8), (1, 6.3, 8.3), (0, 8.3, 9.1)]
    # another voice holding min_turn_s takes over where it started
    assert _turns(_frames("0" * 10 + "1" * 10)) == [(0, 0.0, 1.0), (1, 1.0, 2.0)]


def test_live_clustering_keeps_labels_and_merges_a_split_voice():
    rng = np.random.default_rng(3)
    scales = _scales(rng)
    voices = _voices(rng, 3)
    clusterer = IncrementalClusterer(scales, min_speaker_s=2.0, max_speakers=10, context=20)
    order = [0, 1, 2, 0, 1, 2, 0, 2, 1]
    given = []
    for v in order:
        given.append([clusterer.add(w, 0.5) for w in _windows(rng, voices[v], 16)])
    # after a turn's first few windows, every window of a voice gets that voice's one speaker number
    settled = {v: {n for turn, w in zip(given, order) if w == v for n in turn[4:]} for v in range(3)}
    assert all(len(numbers) == 1 for numbers in settled.values()), settled
    assert len(set().union(*settled.values())) == 3
    # a voice that came in as two speakers (after windows too noisy to tell) is merged into one: the
    # other number is gone into the one its last windows get, with its windows' audio levels
    split = IncrementalClusterer(scales, min_speaker_s=0.0, max_speakers=10, context=4)
    for w in _windows(rng, voices[0], 4, noise=3.0):
        split.add(w, 0.5, AudioTally(1000, 0, 1000, 1.0))
    later = [split.add(w, 0.5, AudioTally(100, 1, 60, 2.0)) for w in _windows(rng, voices[0], 40)]
    final = later[-1]
    assert set(later[-10:]) == {final} and len(set(later)) == 2, later  # it did come in as two
    other = next(n for n in later if n != final)
    assert split.merged == [(other, final)] and final in split.speakers and other not in split.speakers
    assert split.audio_of(final) == AudioTally(4000, 40, 2400, 80.0)  # the 40 windows', settled or in context


def test_live_speakers_are_not_merged_through_windows_that_sound_like_both():
    """Recent windows halfway between two speakers may pull them into one cluster; the speakers
    stay apart unless their own centroids clear the threshold, and each window goes to the
    closer one. Two speakers whose own centroids do clear it are merged."""
    a, b = np.eye(4)[0], np.eye(4)[1]
    apart = normalize(a + 0.3 * b)  # cos to a: 0.96; to b: 0.29
    clusterer = IncrementalClusterer(Scales(window=0.3, centroid=0.5), 2.0, 10, 12)
    rows = np.stack([a * 20, b * 20, apart, normalize(a + b), normalize(0.3 * a + b)])
    sizes = np.array([20, 20, 1, 1, 1])
    one_cluster = np.zeros(5, int)
    split = clusterer._no_chaining(rows, sizes, one_cluster, [1, 2])
    assert split[0] != split[1]  # cos(a, b) = 0 < 0.5: not one voice on their own evidence
    assert split[2] == split[0] and split[4] == split[1]  # each recent window to the closer speaker
    alike = np.stack([a * 20, normalize(a + 0.1 * b) * 20, apart])
    assert (clusterer._no_chaining(alike, np.array([20, 20, 1]), np.zeros(3, int), [1, 2]) == 0).all()
    # ... unless they are known to be two people (named after two enrolled voices)
    clusterer.apart = lambda x, y: {x, y} == {1, 2}
    assert len(set(clusterer._no_chaining(alike, np.array([20, 20, 1]), np.zeros(3, int), [1, 2])[:2])) == 2


class _Roster:
    """A gallery of one enrolled voice."""

    def __init__(self, name, voiceprint):
        self.name, self.voiceprint = name, voiceprint

    def __call__(self):
        return (self.name,), self.voiceprint[None, :]


def _meeting(kind, scales, namer, tmp_path, **kw):
    cfg = MeetingConfig()
    return kind(cfg, scales, namer, 2.0, 0.5, "fp", tmp_path / "m.rttm", tmp_path / "m.guests.json", "m", **kw)


def test_live_meeting_relabels_a_guest_that_turns_out_to_be_enrolled(tmp_path):
    """Live: a voice is a guest until its centroid has enough windows to match an enrolled
    voiceprint; then a relabel event renames its turns, and the RTTM carries the name."""
    rng = np.random.default_rng(4)
    scales = _scales(rng)
    voices = _voices(rng, 2)
    ann_print = _windows(rng, voices[1], 40).mean(axis=0)
    namer = Namer(_Roster("ann", normalize(ann_print)), threshold=scales.centroid)
    meeting = _meeting(LiveMeeting, scales, namer, tmp_path)
    events = []
    meeting.emit = events.append
    sinks = meeting.sinks()
    for record in _records([(0.0, 6.0, 0), (6.0, 30.0, 1)], voices, rng, noise=0.6):
        meeting.window(record, 0.5)
        meeting.advance(record.end)
    meeting.finish()
    for event in events:
        for sink in sinks:
            sink.handle(event)
    for sink in sinks:
        sink.close()
    labels = [e.label for e in events if isinstance(e, TurnEvent)]
    assert labels[0] == "Guest 1" and labels[-1] == "ann", labels
    relabels = [e for e in events if isinstance(e, RelabelEvent)]
    # its first windows went out under a guest label (too few to match a voiceprint): renamed once
    assert [(r.was, r.label) for r in relabels] == [("Guest 2", "ann")]
    rttm = [line.split()[7] for line in (tmp_path / "m.rttm").read_text().splitlines()]
    assert rttm[0] == "Guest_1" and set(rttm[1:]) == {"ann"}
    # only the guest's windows are saved for enrolling later, owner-only
    saved = json.loads((tmp_path / "m.guests.json").read_text())
    assert [g["label"] for g in saved["guests"]] == ["Guest 1"] and not readable_by_others(tmp_path / "m.guests.json")


def test_offline_meeting_names_clusters_after_clustering(tmp_path):
    rng = np.random.default_rng(5)
    scales = _scales(rng)
    voices = _voices(rng, 3)
    namer = Namer(_Roster("bob", normalize(_windows(rng, voices[2], 40).mean(axis=0))), threshold=scales.centroid)
    meeting = _meeting(OfflineMeeting, scales, namer, tmp_path)
    events = []
    meeting.emit = events.append
    timeline = [(0.0, 8.0, 0), (9.0, 17.0, 1), (18.0, 26.0, 2), (27.0, 35.0, 0)]
    for record in _records(timeline, voices, rng):
        assert meeting.window(record, 0.5) is None  # offline labels nothing until the end
        meeting.advance(record.end)
    assert events == []
    meeting.finish()
    turns = [(e.label, round(e.start), round(e.end)) for e in events]
    assert turns == [("Guest 1", 0, 8), ("Guest 2", 9, 17), ("bob", 18, 26), ("Guest 1", 27, 35)], turns


def test_removed_meeting_keys_say_what_replaced_them(tmp_path):
    with pytest.raises(ConfigError, match="meeting.guest_threshold.*thresholds from the model"):
        from_dict({"meeting": {"guest_threshold": 0.7}})
    with pytest.raises(ConfigError, match="max_speakers"):
        from_dict({"meeting": {"max_guests": 4}})


def test_relabel_events_have_a_stable_schema():
    event = RelabelEvent(0.0, 61.02, "ann", "Guest 2", stream="room")
    assert event.to_dict() == {"event": "relabel", "start": 0.0, "end": 61.02, "label": "ann", "was": "Guest 2",
                               "stream": "room"}


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
    assert summary(turns) == summary(tally)  # a list of turns works too
    tally.move("Guest 2", "Guest 1")  # a guest merged into another: all its turns
    assert summary(tally) == [("Guest 1", 3.0, 2, 0.75), ("ann", 1.0, 1, 0.25)]
    tally.move("ann", "Guest 1", 1.0)  # one turn relabelled
    assert summary(tally) == [("Guest 1", 4.0, 3, 1.0)]


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
    # The base model's offline DER on meetings of unseen voices: 5-17 % (README, "Meeting mode:
    # measured"); 9 % here. A clustering, turn or RTTM fault gives far more.
    assert der < 0.25, (der, hypothesis)
    # Each voice is labelled by its own name or as a guest, never by another voice's name; 3005 is
    # named. (533, the voice the base model recognises worst, may stay a consistent guest: a
    # cluster takes a name only when most of its windows are accepted as that voice.)
    voices = (*SITE_ENROLLED, *GUESTS)
    majority = {who: _majority(hypothesis, meeting["turns"], who) for who in voices}
    assert majority["3005"] == "3005", majority
    assert all(label == who or label.startswith("Guest_") for who, label in majority.items()), majority
    assert len(set(majority.values())) == len(voices), majority  # four voices, four labels
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
    final = _final_turns(conversation.read_events(meeting["events"]))  # each turn event with the relabels after it applied
    assert [label.replace(" ", "_") for _, _, label in final] == [label for _, _, label in rttm]


def test_a_guest_can_be_enrolled_under_a_real_name(meeting, site, tmp_path):
    guests_file = meeting["rttm"].with_suffix(".guests.json")
    saved = json.loads(guests_file.read_text())
    label = _majority(_rttm_turns(meeting["rttm"]), meeting["turns"], GUESTS[0]).replace("_", " ")
    assert label in {g["label"] for g in saved["guests"]}
    config = tmp_path / "config.toml"
    # Each guest says two recordings here (about 8 s voiced), short of the default 20 s a voiceprint
    # needs: the guest is enrolled under a site's lower minimum (the checks themselves: next test)
    config.write_text(site["config"].read_text().replace(str(site["gallery"]), str(tmp_path / "g.sqlite"))
                      + "\n[enroll]\nmin_voiced_s = 5.0\n")
    spkrec("enroll", "carol", "--from-guest", label, "--guests", str(guests_file), "--model", site["model"],
           "--config", str(config), check=True)
    listed = spkrec("speakers", "--config", str(config), check=True).stdout
    assert "carol" in listed
    missing = spkrec("enroll", "dave", "--from-guest", "Guest 99", "--guests", str(guests_file), "--model",
                     site["model"], "--config", str(config))
    assert missing.returncode != 0 and "no 'Guest 99'" in missing.stderr and "Traceback" not in missing.stderr


def test_a_guest_is_held_to_the_enrollment_checks(meeting, site, tmp_path):
    """Enrolling a guest runs the checks a recording gets ([enroll]): the guests file carries each
    guest's voiced seconds and audio levels, and a guest with less voiced speech than
    min_voiced_s is refused with one line, nothing saved."""
    guests_file = meeting["rttm"].with_suffix(".guests.json")
    guest = json.loads(guests_file.read_text())["guests"][0]
    audio = guest["audio"]
    assert audio["samples"] >= audio["voiced"] > 0 and audio["clipped"] == 0  # LibriSpeech is never clipped
    level = 10 * np.log10(audio["energy"] / audio["voiced"])
    assert -45.0 < level < 0.0, level  # read speech at a normal level: the level check passes
    config = tmp_path / "config.toml"
    config.write_text(site["config"].read_text().replace(str(site["gallery"]), str(tmp_path / "g.sqlite"))
                      + f"\n[enroll]\nmin_voiced_s = {guest['voiced_s'] + 1.0}\n")
    done = spkrec("enroll", "erin", "--from-guest", guest["label"], "--guests", str(guests_file), "--model",
                  site["model"], "--config", str(config))
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "enrollment refused" in lines[0] and f"only {guest['voiced_s']:.1f} s of voiced speech" in lines[0]
    assert "erin" not in spkrec("speakers", "--config", str(config), check=True).stdout


def _final_turns(events: list[dict], offset: float = 0.0) -> list[tuple[float, float, str]]:
    """Turn events with every relabel event applied: the labels a consumer ends up with."""
    turns: list[list] = []
    for e in events:
        if e["event"] == "turn":
            turns.append([e["start"] - offset, e["end"] - offset, e["label"]])
        elif e["event"] == "relabel":
            for turn in turns:
                if turn[2] == e["was"] and e["start"] - offset <= turn[0] <= e["end"] - offset:
                    turn[2] = e["label"]
    return [tuple(t) for t in turns]


def test_live_meeting_through_the_virtual_microphone_agrees_with_offline(meeting, site, mic):
    events = meeting["root"] / "mic.jsonl"
    stderr, offset = play_to_daemon(mic, meeting["wav"], events, "--meeting", "--model", site["model"], "--config",
                                    str(site["config"]))
    assert "meeting summary" in stderr
    received = conversation.read_events(events)
    live = _final_turns(received, offset)
    offline = _final_turns(conversation.read_events(meeting["events"]))
    # Live turns (after relabels) scored as a diarization of the offline ones, with optimal label
    # mapping and a collar of one hop. Live clusters what it has heard so far and labels frames
    # one window behind the audio; offline clusters the whole recording: they differ where the
    # live clustering had too little of a voice yet. README ("Meetings: who spoke when") states it.
    disagreement = DiarizationErrorRate(collar=0.5)(_annotation(offline), _annotation(live),
                                                    uem=Segment(0, meeting["turns"][-1][1]))
    assert disagreement < 0.35, (disagreement, offline, live)
    # a turn goes out a window length and a short turn's worth after the voice changed, not later
    lags = [e["confirmed"] - e["end"] for e in received if e["event"] == "turn"]
    assert lags and max(lags) < 2.0 + 1.0 + 0.5 + 0.5, lags  # window + max_pause_s + min_turn_s + a hop


def _voices_dir(root, whos=("1688", "2033", "3331"), n=2):
    """DIR/<voice>/<files>: what `spkrec scales --voices` takes (links to the shared recordings)."""
    for who in whos:
        (root / who).mkdir(parents=True)
        for f in speaker_files(who)[:n]:
            (root / who / f.name).symlink_to(f)
    return root


def test_clustering_scales_are_stamped_into_a_model_without_changing_its_voiceprints(base_model, tmp_path):
    """`spkrec scales MODEL --voices DIR`: the scales measured on a folder of voices go into the
    metadata; the graph, and so the fingerprint enrolled voiceprints are tied to, stay the same."""
    from spkrec.models.engine import Engine

    out = tmp_path / "stamped.onnx"
    done = spkrec("scales", str(base_model), "--voices", str(_voices_dir(tmp_path / "voices")), "--out", str(out))
    assert done.returncode == 0, done.stderr
    before, after = Engine(base_model, "cpu").info, Engine(out, "cpu").info
    assert after.fingerprint == before.fingerprint
    assert {k: after.thresholds[k] for k in ("eer", "far1")} == {k: before.thresholds[k] for k in ("eer", "far1")}
    scales = Scales.of(after.thresholds)
    assert -1 < scales.window < scales.centroid < 1
    assert after.training["clustering_scales"]["measured_on"] == ["1688", "2033", "3331"]


def _unstamped(base_model, path):
    """The base model with its clustering scales taken out: a model exported before they existed."""
    import onnx

    from spkrec.models.artifact import decode_metadata

    model = onnx.load(str(base_model))
    info = decode_metadata({p.key: p.value for p in model.metadata_props})
    old = {k: v for k, v in info.thresholds.items() if not k.startswith("cluster_")}
    for prop in model.metadata_props:
        if prop.key == "spkrec.thresholds":
            prop.value = json.dumps(old)
    onnx.save(model, str(path))
    return path


def test_a_model_without_clustering_scales_is_refused_for_meetings_until_stamped(base_model, tmp_path):
    """Meetings refuse a model without scales in one line that says how to stamp them (a stand-in
    merged four voices into one guest); once stamped, the same file labels the recording."""
    old = _unstamped(base_model, tmp_path / "old.onnx")
    wav = tmp_path / "two.wav"
    conversation.assemble([(speaker_files("1688")[0], "a"), (speaker_files("2033")[0], "b")], wav, gap_s=1.0)
    rttm = tmp_path / "two.rttm"
    done = spkrec("label", str(wav), "--rttm", str(rttm), "--model", str(old))
    assert done.returncode == 2 and not rttm.exists(), done.stderr
    assert done.stderr.count("\n") == 1 and "carries no clustering scales" in done.stderr
    assert f"spkrec scales {old} --voices DIR" in done.stderr and "Traceback" not in done.stderr
    stamped = spkrec("scales", str(old), "--voices", str(_voices_dir(tmp_path / "voices")))
    assert stamped.returncode == 0, stamped.stderr
    done = spkrec("label", str(wav), "--rttm", str(rttm), "--model", str(old))
    assert done.returncode == 0, done.stderr
    assert rttm.read_text().strip()


@pytest.mark.parametrize("voices", ["file", "one-voice", "missing"])
def test_the_scales_tool_refuses_what_is_not_a_folder_of_voices_in_one_line(base_model, tmp_path, voices):
    """A file, a folder with one voice, or a missing path: one line, exit 2, the model untouched."""
    model = _unstamped(base_model, tmp_path / "old.onnx")
    before = model.read_bytes()
    arg = {"file": str(speaker_files("1688")[0]), "missing": str(tmp_path / "nope"),
           "one-voice": str(_voices_dir(tmp_path / "voices", whos=("1688",)))}[voices]
    done = spkrec("scales", str(model), "--voices", arg)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "--voices" in done.stderr and "Traceback" not in done.stderr
    assert model.read_bytes() == before


def test_the_no_ui_log_shows_turns_and_relabels():
    import io

    from spkrec.daemon.service.logs import setup
    from spkrec.daemon.pipeline.sinks import LogSink

    out = io.StringIO()
    sink = LogSink(setup("info", out, name="spkrec-test-meeting"))
    sink.handle(TurnEvent(1.0, 4.5, "Guest 2", 6.5))
    sink.handle(RelabelEvent(0.0, 20.0, "ann", "Guest 2"))
    sink.handle(RelabelEvent(7.0, 7.0, "Guest 1", "ann"))
    assert [line.split(" INFO    ", 1)[1] for line in out.getvalue().splitlines()] == [
        "[    6.50s] turn Guest 2 1.00-4.50 s", "relabel Guest 2 -> ann (turns 0.00-20.00 s)",
        "relabel ann -> Guest 1 (the turn at 7.00 s)"]
