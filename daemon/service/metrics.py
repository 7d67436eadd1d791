"""Prometheus metrics and a health check over HTTP (``[metrics] listen``), for a daemon nobody watches.

Counts are not kept twice: the per-stream counters the UI and the exit summary already keep
(``LiveState``) are read when Prometheus scrapes, by a collector. What has no counter yet, the
distribution of inference time and of end-to-end latency, is observed by a sink into
``prometheus_client`` histograms. ``/health`` answers 200 while every input delivers audio and
503 once one has been mute for ``stale_s`` (an unplugged or wedged microphone); silence is audio,
so a quiet room stays healthy.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from spkrec.daemon.pipeline.events import Event, SpeakerEvent
from spkrec.daemon.pipeline.state import LiveState
from spkrec.daemon.service.config import MetricsConfig, listen_address
from spkrec.models import __version__
from spkrec.models.errors import SpkrecError

INFERENCE_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0)


class StreamCollector:
    """The streams' own counters, read at scrape time."""

    def __init__(self, states: Sequence[LiveState]) -> None:
        self.states = states

    def collect(self) -> Iterator[Metric]:
        windows = CounterMetricFamily("spkrec_windows_scored", "Voiced windows sent to the speaker model",
                                      labels=["stream"])
        decisions = CounterMetricFamily("spkrec_decisions", "Windows decided, by class of label",
                                        labels=["stream", "class"])
        door = CounterMetricFamily("spkrec_door_decisions", "Door decisions", labels=["stream", "result"])
        dropped = CounterMetricFamily("spkrec_dropped_blocks", "Audio blocks dropped because the pipeline fell "
                                                               "behind", labels=["stream"])
        overflows = CounterMetricFamily("spkrec_overflows", "Input overflows reported by the audio device",
                                        labels=["stream"])
        lost = CounterMetricFamily("spkrec_audio_lost_seconds", "Audio that never arrived (drops, a lost device)",
                                   labels=["stream"])
        since = GaugeMetricFamily("spkrec_seconds_since_audio", "Seconds since the input last delivered audio",
                                  labels=["stream"])
        now = time.monotonic()
        for state in self.states:
            with state.lock:
                name, counts, doors = state.name, dict(state.decisions), dict(state.door_decisions)
                values = (state.windows, state.dropped, state.overflows, state.lost_s, state.last_audio)
            windows.add_metric([name], values[0])
            for kind in ("known", "unknown", "silence"):
                decisions.add_metric([name, kind], counts.get(kind, 0))
            for result in ("granted", "denied"):
                door.add_metric([name, result], doors.get(result, 0))
            dropped.add_metric([name], values[1])
            overflows.add_metric([name], values[2])
            lost.add_metric([name], values[3])
            since.add_metric([name], max(0.0, now - values[4]))
        yield from (windows, decisions, door, dropped, overflows, lost, since)


class LatencySink:
    """Inference and end-to-end latency (audio arrived -> decision out) of every scored window."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.inference = Histogram("spkrec_inference_seconds", "Engine call that scored the window",
                                   ["stream"], buckets=INFERENCE_BUCKETS, registry=registry)
        self.latency = Histogram("spkrec_latency_seconds", "From the end of a window's audio arriving to its "
                                 "decision", ["stream"], buckets=LATENCY_BUCKETS, registry=registry)

    def handle(self, event: Event) -> None:
        if isinstance(event, SpeakerEvent):
            self.inference.labels(event.stream).observe(event.inference_ms / 1000.0)
            self.latency.labels(event.stream).observe(event.latency_ms / 1000.0)

    def close(self) -> None:
        pass


class MetricsServer:
    """``/metrics`` (Prometheus text) and ``/health`` (JSON) on a thread of their own."""

    def __init__(self, cfg: MetricsConfig, states: Sequence[LiveState], provider: str, precision: str,
                 fingerprint: str, model: str, precision_note: str = "") -> None:
        self.states, self.stale_s = states, cfg.stale_s
        self.registry = CollectorRegistry()
        self.registry.register(StreamCollector(states))
        Info("spkrec_model", "The model served and where it runs", registry=self.registry).info(
            {"version": __version__, "provider": provider, "precision": precision, "fingerprint": fingerprint,
             "path": model, "precision_note": precision_note})
        self.sink = LatencySink(self.registry)
        host, port = listen_address(cfg.listen)
        try:
            self.server = ThreadingHTTPServer((host, port), self._handler())
        except OSError as exc:
            raise SpkrecError(f"cannot serve metrics on {cfg.listen} ({exc.strerror or exc}): change [metrics] "
                              "listen, or set it to \"\" to turn metrics off") from None
        self.server.daemon_threads = True
        self.address = f"{host or '0.0.0.0'}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)
        self.thread.start()

    def health(self) -> tuple[bool, dict]:
        now = time.monotonic()
        streams = {s.name: {"seconds_since_audio": round(now - s.last_audio, 1), "status": s.status}
                   for s in self.states}
        stale = sorted(name for name, s in streams.items() if s["seconds_since_audio"] > self.stale_s)
        return not stale, {"healthy": not stale, "stale_s": self.stale_s, "stale": stale, "streams": streams}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, CONTENT_TYPE_LATEST, generate_latest(server.registry))
                elif path == "/health":
                    healthy, body = server.health()
                    self._reply(200 if healthy else 503, "application/json", json.dumps(body).encode())
                else:
                    self._reply(404, "text/plain", b"spkrec serves /metrics and /health\n")

            def _reply(self, code: int, kind: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # a scrape every 15 s is not news
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
