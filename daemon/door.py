"""The access-control door: a policy over recent decisions, an action worker, an audit log.

The policy grants only when one authorised name wins most of the last few voiced windows with
enough voiced speech; "unknown" never opens it. Actions (a program run without a shell, an
HTTP POST) run in their own worker thread with a timeout, so a slow or failing lock never
stalls recognition. Every grant and denial is appended to the audit log, flushed per line.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
import urllib.request
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from spkrec.models.config import DoorConfig
from spkrec.models.scoring import UNKNOWN

from .events import DoorEvent, Event, SilenceEvent, SpeakerEvent


class DoorPolicy:
    """N of the last M voiced windows, S voiced seconds, a cooldown: pure logic, no side effects."""

    def __init__(self, cfg: DoorConfig, hop_s: float) -> None:
        self.cfg, self.hop_s = cfg, hop_s
        self.recent: deque[SpeakerEvent] = deque(maxlen=cfg.of_last)
        self.open_until = -1.0  # stream time before which the door stays as it is
        self.denied_label: str | None = None

    def observe(self, event: Event) -> DoorEvent | None:
        if isinstance(event, SilenceEvent):
            self.recent.clear()
            self.denied_label = None
            return None
        if not isinstance(event, SpeakerEvent):
            return None
        self.recent.append(event)
        label, wins = Counter(e.label for e in self.recent).most_common(1)[0]
        if wins < self.cfg.wins:
            return None
        winning = [e for e in self.recent if e.label == label]
        voiced_s = sum(e.voiced * self.hop_s for e in winning)
        if voiced_s < self.cfg.min_voiced_s:
            return None
        scores = tuple(e.score for e in winning)
        if label in self.cfg.authorized and label != UNKNOWN:
            if event.end < self.open_until:
                return None
            self.open_until = event.end + self.cfg.cooldown_s
            return DoorEvent(label, True, min(scores), "authorised", winning[0].start, event.end, scores,
                             self.open_until, stream=event.stream)
        if label == self.denied_label:
            return None  # one denial per attempt, not one per window
        self.denied_label = label
        reason = "unknown voice" if label == UNKNOWN else "not authorised"
        return DoorEvent(label, False, max(scores), reason, winning[0].start, event.end, scores, stream=event.stream)


class DoorActions:
    """Runs the configured command and webhook for granted openings, off the audio path."""

    def __init__(self, cfg: DoorConfig, on_result: Callable[[DoorEvent, dict], None]) -> None:
        self.cfg, self.on_result = cfg, on_result
        self.queue: queue.Queue = queue.Queue(maxsize=100)
        self.thread = threading.Thread(target=self._work, name="door-actions", daemon=True)
        self.thread.start()

    def submit(self, decision: DoorEvent) -> None:
        try:
            self.queue.put_nowait(decision)
        except queue.Full:
            self.on_result(decision, {"error": "action queue full: decision not acted on"})

    def close(self, timeout: float | None = None) -> None:
        self.queue.put(None)
        self.thread.join(timeout if timeout is not None else self.cfg.timeout_s * 2 + 1)

    def _work(self) -> None:
        while (decision := self.queue.get()) is not None:
            result = {}
            if decision.granted and self.cfg.command:
                result["command"] = self._run_command(decision)
            if decision.granted and self.cfg.url:
                result["url"] = self._post(decision)
            self.on_result(decision, result)

    def _run_command(self, decision: DoorEvent) -> dict:
        env = {**os.environ, "SPKREC_LABEL": decision.label, "SPKREC_SCORE": f"{decision.score:.4f}",
               "SPKREC_GRANTED": "1" if decision.granted else "0"}
        try:
            done = subprocess.run(list(self.cfg.command), input=json.dumps(decision.to_dict()), text=True, env=env,
                                  capture_output=True, timeout=self.cfg.timeout_s)  # a list: no shell, no injection
            return {"exit": done.returncode, "ok": done.returncode == 0, "stderr": done.stderr[-200:]}
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {self.cfg.timeout_s} s and was killed"}
        except OSError as exc:
            return {"ok": False, "error": f"cannot run {self.cfg.command[0]}: {exc.strerror}"}

    def _post(self, decision: DoorEvent) -> dict:
        request = urllib.request.Request(self.cfg.url, data=json.dumps(decision.to_dict()).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as response:
                return {"status": response.status, "ok": 200 <= response.status < 300}
        except Exception as exc:  # network errors come in many types; all are a failed action
            return {"ok": False, "error": str(exc)[:200]}


class AuditLog:
    """Append-only JSONL; each line flushed and synced before the next decision."""

    def __init__(self, path: str) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    def write(self, decision: DoorEvent, result: dict) -> None:
        line = json.dumps({**decision.to_dict(), "action": result}) + "\n"
        with self.lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


class DoorSink:
    """The door as a sink: decisions go to the event stream, the actions worker and the audit log."""

    def __init__(self, cfg: DoorConfig, hop_s: float, emit: Callable[[Event], None]) -> None:
        self.policy = DoorPolicy(cfg, hop_s)
        self.audit = AuditLog(cfg.audit_log) if cfg.audit_log else None
        self.emit = emit
        self.last: DoorEvent | None = None
        self.last_result: dict = {}
        self.actions = DoorActions(cfg, self._done)

    def _done(self, decision: DoorEvent, result: dict) -> None:
        self.last_result = result
        if self.audit is not None:
            self.audit.write(decision, result)

    def handle(self, event: Event) -> None:
        decision = self.policy.observe(event)
        if decision is None:
            return
        self.last = decision
        self.emit(decision)
        self.actions.submit(decision)

    def close(self) -> None:
        self.actions.close()
