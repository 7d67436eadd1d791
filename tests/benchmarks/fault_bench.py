"""Benchmark: the live daemon under two faults, on the real audio path. Reports, does not assert.

Same setting as ``soak_bench.py``: a user-space PulseAudio virtual microphone, the installed
``spkrec-live --device pulse --no-ui --events FILE`` with the shipped base model, a gallery of
two voices enrolled with ``spkrec enroll``, every XDG folder in a temporary directory.

(a) ``kill -9`` during a door action, ``--door-trials`` times (default 3). The daemon runs with
    a ``[door]`` whose only authorised name is an enrolled voice, a ``command`` hook that first
    writes a marker file and then sleeps ``--hook-sleep`` seconds (the relay is "busy"), and an
    ``audit_log``. The authorised voice (recordings it was not enrolled from) is played; as
    soon as the marker appears the daemon gets SIGKILL. Then the audit log is read: is the
    grant decision there (a line with ``"granted": true`` for that name), and is an action
    outcome there (a line whose ``action`` records the hook's result; none is expected, since
    the action never finished)? Also recorded: whether the door event reached the events
    file, and whether the hook outlived the daemon (it is then killed).

(b) the sound server killed and restored, ``--cycles`` times (default 3). While speech plays,
    the PulseAudio process gets SIGKILL; ``--down-s`` seconds later it is started again on the
    same socket and config (``VirtualMic.start()`` on the same root, checked with ``pactl``)
    and the speech resumes. From the events file, per cycle: did the daemon report
    ``device-lost`` / ``reconnecting``, did it come back to ``listening``, how long after the
    restore (and after the kill), did ``speaker`` events resume and how many came in the next
    ``--play-s`` seconds; and whether the process ever exited (it must not; at the end it is
    stopped with SIGTERM and should exit 0 with a ``stopped`` event).

Results: a summary on stdout and ``tests/benchmarks/results/faults_<tag>.json``. Not a pytest
test; takes about three minutes.

    .venv/bin/python tests/benchmarks/fault_bench.py [--tag cpu] [--door-trials 3] [--cycles 3] \\
        [--hook-sleep 5] [--down-s 5] [--play-s 20] [--out tests/benchmarks/results/faults_<tag>.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak_bench import (ENROLL_FILES, ENROLLED, LIBRI, REPO, RESULTS, EventTail, Player,  # noqa: E402
                        conversation, enroll_site, is_speaker, isolated_env, machine, speaker_files, speech_loop,
                        start_daemon, status_is, stop_daemon)
from virtual_mic import VirtualMic  # noqa: E402

DOOR_NAME = ENROLLED[0]
HOOK = """\
import json, os, sys, time
marker, sleep_s = sys.argv[1], float(sys.argv[2])
with open(marker + ".tmp", "w") as f:
    json.dump({"pid": os.getpid(), "time": time.time(), "label": os.environ.get("SPKREC_LABEL")}, f)
