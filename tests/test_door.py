"""The door: its policy over a visit's evidence, real hook programs, a real local webhook (http
and https), the audit log on disk. A visit's evidence comes as the visit tracker emits it: every
second of new voice, its voiced seconds counted from a speech timeline with pauses."""

import hashlib
import hmac
import json
import re
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from conftest import Webhook, spkrec
from spkrec.daemon.door.config import DoorConfig
from spkrec.daemon.door.hook import DoorSink, audit_path
from spkrec.daemon.pipeline.events import DoorEvent, StatusEvent, VisitEvent

THRESHOLD = 0.5
EVERY = 1.0
# Speech as a speaker at a door delivers it: phrases with short pauses (stream seconds).
PHRASES = ((0.0, 0.9), (1.2, 2.0), (2.3, 3.1), (3.4, 4.0), (4.3, 5.2))
_attempts = iter(range(1, 10**6))


def _voiced(speech, until: float) -> float:
    return sum(max(0.0, min(b, until) - a) for a, b in speech)


def _visit(door, label, first_end=2.0, n=4, speech=PHRASES, score=0.8, runner_up=0.1):
    """One visit: evidence every ``EVERY`` s from ``first_end``, the last one final."""
    attempt = next(_attempts)
    start = first_end - 2.0
    for i in range(n):
        end = first_end + i * EVERY
        door.handle(VisitEvent(start, end, label, score, runner_up, _voiced(speech, end), i == n - 1, attempt))


def _door(tmp_path, threshold=THRESHOLD, **kw):
    cfg = DoorConfig(authorized=["alice"], audit_log=str(tmp_path / "audit.jsonl"), **kw)
    emitted = []
    return DoorSink(cfg, emitted.append, lambda: threshold), emitted


def _audit(tmp_path, phase="done"):
    path = tmp_path / "audit.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [r for r in lines if r["phase"] == phase]


def _hook(script: str) -> list[str]:
    return [sys.executable, "-c", script]


def test_grants_an_authorised_visit_and_refuses_others_once_each(tmp_path):
    hook_out = tmp_path / "opened.json"
    hook = _hook(f"import json, os, sys; open({str(hook_out)!r}, 'w').write(json.dumps({{'env': os.environ['SPKREC_LABEL'], "
                 "'stdin': json.load(sys.stdin)}))")
    door, emitted = _door(tmp_path, command=hook)
    attempt = next(_attempts)
    door.handle(VisitEvent(0.0, 1.0, "alice", 0.9, 0.1, 0.9, False, attempt))
    assert emitted == []  # 0.9 s of voice is not enough (min_voiced_s 1.0), however high the score
    door.handle(VisitEvent(0.0, 2.0, "alice", 0.45, 0.1, 1.7, False, attempt))
    assert emitted == []  # enough voice, below the door threshold
    door.handle(VisitEvent(0.0, 3.0, "alice", 0.7, 0.1, 2.5, False, attempt))
    assert [(e.label, e.granted, e.scores) for e in emitted] == [("alice", True, (0.9, 0.45, 0.7))]
    door.handle(VisitEvent(0.0, 4.0, "alice", 0.8, 0.1, 3.4, True, attempt))  # the same visit: no second opening
    _visit(door, "alice", first_end=8.0)  # cooldown (10 s): neither an opening nor a refusal
    _visit(door, "bob", first_end=20.0)  # enrolled, not authorised
    _visit(door, "alice", first_end=30.0, score=0.3)  # below the threshold: an unknown voice
    door.close()
    assert [(e.label, e.granted, e.reason) for e in emitted] == [
        ("alice", True, "authorised"), ("bob", False, "not authorised"), ("unknown", False, "unknown voice")]
    opened = json.loads(hook_out.read_text())
    assert opened["env"] == "alice" and opened["stdin"]["granted"] is True and opened["stdin"]["id"] == emitted[0].id
    audit = _audit(tmp_path)
    assert [(a["label"], a["granted"]) for a in audit] == [("alice", True), ("bob", False), ("unknown", False)]
    assert audit[0]["action"]["command"]["ok"] is True and audit[0]["action"]["actuated"] is True
    assert [a["id"] for a in _audit(tmp_path, "decided")] == [e.id for e in emitted]


def test_a_margin_refuses_a_voice_too_close_to_another(tmp_path):
    cfg = DoorConfig(authorized=["alice"], audit_log=str(tmp_path / "audit.jsonl"))
    emitted = []
    door = DoorSink(cfg, emitted.append, lambda: THRESHOLD, margin=0.1)
    _visit(door, "alice", score=0.8, runner_up=0.75)
    door.close()
    assert [(e.label, e.granted, e.reason) for e in emitted] == [("alice", False, "too close to another voice")]


