"""Log lines for an unattended daemon (``--no-ui``): one event per line, with its time and level.

On a terminal or into a file a line reads ``2026-11-27T09:15:02.481+01:00 INFO    speaker alice ...``.
Under systemd, where stderr is the journal, the time is left out (journald stamps every line
itself) and the level becomes the ``<N>`` syslog-priority prefix of sd-daemon(3), which journald
turns into the entry's priority, so ``journalctl -p warning`` finds the warnings. No colour
codes are ever written: these lines are for files and journals.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import datetime
from typing import Callable, TextIO

from spkrec.models.config import choices

LOGGER = "spkrec"
LEVELS = {name: logging.getLevelName(name.upper()) for name in choices("log.level")}  # [log] level's names
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def journald_stderr(stream: TextIO) -> bool:
    """True when ``stream`` is the journal: systemd sets ``$JOURNAL_STREAM`` to "DEVICE:INODE" of
    the socket it connects stderr to. Comparing them (as systemd.exec(5) advises) keeps a child
    that inherited the variable but writes elsewhere (a pipe, a file) on the timestamped form."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # a StringIO, a closed stream
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


class LineFormatter(logging.Formatter):
    """``ISO-TIME LEVEL message``, or ``<priority>message`` for the journal."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if self.journal:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{message}"
        when = datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")
        return f"{when} {record.levelname:<7} {message}"


def setup(level: str = "info", stream: TextIO | None = None, name: str = LOGGER) -> logging.Logger:
    """The daemon's logger (``name``: a test may ask for another), writing to ``stream`` (stderr)
    at ``level`` and above."""
    stream = stream or sys.stderr
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LineFormatter(journal=journald_stderr(stream)))
    logger.addHandler(handler)
    logger.setLevel(LEVELS[level])
    logger.propagate = False  # a library that configures the root logger must not print our lines twice
    return logger


def console_warning(console) -> Callable[[str], None]:
    """How a command run by a person says a warning: one highlighted line on a Rich console."""
    return lambda text: console.print(f"[bold yellow]warning: {text}[/]")


def warning(text: str) -> None:
    """A warning from deep inside the daemon: a log line when the service log is set up (--no-ui),
    else one ``spkrec: warning:`` line on stderr for the person at the terminal."""
    logger = logging.getLogger(LOGGER)
    if logger.handlers:
        logger.warning(text)
    else:
        print(f"spkrec: warning: {text}", file=sys.stderr, flush=True)
