"""Open-set access control end to end: enroll voices the model never heard, calibrate on them,
and let the door hook decide through the real virtual microphone.

The model is the shipped base model, which never heard test-other; every voice here comes from
there: two are enrolled, one of them authorised; a third is a stranger; three more serve as the
impostor recordings that calibration needs.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import conversation
from conftest import ENROLL_FILES, IMPOSTORS, LIBRI, SITE_ENROLLED, SITE_FAR, Webhook, play_to_daemon, spkrec
from conftest import speaker_files as _files

AUTHORISED, ENROLLED, STRANGER = SITE_ENROLLED[0], SITE_ENROLLED[1], "2414"


def _stored_calibration(gallery: Path) -> dict | None:
    with sqlite3.connect(gallery) as db:
        row = db.execute("SELECT value FROM meta WHERE key='calibration'").fetchone()
    return json.loads(row[0]) if row else None


def test_calibration_is_measured_on_the_users_voices_and_stored(site):
    stored = _stored_calibration(site["gallery"])
    assert stored is not None and stored["speakers"] == sorted([AUTHORISED, ENROLLED])
    assert stored["far"] <= stored["target_far"] == SITE_FAR
    assert stored["n_nontarget"] > 300 and stored["n_target"] > 20
    assert "false rejects (FRR)" in site["calibrate_output"] and "EER" in site["calibrate_output"]
    # the door's point: every impostor recording replayed through the door's visit code; none granted
    (door,) = stored["doors"].values()
    assert door["rule"]["authorized"] == [AUTHORISED] and door["n_impostor_visits"] >= 3 * 8
    assert door["false_grants"] == 0
    assert "impostor visits granted" in site["calibrate_output"]
    # whole files, one pass: their own point, which verify uses (operating_point "auto")
    files = stored["utterance"]
    assert files["far"] <= SITE_FAR and files["n_nontarget"] >= 2 * 3 * 8
    held_out = _files(AUTHORISED)[-1]
    done = spkrec("verify", AUTHORISED, str(held_out), "--model", site["model"], "--config", str(site["config"]))
    assert done.returncode == 0 and f"threshold {files['threshold']:.3f}" in done.stdout, done.stdout
    impostor = spkrec("verify", AUTHORISED, str(_files(STRANGER)[-1]), "--model", site["model"],
                      "--config", str(site["config"]))
    assert impostor.returncode == 1 and impostor.stdout.startswith("reject"), impostor.stdout


def test_dry_run_reports_without_storing(site):
    before = _stored_calibration(site["gallery"])
    done = spkrec("calibrate", "--far", "0.2", "--dry-run", "--impostors", str(LIBRI / IMPOSTORS[0]),
                  "--model", site["model"], "--config", str(site["config"]), check=True)
    assert "target 20.00%" in done.stdout
    assert _stored_calibration(site["gallery"]) == before


def test_calibrate_without_impostors_or_gallery_is_a_clear_error(site, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f"[gallery]\npath = \"{tmp_path / 'none.sqlite'}\"\n")
    done = spkrec("calibrate", "--model", site["model"], "--config", str(config))
    assert done.returncode != 0 and "enroll speakers first" in done.stderr and "Traceback" not in done.stderr


def test_door_through_the_virtual_microphone(site, mic, tmp_path):
    # One visit each: the authorised voice, the enrolled but unauthorised one, a stranger.
    order = [(path, who) for who in (AUTHORISED, ENROLLED, STRANGER) for path in _files(who)[ENROLL_FILES:][:2]]
    wav = tmp_path / "visits.wav"
    turns = conversation.assemble(order, wav, gap_s=3.0)
    opened, audit, events = tmp_path / "opened.txt", tmp_path / "audit.jsonl", tmp_path / "events.jsonl"
    hook = f"import os; open({str(opened)!r}, 'a').write(os.environ['SPKREC_LABEL'] + chr(10))"
    webhook = Webhook()
    config = tmp_path / "config.toml"
    config.write_text(site["config"].read_text() + f"[door]\nauthorized = [\"{AUTHORISED}\"]\n"
                      f"command = [{json.dumps(sys.executable)}, \"-c\", {json.dumps(hook)}]\n"
                      f"url = \"{webhook.url}\"\naudit_log = \"{audit}\"\ncooldown_s = 60.0\n")
    try:
        _, offset = play_to_daemon(mic, wav, events, "--model", site["model"], "--config", str(config))
    finally:
        webhook.close()

    def visitor(decision: dict) -> str:
        """Whose visit a door decision fell in, by its stream time."""
        middle = (decision["start"] + decision["end"]) / 2 - offset
        return next(who for start, end, who in reversed(turns) if middle >= start - 1.0)

    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    records = [r for r in lines if r["phase"] == "done"]
    assert [r["id"] for r in lines if r["phase"] == "decided"] == [r["id"] for r in records]  # each decided first
    granted = [(r["label"], visitor(r)) for r in records if r["granted"]]
    denied = {visitor(r) for r in records if not r["granted"]}
    assert granted == [(AUTHORISED, AUTHORISED)], records
    assert {ENROLLED, STRANGER} <= denied, records  # both turned away, and on record
    assert opened.read_text().splitlines() == [AUTHORISED]
    assert [(w["label"], w["granted"]) for w in webhook.received] == [(AUTHORISED, True)]
    grant = next(r for r in records if r["granted"])
    assert grant["action"]["command"]["ok"] and grant["action"]["url"]["ok"]
    door_events = [e for e in conversation.read_events(events) if e["event"] == "door"]
    assert len(door_events) == len(records)  # every decision is both an event and an audit line
    said = conversation.read_events(events)
    warnings = [e["message"] for e in said if e["event"] == "status" and e["state"] == "warning"]
    assert not any("door threshold" in w for w in warnings), warnings  # calibrated for this very door
    grant = next(e for e in door_events if e["granted"])
    visit = [e for e in said if e["event"] == "visit" and e["start"] == grant["start"] and e["end"] <= grant["end"]]
    assert visit and visit[-1]["score"] == grant["score"] and visit[-1]["voiced_s"] >= 1.5  # its evidence


def test_a_new_calibration_reaches_a_running_daemon(site, tmp_path):
    """The daemon starts on a gallery nobody calibrated; `spkrec calibrate` runs while it listens:
    the next windows use the new point, and a 'threshold' status event says so."""
    gallery = tmp_path / "gallery.sqlite"
    gallery.write_bytes(site["gallery"].read_bytes())
    with sqlite3.connect(gallery) as db:
        db.execute("DELETE FROM meta WHERE key='calibration'")
    config = tmp_path / "config.toml"
    config.write_text(f"[gallery]\npath = \"{gallery}\"\n")
    wav = tmp_path / "long.wav"
    conversation.assemble([(path, AUTHORISED) for path in _files(AUTHORISED)[ENROLL_FILES:]] * 3, wav, gap_s=0.5)
    events = tmp_path / "events.jsonl"
    process = subprocess.Popen([str(Path(sys.executable).with_name("spkrec-live")), "--input", str(wav), "--no-ui",
                                "--events", str(events), "--model", site["model"], "--config", str(config)],
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (events.exists() and '"listening"' in events.read_text()):
            time.sleep(0.2)
        calibrated = spkrec("calibrate", "--far", str(SITE_FAR), "--impostors", str(LIBRI / IMPOSTORS[0]),
                            "--model", site["model"], "--config", str(config))
        assert calibrated.returncode == 0, calibrated.stderr
        assert "running daemon picks them up" in calibrated.stdout
        stored = _stored_calibration(gallery)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and '"threshold"' not in events.read_text():
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    said = [json.loads(line) for line in events.read_text().splitlines()]
    changed = [e for e in said if e["event"] == "status" and e["state"] == "threshold"]
    assert changed and changed[0]["source"] == "calibrated", changed
    assert abs(changed[0]["threshold"] - stored["threshold"]) < 1e-4
    after = [e for e in said if e["event"] == "speaker" and said.index(e) > said.index(changed[0])]
    assert after, "no window was decided after the new point arrived"


def test_sigterm_with_a_hanging_lock_exits_within_the_hook_timeout(site, tmp_path):
    """The lock's program hangs; the operator stops the service: it must exit within the hook
    timeout, with the grant's decision and its outcome (killed) on record."""
    wav = tmp_path / "visit.wav"
    conversation.assemble([(path, AUTHORISED) for path in _files(AUTHORISED)[ENROLL_FILES:][:2]], wav, gap_s=1.0)
    audit, events, started = tmp_path / "audit.jsonl", tmp_path / "events.jsonl", tmp_path / "started"
    hook = f"import time; open({str(started)!r}, 'w').close(); time.sleep(120)"
    config = tmp_path / "config.toml"
    config.write_text(site["config"].read_text() + f"[door]\nauthorized = [\"{AUTHORISED}\"]\n"
                      f"command = [{json.dumps(sys.executable)}, \"-c\", {json.dumps(hook)}]\n"
                      f"audit_log = \"{audit}\"\ntimeout_s = 3.0\n")
    process = subprocess.Popen([str(Path(sys.executable).with_name("spkrec-live")), "--input", str(wav), "--no-ui",
                                "--events", str(events), "--model", site["model"], "--config", str(config)],
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), "the door never opened for the authorised voice"
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        took = time.monotonic() - stopping
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert took < 3.0 + 2.0, took  # the hook timeout, plus killing it and closing the sinks
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    grant = next(r for r in records if r["granted"] and r["phase"] == "decided")
    outcome = next(r for r in records if r["id"] == grant["id"] and r["phase"] == "done")
    assert outcome["action"]["command"]["ok"] is False  # killed, and recorded as such


