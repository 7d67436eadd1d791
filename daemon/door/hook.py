"""The access-control door's actions: a worker, the lock's command and webhook, an audit log.

The policy (door/policy.py) decides; what a grant sets off runs in a worker thread of its own, so a slow lock never stalls recognition, in an order that keeps the door safe:

1. the decision is written to the audit log and synced to disk, so a crash afterwards still
   leaves it on record; if it cannot be written, nothing is actuated (fail closed);
2. a grant that waited too long in the queue is dropped (the visitor has gone);
3. the optional second factor (badge, PIN, challenge) must approve;
4. the lock's command and webhook run, each with a timeout; the webhook request is signed
   (timestamp, decision id and body) and never follows a redirect;
5. the outcome is written to the audit log next to its decision.

A door that actuates something always keeps an audit log: ``audit_log``, else a default one
(``audit_path``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from spkrec.daemon.door.config import DoorConfig
from spkrec.daemon.door.policy import DoorPolicy
from spkrec.daemon.pipeline.events import DoorEvent, Event, StatusEvent
from spkrec.models.errors import ConfigError, SpkrecError
from spkrec.models.private import FILE_MODE, touch_private

QUEUE_SIZE = 32  # decisions waiting for the worker; beyond this they are refused, never waited for
DEFAULT_AUDIT = Path("spkrec") / "door-audit.jsonl"  # under $XDG_STATE_HOME


def state_home() -> Path:
    """``$XDG_STATE_HOME``, XDG's default being ``~/.local/state`` (a relative value is ignored, as
    the XDG spec says)."""
    value = os.environ.get("XDG_STATE_HOME", "")
    return Path(value) if os.path.isabs(value) else Path.home() / ".local" / "state"


def audit_path(cfg: DoorConfig) -> Path | None:
    """Where this door's decisions are recorded: ``audit_log``; else, for a door that actuates
    something (a ``command`` or ``url``), ``$XDG_STATE_HOME/spkrec/door-audit.jsonl``, because a
    lock that moves with no record cannot be audited afterwards. None for a door that only
    decides (its decisions are on the event stream)."""
    if cfg.audit_log:
        return Path(cfg.audit_log).expanduser()
    if cfg.command or cfg.url:
        return state_home() / DEFAULT_AUDIT
    return None


def open_audit(cfg: DoorConfig) -> AuditLog | None:
    """The door's audit log, created owner-only now (a folder that cannot be made is one error at start)."""
    path = audit_path(cfg)
    return AuditLog(str(path)) if path is not None else None


def tls_context(cfg: DoorConfig) -> ssl.SSLContext:
    """Certificates and host names are always checked, against ``ca_file`` when one is set. A
    missing or unusable CA file is a config error, said once at start, not a traceback."""
    cafile = str(Path(cfg.ca_file).expanduser()) if cfg.ca_file else None
    try:
        return ssl.create_default_context(cafile=cafile)
    except ssl.SSLError as exc:  # a file that holds no PEM certificate
        raise ConfigError(f"config key 'door.ca_file': {cfg.ca_file} holds no usable CA certificate "
                          f"({exc.reason or exc})") from None
    except OSError as exc:
        raise ConfigError(f"config key 'door.ca_file': cannot read {cfg.ca_file}: {exc.strerror or exc}") from None


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A 30x reply is a failed action, never followed: urllib would re-send the POST as a GET,
    signature headers included, to wherever it points, and a 2xx there would count as actuated."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError(code): the caller's failure path


def read_secret(cfg: DoorConfig) -> bytes | None:
    """The webhook signing secret: ``secret_file``'s first line, else ``$secret_env``; None = unsigned."""
    if cfg.secret_file:
        try:
            secret = Path(cfg.secret_file).expanduser().read_text(encoding="utf-8").splitlines()[:1]
        except OSError as exc:
            raise SpkrecError(f"config key 'door.secret_file': cannot read {cfg.secret_file}: {exc.strerror}") from None
        if not secret or not secret[0].strip():
            raise SpkrecError(f"config key 'door.secret_file': {cfg.secret_file} holds no secret")
        return secret[0].strip().encode()
    value = os.environ.get(cfg.secret_env, "") if cfg.secret_env else ""
    return value.encode() if value else None


def signature(secret: bytes, timestamp: str, decision_id: str, body: bytes) -> str:
    """What a receiver recomputes: HMAC-SHA256 over "<timestamp>.<id>.<body>", hex, prefixed
    "sha256=". The id is signed because receivers refuse ids they have seen (replays): an
    unsigned id could be changed to slip a replayed request past them."""
    signed = f"{timestamp}.{decision_id}.".encode() + body
    return "sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()


