"""The mode table (daemon/modes.py): a configured door actuates in live mode only. `spkrec label`
(a recording replayed as fast as it decodes), `--meeting` (clusters, not door decisions) and
`--demo` (made-up voices) run with the same door configured and never reach the hook or the
audit log; each says so once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import conversation
from conftest import live_exe, speaker_files, spkrec, wait_for
from spkrec.daemon.modes import MODES, door_left_out

HOOK = "import os, pathlib, sys; pathlib.Path(sys.argv[1]).write_text('opened for ' + os.environ['SPKREC_LABEL'])"


def _door_config(site, tmp_path, names: list[str]) -> tuple:
    opened, audit = tmp_path / "opened.txt", tmp_path / "audit.jsonl"
    config = tmp_path / "door.toml"
    config.write_text(site["config"].read_text() + "\n[door]\n"
                      f"authorized = {json.dumps(names)}\n"
                      f"command = [{json.dumps(sys.executable)}, \"-c\", {json.dumps(HOOK)}, \"{opened}\"]\n"
                      f"audit_log = \"{audit}\"\n")
    return config, opened, audit


def test_the_table_gives_the_door_to_live_alone():
    assert [name for name, mode in MODES.items() if mode.door] == ["live"]
    assert not MODES["label"].metrics and not MODES["demo"].metrics


def test_label_and_meeting_never_actuate_the_door(site, tmp_path):
    config, opened, audit = _door_config(site, tmp_path, ["533"])
    visit = tmp_path / "visit.wav"
    conversation.assemble([(speaker_files("533")[2], "a"), (speaker_files("533")[3], "a")], visit, gap_s=0.5)
    # the control: the same config and recording, live, opens the door (so the checks below can fail)
    done = spkrec("live", "--input", str(visit), "--fast", "--no-ui", "--config", str(config), check=True)
    assert opened.read_text() == "opened for 533" and audit.is_file(), done.stderr
    opened.unlink()
    audit.unlink()
    notice = door_left_out(MODES["label"])
    done = spkrec("label", str(visit), "--config", str(config), "--events", str(tmp_path / "label.jsonl"),
                  "--rttm", str(tmp_path / "visit.rttm"), check=True)
    assert not opened.exists() and not audit.exists()
    assert notice in " ".join(done.stderr.split())  # the terminal may wrap it
    warnings = [e for e in conversation.read_events(tmp_path / "label.jsonl") if e.get("state") == "warning"]
    assert any(e["message"] == notice for e in warnings), warnings
    events = tmp_path / "meeting.jsonl"
    done = spkrec("live", "--meeting", "--input", str(visit), "--fast", "--no-ui", "--config", str(config),
                  "--events", str(events), check=True)
    assert not opened.exists() and not audit.exists()
    assert door_left_out(MODES["meeting"]) in " ".join(done.stderr.split())
    assert not [e for e in conversation.read_events(events) if e["event"] == "door"]


def test_the_demo_never_writes_the_configured_audit_log(site, tmp_path):
    """The demo's voices authorised by name: still no hook, no audit line, and the notice."""
    from spkrec.daemon.commands.demo import STRANGER
    from spkrec.daemon.commands.democorpus import VOICES

    names = [label for label, _, _ in VOICES if label != STRANGER]
    config, opened, audit = _door_config(site, tmp_path, names)
    events = tmp_path / "demo.jsonl"
    process = subprocess.Popen([live_exe(), "--demo", "--no-ui", "--config", str(config), "--events", str(events)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(events, '"speaker"', timeout=300)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # until the enrolled voices have spoken for a while
            known = [e for e in conversation.read_events(events) if e["event"] == "speaker" and e["label"] in names]
            if len(known) >= 20:
                break
            time.sleep(2)
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert len(known) >= 20, stderr[-1000:]
    assert not opened.exists() and not audit.exists()
    got = conversation.read_events(events)
    assert any(e.get("state") == "warning" and e["message"] == door_left_out(MODES["demo"]) for e in got)
    assert not [e for e in got if e["event"] == "door"]
