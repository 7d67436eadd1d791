"""Where decisions go: JSON lines for integrators, plain log lines for services.

A sink is one class with ``handle(event)`` and ``close()``; the pipeline fans every event out
to all sinks, so adding one changes nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Protocol, TextIO

from spkrec.daemon.pipeline.events import (DoorEvent, Event, RelabelEvent, SilenceEvent, SpeakerEvent, StatusEvent,
                                           TurnEvent)
from spkrec.daemon.service import logs
from spkrec.models.errors import SpkrecError
from spkrec.models.private import open_private


class Sink(Protocol):
    def handle(self, event: Event) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """One JSON object per line, flushed per event (``--events FILE``, ``-`` for stdout).

    The file is owner-only (it says who spoke when). A write that fails (a full disk, a reader
    that went away) ends the event log, not recognition: it is said once on stderr and the
    daemon goes on, because a door or a meeting must not stop for a log.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        if target == "-":
            self.stream: TextIO | None = sys.stdout
            self.owned = False
        else:
            try:
                self.stream = open_private(Path(target))
            except SpkrecError as exc:
                raise SpkrecError(f"cannot write events ({exc})") from None
            self.owned = True

    def reopen(self) -> None:
        """After SIGHUP: close the file and open the path again, so a log that logrotate moved
        away is started afresh (no ``copytruncate``, nothing lost between copy and truncate),
        and a log stopped by a full disk is tried again."""
        if not self.owned:
            return
        self.close()
        try:
            self.stream = open_private(Path(self.target))
        except SpkrecError as exc:
            self.stream = None
            logs.warning(f"cannot reopen events file ({exc}): events are no longer written; recognition goes on")

    def handle(self, event: Event) -> None:
        if self.stream is None:
            return
        try:
            self.stream.write(json.dumps(event.to_dict()) + "\n")
            self.stream.flush()
        except BrokenPipeError:  # the reader went away (`| head`): stop writing quietly, keep serving
            self._stop()
        except OSError as exc:
            logs.warning(f"cannot write events to {self.target} ({exc.strerror or exc}): events are no longer "
                         "written; recognition goes on")
            self._stop()

    def _stop(self) -> None:
        """Give up the stream for good; nothing buffered may fail again at close or exit."""
        stream, self.stream = self.stream, None
        if self.owned:
            try:
                stream.close()
            except OSError:
                pass
        else:  # Python's docs' advice: point stdout at devnull, so exit does not complain
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    def close(self) -> None:
        if self.stream is None:
            return
        try:
            if self.owned:
                self.stream.close()
            else:
                self.stream.flush()
        except OSError:
            pass
        if self.owned:
            self.stream = None


class LogSink:
    """Log lines for ``--no-ui`` (daemon.logs gives them a time and a level): speaker changes
    (every scored window at debug level), silences, turns, door decisions and status changes,
    each at the level an operator filters on (a lost device is a warning, a failure an error)."""

    WARNINGS = {"warning", "device-lost", "reconnecting", "gap", "door-action"}

    def __init__(self, logger: logging.Logger, tag_streams: bool = False) -> None:
        self.logger = logger
        self.tag_streams = tag_streams
        self.last_label: dict[str, str | None] = {}

    def _line(self, event: Event, text: str, level: int = logging.INFO) -> None:
        prefix = f"{event.stream}: " if self.tag_streams and getattr(event, "stream", "") else ""
        self.logger.log(level, prefix + text)

    def handle(self, event: Event) -> None:
        key = getattr(event, "stream", "")
        if isinstance(event, SpeakerEvent):
            changed = event.label != self.last_label.get(key)
            if not changed and not self.logger.isEnabledFor(logging.DEBUG):
                return  # the same speaker again: a line only at debug level, so no text is built
            runner = f", next {event.candidates[1][0]} {event.candidates[1][1]:.2f}" if len(event.candidates) > 1 else ""
            self._line(event, f"[{event.end:8.2f}s] speaker {event.label} (score {event.score:.2f}{runner})",
                       logging.INFO if changed else logging.DEBUG)
            self.last_label[key] = event.label
        elif isinstance(event, SilenceEvent):
            self._line(event, f"[{event.end:8.2f}s] silence")
            self.last_label[key] = None
        elif isinstance(event, StatusEvent):
            extra = " ".join(f"{k}={v}" for k, v in event.details.items())
            level = logging.ERROR if event.state == "error" else \
                logging.WARNING if event.state in self.WARNINGS else logging.INFO
            self._line(event, f"status {event.state}: {event.message} {extra}".rstrip(), level)
        elif isinstance(event, TurnEvent):
            self._line(event, f"[{event.confirmed:8.2f}s] turn {event.label} {event.start:.2f}-{event.end:.2f} s")
        elif isinstance(event, RelabelEvent):
            span = f"the turn at {event.start:.2f} s" if event.start == event.end else \
                f"turns {event.start:.2f}-{event.end:.2f} s"
            self._line(event, f"relabel {event.was} -> {event.label} ({span})")
        elif isinstance(event, DoorEvent):
            verdict = "granted" if event.granted else "denied"
            self._line(event, f"[{event.end:8.2f}s] door {verdict} {event.label} ({event.reason}, score "
                              f"{event.score:.2f}, id {event.id})")

    def close(self) -> None:
        pass


class ProgressSink:
    """A progress bar over stream time, for `spkrec label` (a recording processed as fast as possible)."""

    def __init__(self, duration_s: float, console) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("labelling"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
                                 TimeRemainingColumn(), console=console, transient=True)
        self.task = self.progress.add_task("label", total=max(duration_s, 1.0))
        self.progress.start()

    def handle(self, event: Event) -> None:
        if isinstance(event, (SpeakerEvent, SilenceEvent)):
            self.progress.update(self.task, completed=event.end)

    def close(self) -> None:
        self.progress.stop()