class AuditLog:
    """Append-only JSONL, owner-only; every line synced to disk before the worker goes on."""

    def __init__(self, path: str) -> None:
        self.path = touch_private(Path(path))  # a folder that cannot be made is one error at start
        self.lock = threading.Lock()

    def write(self, record: dict) -> None:
        """Raises OSError when the line cannot be made durable: the caller fails closed."""
        line = (json.dumps(record) + "\n").encode()
        with self.lock:  # opened per line: a log rotated away is simply started again, 0600
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)


class DoorActions:
    """The worker behind a door: audit, second factor, lock command and webhook, audit again.

    ``report`` receives status events (an audit failure, a lock that failed); it is called from
    the worker thread, so it must be safe to call from any thread.
    """

    def __init__(self, cfg: DoorConfig, audit: AuditLog | None, report: Callable[[Event], None]) -> None:
        self.cfg, self.audit, self.report = cfg, audit, report
        self.secret = read_secret(cfg)
        self.opener = urllib.request.build_opener(_RefuseRedirects,
                                                  urllib.request.HTTPSHandler(context=tls_context(cfg)))
        self.queue: queue.Queue[DoorEvent] = queue.Queue(maxsize=QUEUE_SIZE)
        self.closing = threading.Event()  # no more decisions: finish the queue, within the hook timeout
        self.abandon = threading.Event()  # that time is up: what is left is recorded, not actuated
        self.child: subprocess.Popen | None = None  # the program running now, killed at shutdown
        self.thread = threading.Thread(target=self._work, name="door-actions", daemon=True)
        self.thread.start()

    def submit(self, decision: DoorEvent) -> None:
        """Never blocks the pipeline: a full queue refuses the decision, on record."""
        try:
            self.queue.put_nowait(decision)
        except queue.Full:
            self._fail(decision, "door action queue full: decision not acted on")

    def close(self) -> None:
        """Stop within the hook timeout: the queue is worked off until then; after it, a hanging
        program is killed and grants still queued are recorded as not actuated. A second call
        returns at once."""
        self.closing.set()
        self.thread.join(self.cfg.timeout_s + 1.0)
        self.abandon.set()
        child = self.child
        if child is not None and child.poll() is None:
            child.kill()
        self.thread.join(1.0)

    def _work(self) -> None:
        while not (self.closing.is_set() and self.queue.empty()):
            try:
                decision = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            self.carry_out(decision)

    def carry_out(self, decision: DoorEvent) -> dict:
        """Audit, act on a grant, audit the outcome; what happened (``ok``, per hook). The worker
        calls it for every decision; `spkrec door test` calls it once, directly."""
        if not self._record(decision, "decided", None):
            if decision.granted:
                self._fail(decision, "audit log cannot be written: door not actuated")
            return {"ok": False, "actuated": False, "error": "audit log cannot be written"}
        result = self._act(decision) if decision.granted else {}
        self._record(decision, "done", result)
        if decision.granted and not result.get("ok", False):
            self.report(StatusEvent("door-action", f"door for {decision.label}: {result.get('error', 'failed')}",
                                    {"id": decision.id, "action": result}, stream=decision.stream, demo=decision.demo))
        return result

    def _act(self, decision: DoorEvent) -> dict:
        """Actuate a grant if it is still fresh and the second factor agrees; what happened, for the audit."""
        if self.abandon.is_set():
            return {"ok": False, "actuated": False, "error": "shutting down: not actuated"}
        waited = time.time() - decision.wall_time
        if waited > self.cfg.max_delay_s:
            return {"ok": False, "actuated": False,
                    "error": f"waited {waited:.1f} s for the worker (max_delay_s {self.cfg.max_delay_s}): not actuated"}
        result: dict = {}
        if self.cfg.second_factor_command or self.cfg.second_factor_url:
            result["second_factor"] = self._second_factor(decision)
            if not result["second_factor"]["ok"]:
                return {**result, "ok": False, "actuated": False, "error": "second factor did not approve"}
        if self.cfg.command:
            result["command"] = self._run(self.cfg.command, decision, self.cfg.timeout_s)
        if self.cfg.url:
            result["url"] = self._post(self.cfg.url, decision, self.cfg.timeout_s)
        failed = [key for key in ("command", "url") if key in result and not result[key]["ok"]]
        return {**result, "ok": not failed, "actuated": True, **({"error": f"{' and '.join(failed)} failed"} if failed else {})}

    def _second_factor(self, decision: DoorEvent) -> dict:
        checks = {}
        if self.cfg.second_factor_command:
            checks["command"] = self._run(self.cfg.second_factor_command, decision, self.cfg.second_factor_timeout_s)
        if self.cfg.second_factor_url:
            checks["url"] = self._post(self.cfg.second_factor_url, decision, self.cfg.second_factor_timeout_s)
        return {**checks, "ok": all(c["ok"] for c in checks.values())}

    def _record(self, decision: DoorEvent, phase: str, result: dict | None) -> bool:
        if self.audit is None:
            return True
        record = {**decision.to_dict(), "phase": phase, **({"action": result} if result is not None else {})}
        try:
            self.audit.write(record)
            return True
        except OSError as exc:
            self.report(StatusEvent("error", f"audit log {self.audit.path} cannot be written ({exc.strerror})",
                                    {"id": decision.id}, stream=decision.stream, demo=decision.demo))
            return False

    def _fail(self, decision: DoorEvent, reason: str) -> None:
        self.report(StatusEvent("door-action", f"door for {decision.label}: {reason}", {"id": decision.id},
                                stream=decision.stream, demo=decision.demo))

    def _run(self, argv: list, decision: DoorEvent, timeout: float) -> dict:
        """A program, without a shell (a name cannot inject anything); exit 0 is success."""
        env = {**os.environ, "SPKREC_LABEL": decision.label, "SPKREC_SCORE": f"{decision.score:.4f}",
               "SPKREC_GRANTED": "1" if decision.granted else "0", "SPKREC_DECISION_ID": decision.id}
        env.pop(self.cfg.secret_env, None)  # the signing secret is not the hook's business
        try:
            self.child = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True, env=env)
        except OSError as exc:
            return {"ok": False, "error": f"cannot run {argv[0]}: {exc.strerror}"}
        try:
            _, stderr = self.child.communicate(json.dumps(decision.to_dict()), timeout=timeout)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.communicate()
            return {"ok": False, "error": f"timed out after {timeout} s and was killed"}
        finally:
            code, self.child = self.child.returncode, None
        if code is not None and code < 0:
            return {"exit": code, "ok": False, "error": f"killed by signal {-code}"}
        return {"exit": code, "ok": code == 0, "stderr": stderr[-200:]}

    def _post(self, url: str, decision: DoorEvent, timeout: float) -> dict:
        """A JSON POST, signed when a secret is configured; a 2xx reply is success."""
        body = json.dumps(decision.to_dict()).encode()
        headers = {"Content-Type": "application/json", "X-Spkrec-Id": decision.id}
        if self.secret is not None:
            timestamp = str(int(time.time()))
            headers |= {"X-Spkrec-Timestamp": timestamp,
                        "X-Spkrec-Signature": signature(self.secret, timestamp, decision.id, body)}
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with self.opener.open(request, timeout=timeout) as response:
                return {"status": response.status, "ok": 200 <= response.status < 300}
        except urllib.error.HTTPError as exc:
            moved = " (redirects are not followed)" if 300 <= exc.code < 400 else ""
            return {"status": exc.code, "ok": False, "error": f"HTTP {exc.code}{moved}"}
        except Exception as exc:  # network and TLS errors come in many types; all are a failed action
            reason = getattr(exc, "reason", exc)
            return {"ok": False, "error": str(reason)[:200]}