def test_killing_enroll_leaves_the_gallery_readable(site, tmp_path):
    """SIGKILL `spkrec enroll` at many points of its run: each time the gallery holds either its
    previous speakers or those plus the complete new one, never a half-written voice."""
    gallery = tmp_path / "gallery.sqlite"
    gallery.write_bytes(site["gallery"].read_bytes())
    config = tmp_path / "config.toml"
    config.write_text(f"[gallery]\npath = \"{gallery}\"\n")
    args = [str(Path(sys.executable).with_name("spkrec")), "enroll", "newcomer", "--input",
            *map(str, _files(STRANGER)), "--model", site["model"], "--config", str(config)]

    def contents() -> dict[str, int]:
        with sqlite3.connect(gallery) as db:
            return dict(db.execute("SELECT s.name, COUNT(w.id) FROM speakers s JOIN windows w ON w.name = s.name "
                                   "GROUP BY s.name").fetchall())

    before = contents()
    start = time.monotonic()
    subprocess.run(args, check=True, capture_output=True)
    full_run = time.monotonic() - start
    complete = contents()
    assert set(complete) == set(before) | {"newcomer"}
    spkrec("speakers", "remove", "newcomer", "--config", str(config), check=True)
    outcomes = set()
    for i in range(6):
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(full_run * (0.5 + 0.09 * i))  # spread over the tail of the run, where it writes
        process.send_signal(signal.SIGKILL)
        process.wait()
        now = contents()
        assert now in (before, complete), now
        outcomes.add("kept" if now == before else "complete")
        if now == complete:
            spkrec("speakers", "remove", "newcomer", "--config", str(config), check=True)
    assert "kept" in outcomes