def test_the_threshold_is_asked_at_each_decision(tmp_path):
    """A new calibration reaches a running door: the same evidence, a new threshold, a new answer."""
    threshold = [0.9]
    cfg = DoorConfig(authorized=["alice"], audit_log=str(tmp_path / "audit.jsonl"))
    emitted = []
    door = DoorSink(cfg, emitted.append, lambda: threshold[0])
    _visit(door, "alice", score=0.8)
    threshold[0] = 0.7
    _visit(door, "alice", first_end=20.0, score=0.8)
    door.close()
    assert [(e.granted, e.reason) for e in emitted] == [(False, "unknown voice"), (True, "authorised")]


def test_the_decision_is_on_disk_before_the_lock_moves(tmp_path):
    """The hook reads the audit log while it runs: its own decision must already be there."""
    seen = tmp_path / "seen.json"
    audit = tmp_path / "audit.jsonl"
    hook = _hook(f"import json, os; lines = open({str(audit)!r}).read().splitlines(); "
                 f"open({str(seen)!r}, 'w').write(json.dumps([json.loads(l) for l in lines]))")
    door, emitted = _door(tmp_path, command=hook)
    _visit(door, "alice")
    door.close()
    before = json.loads(seen.read_text())
    assert [(r["id"], r["phase"]) for r in before] == [(emitted[0].id, "decided")]


def test_audit_log_that_cannot_be_written_keeps_the_door_shut(tmp_path):
    opened = tmp_path / "opened"
    door, emitted = _door(tmp_path, command=_hook(f"open({str(opened)!r}, 'w')"))
    audit = tmp_path / "audit.jsonl"
    audit.unlink()
    audit.mkdir()  # the log is now unwritable (a directory: even root cannot append to it)
    _visit(door, "alice")
    door.close()
    assert not opened.exists()
    assert [e.label for e in emitted if isinstance(e, DoorEvent)] == ["alice"]
    problems = [e for e in emitted if isinstance(e, StatusEvent)]
    assert any("audit log" in e.message for e in problems) and any("not actuated" in e.message for e in problems)


def test_audit_folder_that_cannot_be_made_is_one_error_at_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(Exception) as caught:
        DoorSink(DoorConfig(authorized=["alice"], audit_log=str(blocker / "logs" / "audit.jsonl")), lambda e: None,
                 lambda: THRESHOLD)
    assert "cannot create folder" in str(caught.value)


def test_shell_metacharacters_in_a_name_run_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a shell, if one ran, would create its files
    evil = "alice; touch pwned #$(touch pwned2)"
    marker = tmp_path / "seen.txt"
    hook = _hook(f"import os; open({str(marker)!r}, 'w').write(os.environ['SPKREC_LABEL'])")
    door = DoorSink(DoorConfig(authorized=[evil], command=hook), lambda e: None, lambda: THRESHOLD)
    _visit(door, evil)
    door.close()
    assert marker.read_text() == evil
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    # the same name through a shell would have made them: the check above can fail
    subprocess.run(["sh", "-c", f"echo {evil}"], cwd=tmp_path, capture_output=True)
    assert (tmp_path / "pwned").exists()


def test_hanging_hook_never_blocks_recognition_or_shutdown(tmp_path):
    door, emitted = _door(tmp_path, command=_hook("import time; time.sleep(60)"), timeout_s=1.0, cooldown_s=0.0)
    started = time.monotonic()
    for visit in range(60):  # far more decisions than the queue holds
        _visit(door, "alice", first_end=2.0 + visit * 10, speech=tuple((a + visit * 10, b + visit * 10) for a, b in PHRASES))
    assert time.monotonic() - started < 1.0  # the pipeline thread never waited
    closing = time.monotonic()
    door.close()
    assert time.monotonic() - closing < 1.0 + 2.5  # within the hook timeout (plus the kill)
    assert any(isinstance(e, StatusEvent) and "queue full" in e.message for e in emitted)
    first = _audit(tmp_path)[0]["action"]
    assert "timed out" in first["command"]["error"]


def test_a_grant_that_waited_too_long_is_not_actuated(tmp_path):
    opened = tmp_path / "opened"
    door, _ = _door(tmp_path, command=_hook(f"open({str(opened)!r}, 'a').write('x')"), max_delay_s=1.0)
    door.actions.submit(DoorEvent("alice", True, 0.8, "authorised", 0.0, 2.0, (0.8,), wall_time=time.time() - 5))
    door.close()
    assert not opened.exists()
    outcome = _audit(tmp_path)[0]["action"]
    assert outcome["actuated"] is False and "waited" in outcome["error"]


