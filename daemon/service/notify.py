"""Living under systemd: readiness, the watchdog and SIGHUP, with no library beyond Python's.

sd_notify(3) is one datagram of ``KEY=VALUE`` lines to the Unix socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace), so libsystemd is not
needed. ``Type=notify`` units wait for ``READY=1``, which is sent once the model is loaded and
every source is listening. With ``WatchdogSec=`` set, systemd passes ``$WATCHDOG_USEC`` and
restarts the service when ``WATCHDOG=1`` stops coming: the pings are sent from the pipeline
loop itself, so a pipeline stuck in inference or in a sink stops them, where a timer thread
would go on pinging for a dead daemon.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Callable, Mapping, Sequence

from spkrec.daemon.pipeline.sinks import Sink
from spkrec.daemon.service.logs import LOGGER


class SystemdNotifier:
    """``$NOTIFY_SOCKET`` messages; every method is a no-op when not run by systemd."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        path = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        usec = environ.get("WATCHDOG_USEC", "")
        ours = environ.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid())  # not a child's variable
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and ours else 0.0
        self.last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> None:
        """One datagram; a socket that went away is not our failure (systemd restarts, a test ends)."""
        if not self.address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto("\n".join(lines).encode(), self.address)
            except OSError:
                pass

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def ping(self, now: float | None = None) -> None:
        """``WATCHDOG=1`` at most twice per watchdog interval (systemd's advice: half of it)."""
        if not self.watchdog_s:
            return
        now = time.monotonic() if now is None else now
        if now - self.last_ping >= self.watchdog_s / 2:
            self.last_ping = now
            self.send("WATCHDOG=1")


class Supervisor:
    """What the pipeline tells the service manager, and what the operator asks of the daemon.

    ``tick`` runs on the pipeline thread on every pass of its loop (at least every 0.2 s): it
    pings the watchdog and, after a SIGHUP, asks the sinks that keep files open to reopen them,
    on the only thread that writes to sinks.
    """

    def __init__(self, notifier: SystemdNotifier, sinks: Sequence[Sink] = (),
                 status: Callable[[], str] = lambda: "") -> None:
        self.notifier, self.sinks, self.describe = notifier, list(sinks), status
        self.hangup = threading.Event()

    def install_sighup(self) -> Callable[[], None]:
        """SIGHUP -> reopen files at the next tick (logrotate's postrotate); returns the undo."""
        previous = signal.signal(signal.SIGHUP, lambda *_: self.hangup.set())
        return lambda: signal.signal(signal.SIGHUP, previous)

    def ready(self) -> None:
        self.notifier.ready(self.describe())

    def tick(self) -> None:
        self.notifier.ping()
        if self.hangup.is_set():
            self.hangup.clear()
            reopened = [sink for sink in self.sinks if getattr(sink, "reopen", None) is not None]
            for sink in reopened:
                sink.reopen()
            logging.getLogger(LOGGER).info(f"SIGHUP: reopened {len(reopened)} file(s)")

    def stopping(self) -> None:
        self.notifier.stopping()