def test_turn_labels_name_each_turn_from_its_accumulated_audio(site, tmp_path):
    """``[stream] labels = "turn"``: the daemon labels a turn from its audio so far, in one pass
    every second of new voice, at the gallery's threshold for whole files; windows still find
    where the next voice starts."""
    wav = tmp_path / "turns.wav"
    order = [(_files(ENROLLED)[ENROLL_FILES], ENROLLED), (_files(STRANGER)[ENROLL_FILES], "unknown"),
             (_files(ENROLLED)[ENROLL_FILES + 1], ENROLLED)]
    turns = conversation.assemble(order, wav, gap_s=0.3)  # shorter than a window: no pause between voices
    config = tmp_path / "config.toml"
    config.write_text(site["config"].read_text() + '[stream]\nlabels = "turn"\n')
    events = tmp_path / "events.jsonl"
    spkrec("live", "--input", str(wav), "--fast", "--no-ui", "--events", str(events), "--model", site["model"],
           "--config", str(config), check=True)
    got = conversation.read_events(events)
    right, total = conversation.speaker_agreement(got, turns)
    assert total >= 20 and right / total >= 0.85, (right, total)
    assert conversation.turn_labels(got, turns) == [label for _, label in order]
    first = [e for e in got if e["event"] == "speaker" and e["label"] == ENROLLED and e["end"] <= turns[0][1]]
    scores = [e["score"] for e in first]
    # one-pass evidence every second of new voice (two hops): the turn's score holds for two windows
    assert len(scores) >= 8 and sum(a == b for a, b in zip(scores, scores[1:])) >= len(scores) // 3, scores
