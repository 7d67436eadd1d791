"""The door: policy over recent decisions, a real hook program, a real local webhook, the audit log."""

import json
import sys
import time

from conftest import Webhook
from spkrec.daemon.door import DoorSink
from spkrec.daemon.events import SilenceEvent, SpeakerEvent
from spkrec.models.config import DoorConfig


def _win(t, label, score=0.8, voiced=1.0):
    return SpeakerEvent(t, t + 2.0, label, score, ((label, score),), voiced)


def _door(tmp_path, **kw):
    cfg = DoorConfig(authorized=["alice"], audit_log=str(tmp_path / "audit.jsonl"), **kw)
    emitted = []
    return DoorSink(cfg, 0.5, emitted.append), emitted


def _audit(tmp_path):
    path = tmp_path / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_grants_authorised_voice_after_n_of_m_and_records_denials(tmp_path):
    hook_out = tmp_path / "opened.json"
    script = f"import json, os, sys; open({str(hook_out)!r}, 'w').write(json.dumps({{'env': os.environ['SPKREC_LABEL'], " \
             "'stdin': json.load(sys.stdin)}))"
    door, emitted = _door(tmp_path, command=[sys.executable, "-c", script])
    for i, label in enumerate(["alice", "bob", "alice"]):
        door.handle(_win(i * 0.5, label))
    assert emitted == []  # two of three is not enough
    door.handle(_win(1.5, "alice"))
    assert [(e.label, e.granted) for e in emitted] == [("alice", True)]
    door.handle(_win(2.0, "alice"))  # cooldown: no second opening
    door.handle(SilenceEvent(2.5, 4.5))
    for i in range(4):
        door.handle(_win(5 + i * 0.5, "bob"))  # enrolled, not authorised
    door.handle(SilenceEvent(7.0, 9.0))
    for i in range(4):
        door.handle(_win(10 + i * 0.5, "unknown", score=0.2))
    door.close()
    assert [(e.label, e.granted, e.reason) for e in emitted] == [
        ("alice", True, "authorised"), ("bob", False, "not authorised"), ("unknown", False, "unknown voice")]
    opened = json.loads(hook_out.read_text())
    assert opened["env"] == "alice" and opened["stdin"]["granted"] is True
    audit = _audit(tmp_path)
    assert [(a["label"], a["granted"]) for a in audit] == [("alice", True), ("bob", False), ("unknown", False)]
    assert audit[0]["action"]["command"]["ok"] is True


def test_not_enough_voiced_speech_does_not_open(tmp_path):
    door, emitted = _door(tmp_path)
    for i in range(4):
        door.handle(_win(i * 0.5, "alice", voiced=0.6))  # 4 x 0.5 s x 0.6 = 1.2 s < 1.5 s
    door.close()
    assert emitted == []


def test_shell_metacharacters_in_a_name_run_nothing(tmp_path):
    evil = "alice; touch pwned #$(touch pwned2)"
    marker = tmp_path / "seen.txt"
    script = f"import os; open({str(marker)!r}, 'w').write(os.environ['SPKREC_LABEL'])"
    cfg = DoorConfig(authorized=[evil], command=[sys.executable, "-c", script])
    door = DoorSink(cfg, 0.5, lambda e: None)
    for i in range(4):
        door.handle(_win(i * 0.5, evil))
    door.close()
    assert marker.read_text() == evil
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_hanging_hook_is_killed_and_failing_hook_is_logged(tmp_path):
    door, emitted = _door(tmp_path, command=[sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=0.5)
    started = time.monotonic()
    for i in range(4):
        door.handle(_win(i * 0.5, "alice"))
    assert time.monotonic() - started < 0.5  # recognition never waits for the hook
    door.close()
    assert "timed out" in _audit(tmp_path)[0]["action"]["command"]["error"]

    failing, _ = _door(tmp_path / "b", command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    for i in range(4):
        failing.handle(_win(i * 0.5, "alice"))
    failing.close()
    assert _audit(tmp_path / "b")[0]["action"]["command"] == {"exit": 3, "ok": False, "stderr": ""}


def test_webhook_receives_the_decision(tmp_path):
    webhook = Webhook()
    door, _ = _door(tmp_path, url=webhook.url)
    for i in range(4):
        door.handle(_win(i * 0.5, "alice"))
    door.close()
    webhook.close()
    assert webhook.received and webhook.received[0]["label"] == "alice" and webhook.received[0]["granted"] is True
    assert _audit(tmp_path)[0]["action"]["url"] == {"status": 204, "ok": True}
