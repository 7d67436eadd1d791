"""Running unattended: systemd's notify protocol and watchdog, SIGHUP, the service log, Prometheus
metrics and health, `spkrec door test`, the unit files. The main run is a real daemon on the
shipped base model listening to the virtual microphone, with a calibrated gallery and a door."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import conversation
from conftest import REPO, Webhook, live_exe, speaker_files, spkrec, wait_for

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) +\S")
ENROLLED, STRANGER = "533", "3331"  # enrolled in the `site` gallery; a voice it only calibrated against
LONGEST = max(speaker_files(ENROLLED), key=lambda path: path.stat().st_size)  # enough windows to watch


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class NotifySocket:
    """What systemd listens on for a Type=notify unit: a datagram socket; every message is kept
    with the time it came."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict]] = []
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while not self.closing.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))

    def wait(self, key: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, fields in list(self.messages):
                if key in fields:
                    return fields
            time.sleep(0.05)
        raise AssertionError(f"no {key} within {timeout} s: {self.messages}")

    def pings(self) -> list[float]:
        return [when for when, fields in self.messages if fields.get("WATCHDOG") == "1"]

    def close(self) -> None:
        self.closing.set()
        self.thread.join(1)
        self.sock.close()


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict:
    """{(name, frozenset(labels.items())): value} from Prometheus text."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: dict, name: str, **labels) -> float:
    return metrics[(name, frozenset(labels.items()))]


@pytest.fixture(scope="module")
def service(site, mic, tmp_path_factory):
    """`spkrec-live --device pulse --no-ui` as the unit runs it: notify socket, watchdog, metrics,
    a door; mid-way the events file is rotated as logrotate would (rename, then SIGHUP)."""
    root = tmp_path_factory.mktemp("service")
    port = free_port()
    marker = root / "opened.json"
    config = root / "config.toml"
    config.write_text(site["config"].read_text() + f"""
[metrics]
listen = "127.0.0.1:{port}"
[door]
authorized = ["{ENROLLED}"]
command = ["{sys.executable}", "-c", "import sys, pathlib; pathlib.Path('{marker}').write_text(sys.stdin.read())"]
audit_log = "{root / 'audit.jsonl'}"
""")
    wav = root / "visit.wav"
    conversation.assemble([(p, who) for who in (ENROLLED, STRANGER) for p in speaker_files(who)[6:8]], wav, gap_s=2.0)
    notify = NotifySocket(str(root / "notify.sock"))
    events, rotated, stderr = root / "events.jsonl", root / "events.jsonl.1", root / "stderr.log"
    env = {**os.environ, **mic.env, "NOTIFY_SOCKET": str(root / "notify.sock"), "WATCHDOG_USEC": "1000000"}
    seen: dict = {}
    with open(stderr, "w") as err:
        process = subprocess.Popen([live_exe(), "--device", "pulse", "--no-ui", "--events", str(events), "--config",
                                    str(config)], env=env, stderr=err)
        try:
            seen["ready"] = notify.wait("READY", timeout=90)
            seen["listening_before_ready"] = '"listening"' in events.read_text()
            seen["health_start"] = scrape(port, "/health")
            time.sleep(0.5)
            player = mic.play(wav)
            wait_for(events, '"speaker"')
            seen["mid"] = scrape(port)
            events.rename(rotated)  # logrotate's move, then its postrotate: systemctl reload (SIGHUP)
            process.send_signal(signal.SIGHUP)
            assert player.wait(300) == 0
            time.sleep(3.0)
            seen["end"] = scrape(port)
            seen["health_end"] = scrape(port, "/health")
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
            notify.close()
    seen.update(returncode=process.returncode, notify=notify, stderr=stderr.read_text(), events=events,
                rotated=rotated, marker=marker, port=port)
    return seen


def test_ready_comes_once_listening_then_watchdog_pings_then_stopping(service):
    assert service["returncode"] == 0, service["stderr"]
    messages = [fields for _, fields in service["notify"].messages]
    assert messages[0]["READY"] == "1" and messages[0]["STATUS"].startswith("listening on ")
    assert service["listening_before_ready"]  # the source was open before systemd was told
    assert messages[-1].get("STOPPING") == "1"
    pings = service["notify"].pings()
    assert len(pings) >= 10  # WATCHDOG_USEC=1 s: a ping about every half second for the whole run
    assert max(b - a for a, b in zip(pings, pings[1:])) < 1.0  # never a gap the watchdog would punish


def test_sighup_reopens_the_events_file_after_rotation(service):
    before = conversation.read_events(service["rotated"])
    after = conversation.read_events(service["events"])
    assert before[0]["state"] == "listening" and any(e["event"] == "speaker" for e in before)
    assert any(e["event"] == "speaker" for e in after) and after[-1]["state"] == "stopped"
    assert stat.S_IMODE(service["events"].stat().st_mode) == 0o600
    speech = [e for e in before + after if e["event"] in ("speaker", "silence")]
    assert all(a["end"] < b["end"] for a, b in zip(speech, speech[1:]))  # one timeline, nothing written twice
    assert "SIGHUP: reopened 1 file(s)" in service["stderr"]


def test_metrics_are_scraped_from_the_running_daemon(service, base_model):
    from spkrec.models.engine import Engine

    code, text = service["end"]
    assert code == 200
    end, mid = samples(text), samples(service["mid"][1])
    scored = value(end, "spkrec_windows_scored_total", stream="pulse")
    assert scored >= 20 and value(mid, "spkrec_windows_scored_total", stream="pulse") < scored
    known, unknown, silence = (value(end, "spkrec_decisions_total", stream="pulse", **{"class": c})
                               for c in ("known", "unknown", "silence"))
    assert known >= 5 and unknown >= 5 and silence >= 5 and known + unknown == scored
    assert value(end, "spkrec_door_decisions_total", stream="pulse", result="granted") >= 1
    assert service["marker"].is_file()  # the grant the counter counts did open the door
    assert value(end, "spkrec_dropped_blocks_total", stream="pulse") == 0
    assert value(end, "spkrec_overflows_total", stream="pulse") == 0
    assert value(end, "spkrec_seconds_since_audio", stream="pulse") < 2.0
    assert value(end, "spkrec_inference_seconds_count", stream="pulse") == scored
    assert value(end, "spkrec_latency_seconds_count", stream="pulse") == scored
    info = next(labels for (name, labels), _ in end.items() if name == "spkrec_model_info")
    assert dict(info)["fingerprint"] == Engine(base_model, provider="cpu").info.fingerprint
    assert dict(info)["provider"] == "CPUExecutionProvider"
    for code, body in (service["health_start"], service["health_end"]):
        assert code == 200 and json.loads(body)["healthy"] is True


def test_service_log_lines_carry_time_and_level_and_no_colour(service):
    lines = service["stderr"].splitlines()
    assert lines and all(LOG_LINE.match(line) for line in lines), [x for x in lines if not LOG_LINE.match(x)][:3]
    assert "\x1b[" not in service["stderr"]
    assert any(" INFO    " in line and "door granted 533" in line for line in lines)
    assert any(" INFO    " in line and "session summary" in line for line in lines)


def test_health_fails_when_an_input_hears_nothing(tmp_path):
    """stdin open but silent (not even zeros arrive): /health turns 503 after stale_s, and
    recovers once audio flows again."""
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'[metrics]\nlisten = "127.0.0.1:{port}"\nstale_s = 1.0\n')
    process = subprocess.Popen([live_exe(), "--input", "-", "--no-ui", "--config", str(config)], stdin=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=False)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                code, body = scrape(port, "/health")
            except urllib.error.URLError:
                assert time.monotonic() < deadline, "metrics never came up"
                time.sleep(0.2)
                continue
            if code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert code == 503 and json.loads(body)["stale"] == ["stdin"], body
        assert value(samples(scrape(port)[1]), "spkrec_seconds_since_audio", stream="stdin") > 1.0
        process.stdin.write(b"\0\0" * 16000)  # one second of silence is audio: healthy again
        process.stdin.flush()
        time.sleep(0.5)
        assert scrape(port, "/health")[0] == 200
    finally:
        _, stderr = process.communicate(timeout=60)  # closes stdin: the input ends
    assert process.returncode == 0, stderr.decode()


def test_a_port_in_use_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = spkrec("live", "--input", str(speaker_files(ENROLLED)[0]), "--fast", "--no-ui", "--metrics",
                      f"127.0.0.1:{taken.getsockname()[1]}")
    assert done.returncode == 2 and done.stderr.startswith("spkrec: error: cannot serve metrics on 127.0.0.1:")
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_watchdog_starves_when_the_pipeline_stalls(base_model, monkeypatch, tmp_path):
    """A sink that hangs (a wedged disk, a deadlock) stalls the pipeline thread: the pings stop, so
    systemd's WatchdogSec restarts the daemon; they resume once the pipeline moves again."""
    sys.path.insert(0, str(REPO / "tests" / "benchmarks"))
    from live_bench import make_stream
    from spkrec.daemon.pipeline.run import Pipeline
    from spkrec.daemon.service.notify import Supervisor, SystemdNotifier
    from spkrec.models.config import Config
    from spkrec.models.engine import Engine

    notify = NotifySocket(str(tmp_path / "notify.sock"))
    release, stalled = threading.Event(), threading.Event()

    class HangingSink:
        def __init__(self) -> None:
            self.windows = 0

        def handle(self, event) -> None:
            if getattr(event, "label", None) is not None:
                self.windows += 1
                if self.windows == 3:
                    stalled.set()
                    release.wait(30)

        def close(self) -> None:
            pass

    engine = Engine(base_model, provider="cpu")
    stream = make_stream(engine, Config(), LONGEST, realtime=True)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000"})
    pipeline = Pipeline([stream], engine, [HangingSink()], supervisor=Supervisor(notifier))
    stop = threading.Event()
    runner = threading.Thread(target=pipeline.run, args=(stop,), daemon=True)
    runner.start()
    try:
        assert stalled.wait(60)
        stalled_at = time.monotonic()
        time.sleep(1.5)
        before = [t for t in notify.pings() if t < stalled_at]
        during = [t for t in notify.pings() if t > stalled_at + 0.2]
        assert len(before) >= 3 and during == []  # pinged while it ran; silent while it hangs
        release.set()
        time.sleep(1.0)
        assert [t for t in notify.pings() if t > stalled_at + 1.5]  # moving again: pinged again
    finally:
        release.set()
        stop.set()
        runner.join(30)
        notify.close()


def test_notify_reaches_an_abstract_socket_and_ignores_a_childs_watchdog():
    from spkrec.daemon.service.notify import SystemdNotifier

    name = f"spkrec-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "4000000"})
        notifier.ready("listening on test")
        assert sock.recv(4096).decode().splitlines()[:2] == ["READY=1", "STATUS=listening on test"]
        notifier.ping(now=100.0)
        notifier.ping(now=101.0)  # within half the interval: not sent again
        notifier.ping(now=102.5)
        assert sock.recv(4096) == b"WATCHDOG=1" and sock.recv(4096) == b"WATCHDOG=1"
        sock.settimeout(0.2)
        with pytest.raises(socket.timeout):
            sock.recv(4096)
    other = SystemdNotifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_s == 0.0  # the variables were meant for another process
    assert not SystemdNotifier({}).enabled


def test_journald_gets_priorities_instead_of_times(tmp_path):
    """Under systemd stderr is the journal ($JOURNAL_STREAM names it): lines carry sd-daemon
    priority prefixes, so `journalctl -p warning` finds warnings, and no time of their own."""
    config = tmp_path / "config.toml"
    config.write_text('[door]\nauthorized = ["nobody-enrolled"]\n')  # two warnings at start
    log = tmp_path / "journal.log"
    with open(log, "w") as err:
        info = os.fstat(err.fileno())
        done = subprocess.run([live_exe(), "--input", str(LONGEST), "--fast", "--no-ui",
                               "--config", str(config), "--log-level", "debug"], stderr=err,
                              env={**os.environ, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
    assert done.returncode == 0
    lines = log.read_text().splitlines()
    assert lines and all(re.match(r"^<[3467]>(?!\d{4}-)", line) for line in lines), lines[:3]
    assert any(line.startswith("<4>status warning: authorised nobody-enrolled") for line in lines)
    assert sum(line.startswith("<7>") and " speaker " in line for line in lines) >= 5  # debug: every window
    quiet = spkrec("live", "--input", str(LONGEST), "--fast", "--no-ui", "--config", str(config),
                   "--log-level", "warning", env={"JOURNAL_STREAM": "0:0"})  # not this stderr: timestamped lines
    lines = quiet.stderr.splitlines()
    assert lines and all(LOG_LINE.match(line) and " WARNING " in line for line in lines), lines


def test_audit_log_follows_rotation_without_a_signal(tmp_path):
    """The audit log is opened per line (and synced), so a rotated log is started afresh at once."""
    from spkrec.daemon.door.hook import AuditLog

    audit = AuditLog(str(tmp_path / "audit.jsonl"))
    audit.write({"n": 1})
    (tmp_path / "audit.jsonl").rename(tmp_path / "audit.jsonl.1")
    audit.write({"n": 2})
    assert json.loads((tmp_path / "audit.jsonl").read_text()) == {"n": 2}
    assert json.loads((tmp_path / "audit.jsonl.1").read_text()) == {"n": 1}
    assert stat.S_IMODE((tmp_path / "audit.jsonl").stat().st_mode) == 0o600


# ---------------------------------------------------------------------------------- operators' commands


def test_door_test_fires_the_configured_hook_once(tmp_path):
    received = tmp_path / "hook.json"
    webhook = Webhook()
    config = tmp_path / "config.toml"
    config.write_text(f"""[door]
authorized = ["alice"]
command = ["{sys.executable}", "-c", "import os, sys, pathlib; pathlib.Path('{received}').write_text(os.environ['SPKREC_LABEL'] + ' ' + sys.stdin.read())"]
url = "{webhook.url}"
audit_log = "{tmp_path / 'audit.jsonl'}"
""")
    try:
        done = spkrec("door", "test", "alice", "--config", str(config))
    finally:
        webhook.close()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("door test for alice: lock actuated; command ok (exit 0), url ok (HTTP 204)")
    label, body = received.read_text().split(" ", 1)
    decision = json.loads(body)
    assert label == "alice" and decision["reason"] == "test" and decision["granted"] is True
    assert len(webhook.received) == 1 and webhook.received[0]["id"] == decision["id"]
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in audit] == ["decided", "done"] and audit[1]["action"]["ok"] is True

    config.write_text(f'[door]\nauthorized = ["alice"]\ncommand = ["{sys.executable}", "-c", "raise SystemExit(3)"]\n')
    failed = spkrec("door", "test", "alice", "--config", str(config))
    assert failed.returncode == 1 and "FAILED" in failed.stdout and "exit 3" in failed.stdout
    for args, message in ((["bob"], "'bob' is not in door.authorized"),
                          (["alice", "--stream", "front"], "no input named 'front'")):
        refused = spkrec("door", "test", *args, "--config", str(config))
        assert refused.returncode == 2 and message in refused.stderr and len(refused.stderr.splitlines()) == 1
    config.write_text('[door]\nauthorized = ["alice"]\n')
    nothing = spkrec("door", "test", "alice", "--config", str(config))
    assert nothing.returncode == 2 and "no door hook configured" in nothing.stderr


def test_spkrec_live_version():
    done = subprocess.run([live_exe(), "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and re.fullmatch(r"spkrec \d+\.\d+\.\d+\n", done.stdout)


@pytest.mark.parametrize("user", [False, True])
def test_systemd_units_verify(tmp_path, user):
    """The packaged units, as `spkrec systemd-unit` prints them for this install, pass
    `systemd-analyze verify` without a single complaint."""
    done = spkrec("systemd-unit", *(["--user"] if user else []), check=True)
    assert f"ExecStart={live_exe()} --no-ui" in done.stdout
    for key in ("Type=notify", "WatchdogSec=", "NoNewPrivileges=yes", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert key in done.stdout
    if not user:
        for key in ("User=spkrec", "SupplementaryGroups=audio", "ProtectSystem=strict", "StateDirectory=spkrec",
                    "CacheDirectory=spkrec", "LogsDirectory=spkrec"):
            assert key in done.stdout
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    unit = tmp_path / "spkrec.service"
    unit.write_text(done.stdout)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    verify = subprocess.run([analyze, *(["--user"] if user else []), "verify", str(unit)], capture_output=True,
                            text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stdout + verify.stderr


def _service_section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("## Run as a service", 1)[1].split("\n## ", 1)[0]


def test_readme_service_config_is_valid(tmp_path):
    """The /etc/spkrec/config.toml the README has a person write loads, with the values it states."""
    section = _service_section()
    config = tmp_path / "config.toml"
    config.write_text(section.split("<<'TOML'\n", 1)[1].split("\nTOML\n", 1)[0] + "\n")
    done = spkrec("config", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert re.search(r'^listen = "127.0.0.1:9464" +# ', done.stdout, re.M)
    assert re.search(r'^path = "/var/lib/spkrec/gallery.sqlite" +# ', done.stdout, re.M)


def test_readme_logrotate_snippet_rotates_and_signals(tmp_path):
    """The README's logrotate snippet, pointed at a folder of ours, moves the logs away and runs
    its postrotate (there: the reload that sends SIGHUP)."""
    logrotate = shutil.which("logrotate") or ("/usr/sbin/logrotate" if Path("/usr/sbin/logrotate").exists() else None)
    if logrotate is None:
        pytest.skip("logrotate is not installed (Debian: apt-get install logrotate)")
    section = _service_section()
    snippet = next(block for block in section.split("```")[1::2] if block.lstrip().startswith("/var/log/spkrec/"))
    logs = tmp_path / "log"
    logs.mkdir(mode=0o700)
    marker = tmp_path / "reloaded"
    conf = tmp_path / "spkrec.conf"
    conf.write_text(snippet.replace("/var/log/spkrec", str(logs))
                    .replace("systemctl reload spkrec.service", f"touch {marker}"))
    for name in ("events.jsonl", "audit.jsonl"):
        (logs / name).write_text('{"event": "status"}\n')
    done = subprocess.run([logrotate, "--force", "--state", str(tmp_path / "state"), str(conf)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in logs.iterdir()) == ["audit.jsonl.1", "events.jsonl.1"]  # nocreate: spkrec makes them
    assert marker.is_file()
