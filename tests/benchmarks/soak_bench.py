"""Benchmark: an hour of real-time speech through the live daemon and the real audio path.

A user-space PulseAudio (``tests/virtual_mic.py``) stands in for the microphone; the daemon is
the installed ``spkrec-live --device pulse --no-ui --events FILE`` with the shipped base model
(no ``--model``) and a gallery of two voices enrolled through ``spkrec enroll``. A loop of
real LibriSpeech test-other speech (the two enrolled voices on recordings they were not
enrolled from, plus two strangers who should read ``unknown``, taking turns with pauses) is
played into the virtual microphone with ``paplay`` over and over, for ``--minutes``.

Measured:

1. the daemon's resident memory, VmRSS and VmHWM from ``/proc/PID/status``, once right after
   ``listening`` and then every minute (with its threads, open files and CPU use), and the RSS
   growth between minute 5 and the end;
2. end-to-end latency (the ``latency_ms`` of ``speaker`` events: arrival of the block that
   completes a window -> its event), p50/p95 per 10-minute slice of stream time, and the share
   of windows inside a known turn that carry the right label, per slice;
3. windows scored, and dropped blocks / overflows from the final ``stopped`` status event.

The goal the README states: RSS flat (growth from minute 5 to the end within ``--flat-pct``)
and at most 400 MB throughout. Config, gallery, cache and XDG directories all live in a
temporary folder: the user's own gallery and config are never read or touched. Not a pytest
test: run it by hand on an otherwise idle machine (it takes ``--minutes`` of wall time).

    .venv/bin/python tests/benchmarks/soak_bench.py [--minutes 60] [--tag cpu] \\
        [--slice-minutes 10] [--out tests/benchmarks/results/soak_<tag>.json]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
sys.path.insert(0, str(TESTS))
import conversation  # noqa: E402
from virtual_mic import VirtualMic  # noqa: E402

LIBRI = Path(os.environ.get("SPKREC_SHARED_DATA", REPO.parent / "shared" / "data")) / "librispeech-test-other"
ENROLLED = ("533", "3005")  # as tests/conftest.py: the base model never heard them
STRANGERS = ("2609", "367")  # not enrolled: their windows should read "unknown"
ENROLL_FILES = 6  # the first six recordings of a voice enroll it; the rest are played
STRANGER_FILES = 4
RESULTS = REPO / "tests" / "benchmarks" / "results"
BIN = Path(sys.executable).parent


# ---------------------------------------------------------------- machine and environment


def _version(name: str) -> str | None:
    for dist in (name, f"{name}-gpu"):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
               platform.processor() or "unknown")
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:")), 0)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "onnxruntime": _version("onnxruntime")}


def isolated_env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for every spkrec process: XDG folders in ``root`` (so no user gallery,
    config or cache is read or written) and no $SPKREC_CONFIG; ``extra`` (PulseAudio's) on top."""
    env = {k: v for k, v in os.environ.items() if k != "SPKREC_CONFIG"}
    for var, sub in (("XDG_CONFIG_HOME", "config"), ("XDG_DATA_HOME", "data"), ("XDG_CACHE_HOME", "cache"),
                     ("XDG_STATE_HOME", "state")):
        (root / "xdg" / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(root / "xdg" / sub)
    return {**env, **(extra or {})}


def speaker_files(speaker: str) -> list[Path]:
    return sorted((LIBRI / speaker).glob("*.flac"))


def enroll_site(root: Path, env: dict[str, str], extra_config: str = "") -> Path:
    """A config in ``root`` whose gallery (also in ``root``) holds the ENROLLED voices, enrolled
    with the shipped base model through the real CLI. Returns the config's path."""
    config = root / "config.toml"
    config.write_text(f"[gallery]\npath = \"{root / 'gallery.sqlite'}\"\n" + extra_config)
    for name in ENROLLED:
        done = subprocess.run([str(BIN / "spkrec"), "enroll", name, "--input",
                               *map(str, speaker_files(name)[:ENROLL_FILES]), "--config", str(config)],
                              env=env, cwd=root, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"spkrec enroll {name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return config


def speech_loop(out: Path, voices: tuple[str, ...] = ENROLLED + STRANGERS) -> list[tuple[float, float, str]]:
    """One pass of the loop: the voices take turns (round robin over their unenrolled
    recordings), 2.5 s pauses between turns. Returns the turns (start, end, expected label)."""
    queues = {v: speaker_files(v)[ENROLL_FILES:] if v in ENROLLED else speaker_files(v)[:STRANGER_FILES]
              for v in voices}
    order = []
    for i in range(max(map(len, queues.values()))):
        for v in voices:
            if i < len(queues[v]):
                order.append((queues[v][i], v if v in ENROLLED else "unknown"))
    return conversation.assemble(order, out)


# ---------------------------------------------------------------- the daemon and its events


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM (MB), threads, open files and CPU seconds of a process, from /proc."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024.0, 1)
        elif key == "Threads":
            out["threads"] = int(value)
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    out["cpu_s"] = round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)  # utime + stime
    return out


class EventTail:
    """Follows a daemon's JSONL events file from a thread, stamping each event with the wall
    time it was first seen (status events carry their own; speaker events carry none)."""

    def __init__(self, path: Path, poll_s: float = 0.05) -> None:
        self.path, self.poll_s = path, poll_s
        self.events: list[tuple[float, dict]] = []  # (seen at, event)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        offset, pending = 0, b""
        while not self.stop.is_set():
            if self.path.is_file():
                with self.path.open("rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
                offset += len(data)
                pending += data
                *lines, pending = pending.split(b"\n")
                now = time.time()
                parsed = [(now, json.loads(line)) for line in lines if line.strip()]
                with self.lock:
                    self.events.extend(parsed)
            self.stop.wait(self.poll_s)

    def snapshot(self) -> list[tuple[float, dict]]:
        with self.lock:
            return list(self.events)

    def wait(self, predicate: Callable[[dict], bool], timeout: float, start: int = 0,
             alive: Callable[[], bool] = lambda: True) -> tuple[int, float, dict] | None:
        """The first event from index ``start`` on that matches: (index, seen at, event), or None
        after ``timeout`` seconds or once ``alive()`` turns false."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, (seen, event) in enumerate(self.snapshot()[start:], start):
                if predicate(event):
                    return i, seen, event
            if not alive():
                return None
            time.sleep(0.05)
        return None

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def status_is(*states: str) -> Callable[[dict], bool]:
    return lambda e: e.get("event") == "status" and e.get("state") in states


def is_speaker(e: dict) -> bool:
    return e.get("event") == "speaker"


def start_daemon(env: dict[str, str], config: Path, events: Path, stderr: Path, *args: str) -> subprocess.Popen:
    """`spkrec-live --device pulse --no-ui --events EVENTS`, stderr to a file (a pipe nobody reads
    would fill and stall it), in a session of its own so a door hook it starts can be found."""
    return subprocess.Popen([str(BIN / "spkrec-live"), "--device", "pulse", "--config", str(config), *args,
                             "--no-ui", "--events", str(events)], env=env, cwd=config.parent,
                            stdout=subprocess.DEVNULL, stderr=stderr.open("w"), start_new_session=True)


def stop_daemon(process: subprocess.Popen, timeout: float = 60.0) -> int | None:
    """SIGTERM, as a service manager would; SIGKILL if it does not stop. Returns its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return None
    return process.returncode


class Player:
    """Plays a WAV into the virtual microphone over and over until stopped, restarting paplay
    when it ends (or fails: the sound server may be gone); records when each pass started."""

    def __init__(self, mic: VirtualMic, wav: Path) -> None:
        self.mic, self.wav = mic, wav
        self.starts: list[float] = []  # wall time of each complete-or-not pass's paplay start
        self.failures = 0
        self.current: subprocess.Popen | None = None
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.halt.is_set():
            started = time.time()
            self.current = subprocess.Popen(["paplay", "--device=vmic_sink", str(self.wav)],
                                            env={**os.environ, **self.mic.env}, stderr=subprocess.DEVNULL)
            self.starts.append(started)
            if self.current.wait() != 0:
                self.failures += 1
                self.halt.wait(0.5)

    def stop(self) -> None:
        self.halt.set()
        if self.current is not None and self.current.poll() is None:
            self.current.terminate()
        self.thread.join(10)


def percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"p50": None, "p95": None, "n": 0}
    return {"p50": round(float(np.percentile(values, 50)), 1), "p95": round(float(np.percentile(values, 95)), 1),
            "n": len(values)}


# ---------------------------------------------------------------- the soak


def slices(events: list[dict], slice_s: float, plays: list[float], origin: float,
           turns: list[tuple[float, float, str]], total_s: float) -> list[dict[str, Any]]:
    """Latency and label agreement per slice of stream time. A pass of the loop played at wall
    time t sits at stream time t - origin (origin: wall time of `listening`; the first audio
    callback comes a few hundred ms later, hence the 0.6 s slack)."""
    speakers = [e for e in events if is_speaker(e)]
    n = max(1, int(np.ceil(total_s / slice_s - 1e-6)))
    rows = []
    for k in range(n):
        lo, hi = k * slice_s, (k + 1) * slice_s
        # the last slice also takes the few windows that drain after the playing stops
        inside = [e for e in speakers if min(int(e["end"] // slice_s), n - 1) == k]
        right = total = 0
        for start in plays:
            shifted = [(a + start - origin, b + start - origin, label) for a, b, label in turns]
            r, t = conversation.speaker_agreement(inside, shifted, 0.0, slack=0.6)
            right, total = right + r, total + t
        rows.append({"minutes": [round(lo / 60, 1), round(min(hi, total_s) / 60, 1)],  # of stream time
                     "latency_ms": percentiles([e["latency_ms"] for e in inside]),
                     "inference_ms": percentiles([e["inference_ms"] for e in inside]),
                     "label_agreement": round(right / total, 3) if total else None, "windows_in_turns": total})
    return rows


def rss_summary(samples: list[dict], minutes: float, flat_pct: float, limit_mb: float) -> dict[str, Any]:
    """Start/end/max RSS and the growth from minute 5 (or, in a run too short for that, from
    the first per-minute sample) to the end."""
    rss = [s["rss_mb"] for s in samples]
    per_minute = [s for s in samples if s["minute"] >= 1]
    ref = next((s for s in per_minute if s["minute"] >= 5), None)
    if ref is None or ref is samples[-1]:
        ref = per_minute[0] if per_minute else samples[0]
    growth = 100.0 * (samples[-1]["rss_mb"] - ref["rss_mb"]) / ref["rss_mb"]
    return {"start": rss[0], "end": rss[-1], "max": max(rss), "hwm_end": samples[-1]["hwm_mb"],
            "growth_from_minute": ref["minute"], "growth_pct": round(growth, 2),
            "goal": {"max_mb": limit_mb, "flat_pct": flat_pct, "max_ok": max(max(rss), samples[-1]["hwm_mb"]) <= limit_mb,
                     "flat_ok": abs(growth) <= flat_pct}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="real-time audio played (wall minutes)")
    parser.add_argument("--tag", default="cpu", help="results go to tests/benchmarks/results/soak_<tag>.json")
    parser.add_argument("--slice-minutes", type=float, default=10.0, help="latency p50/p95 per slice of this length")
    parser.add_argument("--sample-every", type=float, default=60.0, help="seconds between RSS samples")
    parser.add_argument("--flat-pct", type=float, default=5.0, help="'flat': |RSS growth| from minute 5 to the end")
    parser.add_argument("--max-mb", type=float, default=None, help="the RSS ceiling of the goal (400 MB for one "
                                                                   "input, 500 for more)")
    parser.add_argument("--inputs", type=int, default=1, help="streams in the daemon, each a capture of the microphone")
    parser.add_argument("--precision", default="auto", help="[model] precision for the daemon")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: results/soak_<tag>.json)")
    args = parser.parse_args()
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    if not LIBRI.is_dir():
        sys.exit(f"real speech not found at {LIBRI}: set SPKREC_SHARED_DATA")
    out = args.out or RESULTS / f"soak_{args.tag}.json"
    args.max_mb = args.max_mb or (400.0 if args.inputs == 1 else 500.0)
    extra = ["--precision", args.precision, *(a for i in range(2, args.inputs + 1) for a in ("--device", f"in{i}=pulse"))]
    duration_s = args.minutes * 60.0
    result: dict[str, Any] = {
        "command": shlex.join([os.path.relpath(sys.executable, REPO), *sys.argv]), "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "load_average_at_start": os.getloadavg(),
        "minutes": args.minutes, "inputs": args.inputs, "precision_asked": args.precision,
        "model": "shipped base model (no --model)", "enrolled": list(ENROLLED),
        "strangers": list(STRANGERS)}

    with tempfile.TemporaryDirectory(prefix="spkrec-soak-") as tmp:
        root = Path(tmp)
        mic = VirtualMic(root / "pulse").start()
        process = None
        tail = None
        player = None
        try:
            env = isolated_env(root, mic.env)
            print("enrolling the two voices ...", file=sys.stderr, flush=True)
            config = enroll_site(root, env)
            wav = root / "loop.wav"
            turns = speech_loop(wav)
            result["loop_s"] = round(turns[-1][1] + conversation.GAP_S, 1)
            events_path, stderr_path = root / "events.jsonl", root / "daemon.stderr"
            process = start_daemon(env, config, events_path, stderr_path, *extra)
            tail = EventTail(events_path)
            alive = lambda: process.poll() is None  # noqa: E731
            found = tail.wait(status_is("listening"), 120, alive=alive)
            if found is None:
                sys.exit(f"the daemon did not start listening:\n{stderr_path.read_text()[-3000:]}")
            listening = found[2]
            origin = listening["time"]
            result["listening"] = {k: listening.get(k) for k in ("source", "rate", "native_rate", "provider", "precision",
                                                                 "model")}
            time.sleep(1.0)
            first = proc_status(process.pid)
            samples = [{"minute": 0.0, "rss_mb": first["VmRSS"], "hwm_mb": first["VmHWM"],
                        "threads": first["threads"], "fds": first["fds"], "cpu_s": first["cpu_s"]}]
            print(f"listening; RSS {first['VmRSS']:.0f} MB; playing {args.minutes:g} min of a "
                  f"{result['loop_s']:.0f} s loop ...", file=sys.stderr, flush=True)
            player = Player(mic, wav)
            begun = time.time()
            k = 1
            while alive():
                due = begun + min(k * args.sample_every, duration_s)
                time.sleep(max(0.0, due - time.time()))
                if not alive():
                    break
                s = proc_status(process.pid)
                samples.append({"minute": round((time.time() - begun) / 60.0, 2), "rss_mb": s["VmRSS"],
                                "hwm_mb": s["VmHWM"], "threads": s["threads"], "fds": s["fds"], "cpu_s": s["cpu_s"]})
                print(f"  {samples[-1]['minute']:6.1f} min  RSS {s['VmRSS']:6.1f} MB  HWM {s['VmHWM']:6.1f} MB  "
                      f"threads {s['threads']}  fds {s['fds']}  cpu {s['cpu_s']:.0f} s", file=sys.stderr, flush=True)
                if time.time() - begun >= duration_s - 0.5:
                    break
                k += 1
            player.stop()
            time.sleep(3.0)  # the last windows drain
            exited_early = not alive()
            rc = stop_daemon(process)
        finally:
            if player is not None:
                player.stop()
            if process is not None and process.poll() is None:
                process.kill()
            if tail is not None:
                time.sleep(0.2)
                tail.close()
            mic.stop()
        events = [e for _, e in tail.snapshot()]
        stderr = stderr_path.read_text()
        stopped = next((e for e in reversed(events) if e.get("event") == "status" and e.get("state") == "stopped"), {})
        speakers = [e for e in events if is_speaker(e)]
        wall_s = time.time() - begun
        cpu = samples[-1]["cpu_s"] - samples[0]["cpu_s"]
        span_min = max(1e-9, samples[-1]["minute"] - samples[0]["minute"])
        result.update({
            "rss_mb": [(s["minute"], s["rss_mb"]) for s in samples],
            "samples": samples,
            "rss": rss_summary(samples, args.minutes, args.flat_pct, args.max_mb),
            "daemon_cpu_pct_of_one_core": round(100.0 * cpu / (span_min * 60.0), 1),
            "latency_slices": slices(events, args.slice_minutes * 60.0, player.starts, origin, turns, duration_s),
            "latency_ms_all": percentiles([e["latency_ms"] for e in speakers]),
            "windows_scored": len(speakers),
            "labels": {label: sum(e["label"] == label for e in speakers) for label in sorted({e["label"] for e in speakers})},
            "loop_passes_started": len(player.starts), "player_failures": player.failures,
            "stopped": {k: stopped.get(k) for k in ("message", "stream_s", "dropped_blocks", "overflows")},
            "dropped_blocks": stopped.get("dropped_blocks"), "overflows": stopped.get("overflows"),
            "status_events": [(e["state"], e.get("message", "")) for e in events if e.get("event") == "status"],
            "exited_before_stop": exited_early, "exit_status": rc, "traceback_in_stderr": "Traceback" in stderr,
            "wall_s": round(wall_s, 1), "load_average_at_end": os.getloadavg()})
        if rc != 0 or exited_early:
            result["stderr_tail"] = stderr[-3000:]

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    r = result["rss"]
    m = result["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; {m['onnxruntime']}; "
          f"{args.minutes:g} min; load average at start {result['load_average_at_start'][0]:.2f}\n")
    print("| minutes | latency p50 / p95 ms (windows) | labels right (windows in turns) |")
    print("|---|---|---|")
    for row in result["latency_slices"]:
        lat = row["latency_ms"]
        agree = "-" if row["label_agreement"] is None else f"{row['label_agreement']:.0%} ({row['windows_in_turns']})"
        lat_text = "-" if lat["p50"] is None else f"{lat['p50']:.0f} / {lat['p95']:.0f} ({lat['n']})"
        print(f"| {row['minutes'][0]:g}-{row['minutes'][1]:g} | {lat_text} | {agree} |")
    print(f"\nRSS start / end / max: {r['start']:.0f} / {r['end']:.0f} / {r['max']:.0f} MB, VmHWM {r['hwm_end']:.0f} MB; "
          f"growth from minute {r['growth_from_minute']:g} to the end {r['growth_pct']:+.1f} %  "
          f"(goal <= {r['goal']['max_mb']:.0f} MB: {'yes' if r['goal']['max_ok'] else 'NO'}; "
          f"flat within {r['goal']['flat_pct']:g} %: {'yes' if r['goal']['flat_ok'] else 'NO'})")
    print(f"windows scored {result['windows_scored']}; dropped blocks {result['dropped_blocks']}, overflows "
          f"{result['overflows']}; daemon CPU {result['daemon_cpu_pct_of_one_core']} % of one core; exit status "
          f"{result['exit_status']}{'; EXITED BEFORE STOP' if exited_early else ''}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