def test_failing_hook_is_on_record_and_reported(tmp_path):
    door, emitted = _door(tmp_path, command=_hook("import sys; sys.exit(3)"))
    _visit(door, "alice")
    door.close()
    outcome = _audit(tmp_path)[0]["action"]
    assert outcome["command"] == {"exit": 3, "ok": False, "stderr": ""} and outcome["ok"] is False
    assert any(isinstance(e, StatusEvent) and e.state == "door-action" for e in emitted)


def test_webhook_is_signed_and_the_secret_never_leaks(tmp_path, monkeypatch):
    secret = "s3cret-for-the-lock"
    monkeypatch.setenv("SPKREC_DOOR_SECRET", secret)
    webhook = Webhook()
    door, emitted = _door(tmp_path, url=webhook.url)
    _visit(door, "alice")
    door.close()
    webhook.close()
    assert webhook.received[0]["label"] == "alice" and webhook.received[0]["granted"] is True
    headers = webhook.headers[0]
    timestamp = headers["X-Spkrec-Timestamp"]
    assert abs(int(timestamp) - time.time()) < 30  # a receiver rejects old timestamps: no replays
    signed = f"{timestamp}.{headers['X-Spkrec-Id']}.".encode() + headers["_body"]
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    assert headers["X-Spkrec-Signature"] == f"sha256={expected}"
    assert headers["X-Spkrec-Id"] == emitted[0].id
    assert secret not in (tmp_path / "audit.jsonl").read_text()
    assert _audit(tmp_path)[0]["action"]["url"] == {"status": 204, "ok": True}
    # unsigned without a secret; a secret file wins over the environment
    monkeypatch.delenv("SPKREC_DOOR_SECRET")
    (tmp_path / "secret").write_text("from-file\n")
    plain, signed = Webhook(), Webhook()
    for hook, extra in ((plain, {}), (signed, {"secret_file": str(tmp_path / "secret")})):
        door, _ = _door(tmp_path / hook.url.rsplit(":", 1)[1].split("/")[0], url=hook.url, **extra)
        _visit(door, "alice")
        door.close()
        hook.close()
    assert "X-Spkrec-Signature" not in plain.headers[0]
    got = signed.headers[0]
    assert got["X-Spkrec-Signature"] == "sha256=" + hmac.new(
        b"from-file", f"{got['X-Spkrec-Timestamp']}.{got['X-Spkrec-Id']}.".encode() + got["_body"],
        hashlib.sha256).hexdigest()


def test_https_webhook_verifies_the_certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    webhook = Webhook(tls=(cert, key))
    try:
        untrusted, _ = _door(tmp_path / "a", url=webhook.url)
        _visit(untrusted, "alice")
        untrusted.close()
        trusted, _ = _door(tmp_path / "b", url=webhook.url, ca_file=str(cert))
        _visit(trusted, "alice")
        trusted.close()
    finally:
        webhook.close()
    refused = _audit(tmp_path / "a")[0]["action"]["url"]
    assert refused["ok"] is False and "CERTIFICATE_VERIFY_FAILED" in refused["error"]
    assert _audit(tmp_path / "b")[0]["action"]["url"] == {"status": 204, "ok": True}
    assert len(webhook.received) == 1  # the unverified connection never delivered the grant


def test_second_factor_must_approve_before_the_lock_moves(tmp_path):
    opened = tmp_path / "opened"
    lock = _hook(f"open({str(opened)!r}, 'a').write('x')")
    refuse, _ = _door(tmp_path / "no", command=lock, second_factor_command=_hook("import sys; sys.exit(1)"))
    _visit(refuse, "alice")
    refuse.close()
    assert not opened.exists()
    outcome = _audit(tmp_path / "no")[0]["action"]
    assert outcome["second_factor"]["ok"] is False and outcome["actuated"] is False
    badge = Webhook(status=403)
    approve, _ = _door(tmp_path / "yes", command=lock, second_factor_command=_hook("import sys, json; json.load(sys.stdin)"))
    _visit(approve, "alice")
    approve.close()
    denied_by_url, _ = _door(tmp_path / "url", command=lock, second_factor_url=badge.url)
    _visit(denied_by_url, "alice")
    denied_by_url.close()
    badge.close()
    assert opened.read_text() == "x"  # only the approved grant opened
    assert _audit(tmp_path / "yes")[0]["action"]["second_factor"]["command"]["ok"] is True
    assert _audit(tmp_path / "url")[0]["action"]["second_factor"]["url"] == {"status": 403, "ok": False, "error": "HTTP 403"}


