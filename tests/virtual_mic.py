"""A real microphone path on a machine without a sound card, for end-to-end tests.

A user-space PulseAudio with a null sink stands in for the microphone: what plays into the
sink is what a program recording from its monitor hears, through ALSA's pulse plugin and
PortAudio, exactly the path a USB microphone takes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SINK = "vmic_sink"


class VirtualMic:
    def __init__(self, root: Path, rate: int = 16000) -> None:
        self.root, self.rate = root, rate
        self.process: subprocess.Popen | None = None
        self.env: dict[str, str] = {}
        self.modules: dict[str, list[str]] = {}  # extra microphone -> its PulseAudio module indices

    def start(self) -> "VirtualMic":
        if shutil.which("pulseaudio") is None or shutil.which("pactl") is None:
            raise RuntimeError("pulseaudio is not installed: run .ci/setup (apt-get install pulseaudio pulseaudio-utils)")
        runtime = self.root / "runtime"
        runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.root / "state").mkdir(exist_ok=True)
        socket = self.root / "native"
        (self.root / "default.pa").write_text(
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={socket}\n"
            # pacmd's command line, to end one recording stream (pactl 16 cannot): see unplug()
            f"load-module module-cli-protocol-unix socket={self.root / 'cli'}\n"
            f"load-module module-null-sink sink_name={SINK} rate={self.rate} channels=1 format=s16le\n"
            # A silent loopback keeps the null sink on a steady clock; without it the monitor
            # delivers audio in bursts of up to 2 s.
            "load-module module-null-source source_name=vmic_silence\n"
            f"load-module module-loopback source=vmic_silence sink={SINK} latency_msec=20\n"
            f"set-default-sink {SINK}\n"
            f"set-default-source {SINK}.monitor\n"
        )
        self.env = {"PULSE_SERVER": f"unix:{socket}", "PULSE_RUNTIME_PATH": str(runtime),
                    "PULSE_STATE_PATH": str(self.root / "state")}
        self.process = subprocess.Popen(
            ["pulseaudio", "--daemonize=no", "-n", "-F", str(self.root / "default.pa"), "--exit-idle-time=-1",
             "--disallow-exit", "--disable-shm=yes", "--use-pid-file=no", f"--log-target=file:{self.root / 'pulse.log'}"],
            env={**os.environ, **self.env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if subprocess.run(["pactl", "info"], env={**os.environ, **self.env}, capture_output=True).returncode == 0:
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"PulseAudio did not start; see {self.root / 'pulse.log'}")

    def play(self, wav: Path, sink: str = SINK) -> subprocess.Popen:
        """Play a 16 kHz mono WAV into the sink (what the 'microphone' hears)."""
        return subprocess.Popen(["paplay", f"--device={sink}", str(wav)], env={**os.environ, **self.env})

    def add_microphone(self, name: str) -> tuple[str, dict[str, str]]:
        """A second microphone: another null sink (with its own steady clock) whose monitor ALSA
        offers as PCM ``name`` (an ~/.asoundrc in a HOME of its own). Returns (sink to play into,
        environment for the program that records from ``name``)."""
        sink = f"{name}_sink"
        home = self.root / f"home-{name}"
        if not home.is_dir():
            self.replug(name)
            home.mkdir()
            (home / ".asoundrc").write_text(f'pcm.{name} {{\n  type pulse\n  device "{sink}.monitor"\n'
                                            f'  hint {{ show on description "spkrec test microphone {name}" }}\n}}\n')
        return sink, {**self.env, "HOME": str(home)}

    def unplug(self, name: str) -> None:
        """The microphone ``name`` goes away, as a USB one pulled out: the streams recording from it
        are ended (PulseAudio would otherwise move them to the default source, the other
        microphone) and its sink and clock unloaded."""
        env = {**os.environ, **self.env}
        pactl = lambda *args: subprocess.run(["pactl", *args], env=env, capture_output=True, text=True).stdout  # noqa: E731
        sources = [line.split("\t") for line in pactl("list", "short", "sources").splitlines()]
        monitor = {fields[0] for fields in sources if fields[1] == f"{name}_sink.monitor"}
        for fields in (line.split("\t") for line in pactl("list", "short", "source-outputs").splitlines()):
            if fields[1] in monitor:
                self._cli(f"kill-source-output {fields[0]}")
        for module in reversed(self.modules.pop(name, [])):
            subprocess.run(["pactl", "unload-module", module], env=env, capture_output=True)

    def _cli(self, command: str) -> str:
        """One command on PulseAudio's command-line socket (what pacmd sends)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as cli:
            cli.settimeout(5)
            cli.connect(str(self.root / "cli"))
            cli.sendall(command.encode() + b"\n")
            cli.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := cli.recv(4096):
                reply += chunk
        return reply.decode(errors="replace")

    def replug(self, name: str) -> None:
        """(Re)create the sink behind microphone ``name``, under the same names."""
        sink, env = f"{name}_sink", {**os.environ, **self.env}
        modules = []
        for args in (["module-null-sink", f"sink_name={sink}", f"rate={self.rate}", "channels=1", "format=s16le"],
                     ["module-null-source", f"source_name={name}_silence"],
                     ["module-loopback", f"source={name}_silence", f"sink={sink}", "latency_msec=20"]):
            done = subprocess.run(["pactl", "load-module", *args], env=env, check=True, capture_output=True, text=True)
            modules.append(done.stdout.strip())
        self.modules[name] = modules

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None