def fire_test(cfg: DoorConfig, name: str, stream: str = "") -> tuple[DoorEvent, dict]:
    """One synthetic grant for ``name`` through the configured chain (audit log, second factor,
    lock command, webhook), as a real grant would go, so a lock can be wired and checked without
    anyone speaking. Its reason is "test", in the hook's JSON and in the audit log."""
    if not (cfg.command or cfg.url):
        raise SpkrecError("no door hook configured: set [door] command and/or url (README, The door)")
    if name not in cfg.authorized:
        listed = ", ".join(cfg.authorized) or "nobody"
        raise SpkrecError(f"'{name}' is not in door.authorized ({listed}): the door would never open for them")
    now = time.time()
    decision = DoorEvent(name, True, 1.0, "test", 0.0, 0.0, (), wall_time=now, stream=stream)
    actions = DoorActions(cfg, open_audit(cfg), lambda event: None)
    try:
        return decision, actions.carry_out(decision)
    finally:
        actions.close()


class DoorSink:
    """The door as a sink: decisions go to the event stream (after the speaker event that caused
    them), then to the worker, which audits and acts."""

    def __init__(self, cfg: DoorConfig, emit: Callable[[Event], None], threshold: Callable[[], float],
                 margin: float = 0.0) -> None:
        """``emit`` must be callable from the worker thread too (a live Stream's is: it posts
        events from other threads to the pipeline thread). ``threshold`` is asked at each decision."""
        self.policy = DoorPolicy(cfg, threshold, margin)
        self.emit = emit
        self.actions = DoorActions(cfg, open_audit(cfg), emit)

    def handle(self, event: Event) -> None:
        decision = self.policy.observe(event)
        if decision is None:
            return
        self.emit(decision)
        self.actions.submit(decision)

    def finish(self) -> None:
        """The stream is ending: the worker works off its queue (bounded by the hook timeout)
        now, so what it reports (failed or abandoned grants) goes out before "stopped"."""
        self.actions.close()

    def close(self) -> None:
        self.actions.close()