class _Server:
    """A local HTTP server that records every request, whatever its method, and answers with
    ``reply(handler, body)`` -> (status, headers)."""

    def __init__(self, reply) -> None:
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen.append((self.command, dict(self.headers), body))
                status, headers = reply(self, body)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = do_HEAD = _any

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/door"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_redirect_is_a_failed_action_and_never_followed(tmp_path, monkeypatch):
    """urllib would turn the 302'd POST into a GET, signature headers and all, to the other
    host; a 2xx there must not count as the door opening."""
    monkeypatch.setenv("SPKREC_DOOR_SECRET", "s3cret")
    elsewhere = _Server(lambda handler, body: (200, {}))
    redirecting = _Server(lambda handler, body: (302, {"Location": elsewhere.url}))
    try:
        door, emitted = _door(tmp_path, url=redirecting.url)
        _visit(door, "alice")
        door.close()
    finally:
        redirecting.close()
        elsewhere.close()
    assert [method for method, _, _ in redirecting.seen] == ["POST"]
    assert elsewhere.seen == []  # never contacted
    outcome = _audit(tmp_path)[0]["action"]
    assert outcome["ok"] is False and outcome["url"]["status"] == 302 and "not followed" in outcome["url"]["error"]
    assert any(isinstance(e, StatusEvent) and e.state == "door-action" for e in emitted)


def _readme_receiver():
    """The receiver example in README.md ("Webhook signatures"), run as it is printed."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"\*\*Webhook signatures\.\*\*.*?```python\n(.*?)```", readme, re.S).group(1)
    scope: dict = {}
    exec(block, scope)
    return scope["authentic"]


def test_a_receiver_checks_the_signed_id(tmp_path, monkeypatch):
    """The README's receiver accepts the daemon's request and refuses it with the id changed
    (the id is signed) or replayed."""
    secret = "s3cret-for-the-lock"
    monkeypatch.setenv("SPKREC_DOOR_SECRET", secret)
    authentic, seen = _readme_receiver(), set()
    receiver = _Server(lambda handler, body: (204 if authentic(handler.headers, body, secret.encode(), seen) else 401, {}))
    try:
        door, emitted = _door(tmp_path, url=receiver.url)
        _visit(door, "alice")
        door.close()
        _, headers, body = receiver.seen[0]
        assert _audit(tmp_path)[0]["action"]["url"] == {"status": 204, "ok": True}
        assert headers["X-Spkrec-Signature"] == "sha256=" + hmac.new(
            secret.encode(), f"{headers['X-Spkrec-Timestamp']}.{emitted[0].id}.".encode() + body, hashlib.sha256).hexdigest()

        def send(**changed) -> int:
            sent = {k: v for k, v in headers.items() if k.startswith("X-Spkrec-") or k == "Content-Type"}
            request = urllib.request.Request(receiver.url, data=body, headers={**sent, **changed}, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert send(**{"X-Spkrec-Id": "0123456789abcdef"}) == 401  # a new id on an old request: refused
        assert send() == 401  # the same request again: a replay
    finally:
        receiver.close()


def _door_config(tmp_path: Path, **keys) -> Path:
    config = tmp_path / "config.toml"
    config.write_text("[door]\nauthorized = [\"alice\"]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items()))
    return config


def test_an_unusable_ca_file_is_one_line_naming_the_key(tmp_path):
    (tmp_path / "not-a-cert.pem").write_text("hello\n")
    for ca_file in (tmp_path / "missing.pem", tmp_path / "not-a-cert.pem"):
        config = _door_config(tmp_path, url="https://127.0.0.1:9/door", ca_file=str(ca_file))
        done = spkrec("door", "test", "alice", "--config", str(config))
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "door.ca_file" in lines[0] and str(ca_file) in lines[0], lines


def test_a_door_that_acts_keeps_a_default_audit_log(tmp_path):
    """No audit_log, but a command: the decision and its outcome are still on record, in
    $XDG_STATE_HOME/spkrec/door-audit.jsonl, owner-only."""
    opened = tmp_path / "opened"
    config = _door_config(tmp_path, command=_hook(f"open({str(opened)!r}, 'w')"))
    state = tmp_path / "state"
    done = spkrec("door", "test", "alice", "--config", str(config), env={"XDG_STATE_HOME": str(state)})
    assert done.returncode == 0 and opened.exists(), done.stderr
    audit = state / "spkrec" / "door-audit.jsonl"
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["phase"], r["label"], r["reason"]) for r in records] == [("decided", "alice", "test"), ("done", "alice", "test")]
    assert records[1]["action"]["actuated"] is True and f"audit log {audit}" in done.stdout
    assert stat.S_IMODE(audit.stat().st_mode) == 0o600 and stat.S_IMODE(audit.parent.stat().st_mode) == 0o700
    assert audit_path(DoorConfig(authorized=["alice"])) is None  # a door that only decides acts on nothing
