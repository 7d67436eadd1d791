"""The terminal UI renders every part on an 80x24 screen."""

import pyfiglet
from rich.console import Console

from spkrec.daemon.pipeline.events import SilenceEvent, SpeakerEvent, StatusEvent
from spkrec.daemon.pipeline.state import LiveState
from spkrec.daemon.ui import render


def _state() -> LiveState:
    state = LiveState(source="pulse (16000 Hz)", rate=16000, provider="CPUExecutionProvider", hop_s=0.5,
                      timeline_s=60.0, demo=True)
    state.handle(StatusEvent("listening", "listening on pulse"))
    for i in range(30):
        label = "alice" if i < 20 else "bob"
        state.handle(SpeakerEvent(i * 0.5, i * 0.5 + 2, label, 0.81, ((label, 0.81), ("carol", 0.42), ("dave", 0.1)),
                                  1.0, inference_ms=41.0, latency_ms=55.0))
    state.handle(SilenceEvent(15.0, 17.0))
    state.handle(SpeakerEvent(17.0, 19.0, "bob", 0.77, (("bob", 0.77), ("alice", 0.3)), 0.9, 40.0, 52.0))
    state.level_db, state.voiced = -23.0, True
    return state


def _screen(state: LiveState) -> list[str]:
    console = Console(record=True, width=80, height=24, force_terminal=True, color_system="truecolor")
    console.print(render(state, threshold=0.62, width=80))
    return console.export_text().rstrip("\n").splitlines()


def test_ui_shows_every_part_within_80x24():
    lines = _screen(_state())
    text = "\n".join(lines)
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80, text
    big = [row for row in pyfiglet.figlet_format("bob", font="small").splitlines() if row.strip()]
    assert all(row.rstrip() in text for row in big), "current speaker is not in large letters"
    for part in ("DEMO", "pulse (16000 Hz)", "score 0.77", "threshold 0.62", "alice", "0.30", "level", "voice",
                 "timeline", "speaker", "talk", "turns", "listening", "CPU", "infer 41 ms", "latency 55 ms", "dropped 0/0"):
        assert part in text, f"{part!r} missing from the screen:\n{text}"
    assert "█" in text.split("timeline")[1].splitlines()[0]


def test_ui_shows_silence_and_long_names_fit():
    state = _state()
    state.handle(SilenceEvent(19.0, 21.0))
    state.quiet_window(21.0)
    text = "\n".join(_screen(state))
    big = [row for row in pyfiglet.figlet_format("silence", font="small").splitlines() if row.strip()]
    assert all(row.rstrip() in text for row in big) and "waiting for speech" in text
    assert text.split("timeline")[1].splitlines()[0].endswith("·")
    state.handle(SpeakerEvent(21.0, 23.0, "Dr. Bartholomew Fitzgerald-Smythe", 0.9, (("x", 0.9),), 1.0))
    lines = _screen(state)
    assert max(len(line) for line in lines) <= 80 and len(lines) <= 24
    assert "DR. BARTHOLOMEW FITZGERALD-SMYTHE" in "\n".join(lines)


def test_ui_shows_the_door_state():
    from spkrec.daemon.pipeline.events import DoorEvent

    state = _state()
    state.handle(DoorEvent("bob", True, 0.77, "authorised", 15.0, 19.0, (0.8, 0.77, 0.79), cooldown_until=29.0))
    lines = _screen(state)
    text = "\n".join(lines)
    assert "door OPEN bob score 0.77 / 0.62" in text and "cooldown 10 s" in text
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80


def test_four_inputs_each_get_a_panel_within_80x24():
    from spkrec.daemon.pipeline.events import DoorEvent
    from spkrec.daemon.ui import render_all

    states = []
    for i, name in enumerate(("front", "back", "lobby", "garage")):
        state = _state()
        state.name = name
        if i == 1:
            state.handle(SilenceEvent(19.0, 21.0))
        if i == 2:
            state.handle(DoorEvent("bob", True, 0.77, "authorised", 17.0, 19.0, (0.77,), 29.0))
        states.append(state)
    console = Console(record=True, width=80, height=24, force_terminal=True, color_system="truecolor")
    console.print(render_all(states, threshold=0.62, width=80))
    lines = console.export_text().rstrip("\n").splitlines()
    text = "\n".join(lines)
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80, text
    for part in ("4 inputs", "front", "back", "lobby", "garage", "bob", "0.77 / 0.62", "silence", "OPEN", "latency 55 ms"):
        assert part in text, f"{part!r} missing from the screen:\n{text}"
