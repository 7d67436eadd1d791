"""Audio input devices through PortAudio (sounddevice), with errors a person can act on."""

from __future__ import annotations

from dataclasses import dataclass

from spkrec.models.errors import DeviceError


def portaudio():
    """The sounddevice module, or a DeviceError that says how to install PortAudio."""
    try:
        import sounddevice
    except OSError as exc:  # "PortAudio library not found"
        raise DeviceError(f"PortAudio is not available ({exc}): apt-get install libportaudio2") from None
    return sounddevice


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    channels: int
    default_rate: int
    hostapi: str


def list_inputs() -> list[InputDevice]:
    sd = portaudio()
    apis = sd.query_hostapis()
    return [InputDevice(i, d["name"], int(d["max_input_channels"]), int(d["default_samplerate"]),
                        apis[d["hostapi"]]["name"])
            for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]


def default_input() -> InputDevice | None:
    """The system's default input device, or None when the machine has no microphone."""
    sd = portaudio()
    try:
        info = sd.query_devices(kind="input")
    except Exception:  # PortAudioError "Error querying device -1": no input device
        return None
    index = int(info["index"]) if "index" in info else sd.default.device[0]
    return next((d for d in list_inputs() if d.index == index), None)


def resolve(spec: str) -> InputDevice:
    """An index ("0") or a case-insensitive name substring ("pulse") -> the input device."""
    inputs = list_inputs()
    if not inputs:
        raise DeviceError("no audio input device found (is a microphone connected? `spkrec devices` lists inputs)")
    if spec == "":
        found = default_input()
        if found is None:
            raise DeviceError("no default audio input device (choose one with --device; `spkrec devices` lists them)")
        return found
    if spec.strip().lstrip("-").isdigit():
        index = int(spec)
        match = next((d for d in inputs if d.index == index), None)
        if match is None:
            known = ", ".join(f"{d.index} {d.name}" for d in inputs)
            raise DeviceError(f"no input device with index {index} (inputs: {known})")
        return match
    matches = [d for d in inputs if spec.lower() in d.name.lower()]
    if not matches:
        known = ", ".join(f"{d.index} {d.name}" for d in inputs)
        raise DeviceError(f"no input device matches '{spec}' (inputs: {known})")
    exact = [d for d in matches if d.name.lower() == spec.lower()]
    return (exact or matches)[0]