os.replace(marker + ".tmp", marker)
time.sleep(sleep_s)
open(marker + ".done", "w").write(str(time.time()))
"""


def alive_pid(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """The parseable lines of a JSONL file, and how many lines were not (a torn last write)."""
    if not path.is_file():
        return [], 0
    good, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if line.strip():
            try:
                good.append(json.loads(line))
            except json.JSONDecodeError:
                bad += 1
    return good, bad


def records_outcome(line: dict) -> bool:
    """Does this audit line record what the action did (the hook's exit, a timeout, an error)?
    The daemon writes a ``"phase": "decided"`` line before acting and a ``"done"`` line with
    the ``action`` result after; older versions wrote one line, with ``action``, after acting."""
    if line.get("phase") in ("done", "outcome", "result"):
        return True
    for key in ("action", "outcome", "result"):
        value = line.get(key)
        if isinstance(value, dict) and value.keys() & {"command", "url", "ok", "error", "exit", "status"}:
            return True
    return False


# ---------------------------------------------------------------- (a) kill -9 during a door action


def _kill_during_hook(row: dict, process: subprocess.Popen, tail: EventTail, mic: VirtualMic, wav: Path,
                      marker: Path, folder: Path) -> None:
    """Play the authorised voice; SIGKILL the daemon as soon as the door hook has started."""
    if tail.wait(status_is("listening"), 120, alive=lambda: process.poll() is None) is None:
        row["error"] = "daemon did not start listening: " + (folder / "daemon.stderr").read_text()[-1500:]
        return
    started = time.time()
    player = Player(mic, wav)
    try:
        deadline = time.monotonic() + 120
        while not marker.is_file() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.01)
        if not marker.is_file():
            row["error"] = "the hook never ran (no grant within 120 s)" if process.poll() is None else \
                "daemon exited before the hook ran: " + (folder / "daemon.stderr").read_text()[-1500:]
            return
        os.kill(process.pid, signal.SIGKILL)
        killed = time.time()
        process.wait()
    finally:
        player.stop()
    hook = json.loads(marker.read_text())
    row.update({"s_listening_to_hook": round(hook["time"] - started, 2),
                "ms_hook_start_to_kill": round((killed - hook["time"]) * 1000.0, 1),
                "daemon_exit_status": process.returncode})
    time.sleep(0.3)
    row["hook_outlived_daemon"] = alive_pid(hook["pid"])


def door_trial(i: int, root: Path, env: dict[str, str], mic: VirtualMic, wav: Path, hook_sleep: float) -> dict:
    folder = root / f"door{i}"
    folder.mkdir()
    marker, audit, events_path = folder / "hook-started.json", folder / "audit.jsonl", folder / "events.jsonl"
    config = folder / "config.toml"
    config.write_text(
        f"[gallery]\npath = \"{root / 'gallery.sqlite'}\"\n"
        f"[door]\nauthorized = [\"{DOOR_NAME}\"]\n"
        f"command = {json.dumps([sys.executable, '-c', HOOK, str(marker), str(hook_sleep)])}\n"
        f"timeout_s = {hook_sleep + 20.0}\naudit_log = \"{audit}\"\n")
    process = start_daemon(env, config, events_path, folder / "daemon.stderr")
    tail = EventTail(events_path)
    row: dict[str, Any] = {"trial": i}
    try:
        _kill_during_hook(row, process, tail, mic, wav, marker, folder)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the orphaned hook, if any (the daemon's own session)
        except ProcessLookupError:
            pass
        time.sleep(0.2)
        tail.close()
    lines, torn = read_jsonl(audit)
    mine = [line for line in lines if line.get("label") == DOOR_NAME]
    events = [e for _, e in tail.snapshot()]
    row.update({
        "audit_log_exists": audit.is_file(), "audit_lines": len(lines), "audit_torn_lines": torn,
        "decision_present": any(line.get("granted") is True for line in mine),
        "outcome_present": any(records_outcome(line) for line in mine),
        "grant_lines": [{k: line.get(k) for k in ("phase", "granted", "reason", "score", "action") if k in line}
                        for line in mine if line.get("granted") is True],
        "door_event_in_events": any(e.get("event") == "door" and e.get("granted") is True and e.get("label") == DOOR_NAME
                                    for e in events),
        "hook_finished": (marker.parent / (marker.name + ".done")).is_file(),
        "audit": lines[:5]})
    return row


# ---------------------------------------------------------------- (b) the sound server killed and restored


def server_ok(mic: VirtualMic) -> bool:
    """The restarted server answers and has the microphone's sink."""
    env = {**os.environ, **mic.env}
    done = subprocess.run(["pactl", "list", "short", "sinks"], env=env, capture_output=True, text=True)
    return done.returncode == 0 and "vmic_sink" in done.stdout


def server_cycles(root: Path, env_base: dict[str, str], config: Path, wav: Path, cycles: int, down_s: float,
                  play_s: float) -> dict:
    mic = VirtualMic(root / "pulse-b").start()
    env = {**env_base, **mic.env}
    events_path = root / "server-events.jsonl"
    process = start_daemon(env, config, events_path, root / "server-daemon.stderr")
    tail = EventTail(events_path)
    alive = lambda: process.poll() is None  # noqa: E731
    out: dict[str, Any] = {"cycles": [], "down_s": down_s, "play_s": play_s}
    players: list[Player] = []
    try:
        if tail.wait(status_is("listening"), 120, alive=alive) is None:
            out["error"] = "daemon did not start listening: " + (root / "server-daemon.stderr").read_text()[-1500:]
        else:
            _cycles(out, mic, tail, alive, wav, cycles, down_s, play_s, players)
    finally:
        for player in players:
            player.stop()
        out["exited_before_stop"] = not alive() or any(
            not (r.get("alive_while_down", True) and r.get("alive_after", True)) for r in out["cycles"])
        out["exit_status_before_stop"] = process.poll()
        out["exit_status"] = stop_daemon(process)
        time.sleep(0.3)
        tail.close()
        mic.stop()
    events = [e for _, e in tail.snapshot()]
    stopped = next((e for e in reversed(events) if e.get("event") == "status" and e.get("state") == "stopped"), {})
    stderr = (root / "server-daemon.stderr").read_text()
    out.update({"stopped_event": {k: stopped.get(k) for k in ("message", "stream_s", "dropped_blocks", "overflows")}
                if stopped else None, "traceback_in_stderr": "Traceback" in stderr,
                "windows_scored": sum(is_speaker(e) for e in events)})
    if out["exit_status"] != 0 or out["traceback_in_stderr"]:
        out["stderr_tail"] = stderr[-3000:]
    return out


def _cycles(out: dict, mic: VirtualMic, tail: EventTail, alive, wav: Path, cycles: int, down_s: float,
            play_s: float, players: list[Player]) -> None:
    """Speech, then ``cycles`` times: SIGKILL the sound server, wait, restart it, speech again."""
    player = Player(mic, wav)
    players.append(player)
    mark = len(tail.snapshot())
    time.sleep(play_s)
    out["speaker_events_before_first_kill"] = sum(is_speaker(e) for _, e in tail.snapshot()[mark:])
    for c in range(1, cycles + 1):
        row: dict[str, Any] = {"cycle": c}
        mark = len(tail.snapshot())
        pulse_pid = mic.process.pid
        mic.process.send_signal(signal.SIGKILL)
        killed = time.time()
        mic.process.wait()
        mic.process = None
        player.stop()
        lost = tail.wait(status_is("device-lost", "reconnecting"), down_s, start=mark, alive=alive)
        time.sleep(max(0.0, killed + down_s - time.time()))
        row["pulseaudio_pid_killed"] = pulse_pid
        row["alive_while_down"] = alive()
        try:
            mic.start()
            restored = time.time()
            row["server_restarted"] = server_ok(mic)
        except RuntimeError as exc:
            row["server_restarted"] = False
            row["error"] = str(exc)
            out["cycles"].append(row)
            break
        player = Player(mic, wav)
        players.append(player)
        back = tail.wait(status_is("listening"), 90, start=mark, alive=alive)
        seen = [e for _, e in tail.snapshot()[mark:]]
        states = [e["state"] for e in seen if e.get("event") == "status"]
        row.update({"device_lost": "device-lost" in states, "reconnecting": "reconnecting" in states,
                    "reconnect_tries": states.count("reconnecting"),
                    "s_kill_to_device_lost": round(lost[2]["time"] - killed, 2) if lost else None,
                    "back_to_listening": back is not None})
        if back is not None:
            row["s_restore_to_listening"] = round(back[2]["time"] - restored, 2)
            row["s_kill_to_listening"] = round(back[2]["time"] - killed, 2)
            row["listening_message"] = back[2].get("message")
            first = tail.wait(is_speaker, 60, start=back[0] + 1, alive=alive)
            row["speaker_events_resumed"] = first is not None
            if first is not None:
                row["s_restore_to_first_speaker"] = round(first[1] - restored, 2)
            after = len(tail.snapshot())
            time.sleep(max(0.0, restored + play_s - time.time()) if first is None else play_s)
            row[f"speaker_events_next_{play_s:g}_s"] = sum(is_speaker(e) for _, e in tail.snapshot()[after:])
        row["alive_after"] = alive()
        row["states"] = states
        out["cycles"].append(row)
        if not alive():
            break


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="cpu", help="results go to tests/benchmarks/results/faults_<tag>.json")
    parser.add_argument("--door-trials", type=int, default=3, help="(a): kill -9 during a door action, N times")
    parser.add_argument("--hook-sleep", type=float, default=5.0, help="(a): seconds the door hook takes")
    parser.add_argument("--cycles", type=int, default=3, help="(b): sound server kills and restores")
    parser.add_argument("--down-s", type=float, default=5.0, help="(b): seconds the sound server stays dead")
    parser.add_argument("--play-s", type=float, default=20.0, help="(b): seconds of speech before and after each fault")
    parser.add_argument("--only", choices=("door", "server"), default=None, help="run one part only")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: results/faults_<tag>.json)")
    args = parser.parse_args()
    if not LIBRI.is_dir():
        sys.exit(f"real speech not found at {LIBRI}: set SPKREC_SHARED_DATA")
    out = args.out or RESULTS / f"faults_{args.tag}.json"
    result: dict[str, Any] = {
        "command": shlex.join([os.path.relpath(sys.executable, REPO), *sys.argv]), "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "model": "shipped base model (no --model)",
        "enrolled": list(ENROLLED), "door_authorized": [DOOR_NAME], "hook_sleep_s": args.hook_sleep}

    with tempfile.TemporaryDirectory(prefix="spkrec-faults-") as tmp:
        root = Path(tmp)
        env = isolated_env(root)
        print("enrolling the two voices ...", file=sys.stderr, flush=True)
        config = enroll_site(root, env)
        if args.only in (None, "door"):
            # The authorised voice alone, longest recordings first, 1 s pauses (a silence resets the door's count).
            door_wav = root / "door.wav"
            files = sorted(speaker_files(DOOR_NAME)[ENROLL_FILES:], key=lambda p: -p.stat().st_size)
            conversation.assemble([(f, DOOR_NAME) for f in files], door_wav, gap_s=1.0)
            mic = VirtualMic(root / "pulse-a").start()
            try:
                rows = []
                for i in range(1, args.door_trials + 1):
                    row = door_trial(i, root, {**env, **mic.env}, mic, door_wav, args.hook_sleep)
                    rows.append(row)
                    print(f"door trial {i}: decision in audit log {row.get('decision_present')}, outcome "
                          f"{row.get('outcome_present')}, hook started {row.get('s_listening_to_hook')} s after "
                          f"listening, killed {row.get('ms_hook_start_to_kill')} ms after it"
                          + (f"; ERROR {row['error']}" if "error" in row else ""), file=sys.stderr, flush=True)
            finally:
                mic.stop()
            result["door_kill"] = {"trials": rows,
                                   "decision_present": f"{sum(bool(r.get('decision_present')) for r in rows)}/{len(rows)}",
                                   "outcome_present": f"{sum(bool(r.get('outcome_present')) for r in rows)}/{len(rows)}"}
        if args.only in (None, "server"):
            wav = root / "loop.wav"
            speech_loop(wav)
            print(f"sound server: {args.cycles} kills ...", file=sys.stderr, flush=True)
            result["server_restart"] = server_cycles(root, env, config, wav, args.cycles, args.down_s, args.play_s)

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    m = result["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; {m['onnxruntime']}")
    if "door_kill" in result:
        d = result["door_kill"]
        print(f"\n(a) kill -9 during a door action ({args.hook_sleep:g} s hook), {len(d['trials'])} trials")
        print("| trial | grant decision in audit log | action outcome in audit log | door event in events | "
              "hook start -> kill ms | hook outlived daemon |")
        print("|---|---|---|---|---|---|")
        for r in d["trials"]:
            if "error" in r:
                print(f"| {r['trial']} | error: {r['error'][:80]} | | | | |")
                continue
            yes = lambda v: "yes" if v else "no"  # noqa: E731
            print(f"| {r['trial']} | {yes(r['decision_present'])} | {yes(r['outcome_present'])} | "
                  f"{yes(r['door_event_in_events'])} | {r['ms_hook_start_to_kill']:.0f} | {yes(r['hook_outlived_daemon'])} |")
    if "server_restart" in result:
        s = result["server_restart"]
        print(f"\n(b) sound server SIGKILL, {s['down_s']:g} s down, restarted; {len(s['cycles'])} cycles"
              + (f"; ERROR {s['error']}" if "error" in s else ""))
        print("| cycle | device-lost / reconnecting | back to listening (s after restore) | speaker events resumed "
              f"(s after restore) | speaker events in next {s['play_s']:g} s | daemon alive |")
        print("|---|---|---|---|---|---|")
        next_key = f"speaker_events_next_{s['play_s']:g}_s"
        for r in s["cycles"]:
            yes = lambda v: "yes" if v else "no"  # noqa: E731
            back = f"yes ({r['s_restore_to_listening']:.1f})" if r.get("back_to_listening") else "NO"
            first = f"yes ({r['s_restore_to_first_speaker']:.1f})" if r.get("speaker_events_resumed") else "NO"
            print(f"| {r['cycle']} | {yes(r.get('device_lost'))} / {yes(r.get('reconnecting'))} | {back} | {first} | "
                  f"{r.get(next_key, '-')} | "
                  f"{yes(r.get('alive_while_down') and r.get('alive_after'))} |")
        print(f"process exited before being stopped: {'YES' if s['exited_before_stop'] else 'no'}; exit status on "
              f"SIGTERM {s['exit_status']}; stopped event {s['stopped_event']}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
