"""The live terminal screen: who is speaking, readable from across the room, in 80x24.

It renders a snapshot of ``LiveState`` on Rich's own refresh timer, so drawing never runs on
the audio path and a slow terminal cannot stall recognition.
"""

from __future__ import annotations

import hashlib

import pyfiglet
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from spkrec.daemon.pipeline.events import Event
from spkrec.daemon.pipeline.state import LiveState
from spkrec.models.scoring import UNKNOWN

PALETTE = ("bright_cyan", "bright_magenta", "bright_green", "bright_yellow", "bright_blue", "bright_red",
           "cyan", "magenta", "green", "yellow", "blue", "red")
BIG_FONT = "small"


def colour(label: str) -> str:
    """A stable colour per speaker, so a voice keeps its colour across sessions."""
    if label in (UNKNOWN, ""):
        return "grey50"
    return PALETTE[int(hashlib.md5(label.encode()).hexdigest(), 16) % len(PALETTE)]


def big_text(text: str, width: int) -> Text:
    """The name in FIGlet letters when it fits, else plain bold (non-ASCII names, long names)."""
    if text.isascii():
        art = pyfiglet.figlet_format(text, font=BIG_FONT, width=1000).rstrip("\n")
        lines = [line for line in art.splitlines() if line.strip()]
        if lines and max(len(line) for line in lines) <= width:
            return Text("\n".join(lines))
    return Text(text.upper(), style="bold")


def bar(value: float, width: int, style: str) -> Text:
    filled = int(round(max(0.0, min(1.0, value)) * width))
    return Text("█" * filled, style=style) + Text("░" * (width - filled), style="grey23")


def render(state: LiveState, threshold: float, width: int = 80) -> RenderableType:
    with state.lock:
        current, speaking = state.current, state.speaking
        timeline = list(state.timeline)
        talk = state.talk_time.most_common(4)
        turns = dict(state.turns)
        infer = state.percentile(state.inference_ms, 50)
        latency = state.percentile(state.latency_ms, 50)
        level, voiced = state.level_db, state.voiced
        door = state.door
        recent_turns = list(state.turn_log)[-4:]
        status = state.status if state.status == "listening" else f"{state.status}: {state.status_message}"

    title = Text.assemble(("spkrec live", "bold"), "  ", (state.source, "italic"))
    if state.demo:
        title.append("  DEMO", style="bold black on yellow")

    if current is not None and speaking:
        label, style = current.label, colour(current.label)
        name = big_text(label, width - 4)
        name.stylize(f"bold {style}")
        score_line = Text.assemble("score ", (f"{current.score:.2f} ", "bold"), bar(current.score, 30, style),
                                   f"  threshold {threshold:.2f}")
        candidates = Table.grid(padding=(0, 1))
        for cand, score in current.candidates[:3]:
            candidates.add_row(Text(cand[:16], style=colour(cand)), bar(score, 30, colour(cand)), f"{score:.2f}")
    else:
        name = big_text("silence" if current is not None else "listening", width - 4)
        name.stylize("grey50")
        score_line = Text("waiting for speech", style="grey50")
        candidates = Table.grid()
        for _ in range(3):
            candidates.add_row("")
    hero = Panel(Group(name, score_line), border_style=colour(current.label) if current and speaking else "grey37",
                 height=8)

    level_line = Text.assemble("level ", bar((level + 70) / 70, 20, "green" if voiced else "grey50"),
                               f" {level:5.0f} dBFS  ", ("voice" if voiced else "quiet", "bold green" if voiced else "grey50"))

    slots = width - 12
    strip = Text("timeline ")
    for label in timeline[-slots:]:
        strip.append("█" if label else "·", style=colour(label))

    talk_table = Table(box=None, padding=(0, 2), show_edge=False, header_style="bold")
    talk_table.add_column("speaker")
    talk_table.add_column("talk", justify="right")
    talk_table.add_column("turns", justify="right")
    total = sum(state.talk_time.values()) or 1.0
    for label, seconds in talk:
        talk_table.add_row(Text(label[:20], style=colour(label)), f"{seconds:6.1f}s {seconds / total:4.0%}",
                           str(turns.get(label, 0)))

    status_line = Text(f"{status} · {state.rate} Hz · {state.provider.replace('ExecutionProvider', '')} · "
                       f"infer {infer:.0f} ms · latency {latency:.0f} ms · dropped {state.dropped}/{state.overflows} · "
                       f"{state.stream_time:.0f} s", style="grey70", overflow="ellipsis", no_wrap=True)
    parts = [title, hero, candidates, level_line, strip, talk_table]
    if recent_turns:
        line = Text("turns ")
        for turn in recent_turns:
            line.append(f"{turn.label[:12]} ", style=colour(turn.label))
            line.append(f"{turn.start:.0f}-{turn.end:.0f}s  ", style="grey70")
        parts.append(line)
    if door is not None:
        verdict = ("OPEN", "bold black on green") if door.granted else ("DENIED", "bold white on red")
        parts.append(Text.assemble("door ", verdict, f" {door.label} score {door.score:.2f} / {threshold:.2f} "
                                   f"({door.reason}) at {door.end:.0f} s"))
        remaining = door.cooldown_until - state.stream_time
        if remaining > 0:
            parts[-1].append(f" · cooldown {remaining:.0f} s", style="yellow")
    return Group(*parts, status_line)


def render_compact(state: LiveState, threshold: float, width: int = 80) -> RenderableType:
    """One input of several: a three-line panel (name and score; level and timeline; door and
    status), so four inputs fit an 80x24 terminal."""
    with state.lock:
        current, speaking, door = state.current, state.speaking, state.door
        timeline = list(state.timeline)
        level, voiced = state.level_db, state.voiced
        latency = state.percentile(state.latency_ms, 50)
        status = state.status if state.status == "listening" else f"{state.status}: {state.status_message}"
    if current is not None and speaking:
        style = colour(current.label)
        who = Text.assemble((f"{current.label[:20]:<20} ", f"bold {style}"), bar(current.score, 24, style),
                            f" {current.score:.2f} / {threshold:.2f}")
    else:
        who = Text("silence" if current is not None else "listening", style="grey50")
    strip = Text.assemble("level ", bar((level + 70) / 70, 10, "green" if voiced else "grey50"), " ")
    for label in timeline[-(width - 22):]:
        strip.append("█" if label else "·", style=colour(label))
    status_line = Text(overflow="ellipsis", no_wrap=True)
    if door is not None:
        verdict = ("OPEN", "bold black on green") if door.granted else ("DENIED", "bold white on red")
        status_line.append_text(Text.assemble("door ", verdict, f" {door.label} at {door.end:.0f} s · "))
    status_line.append(f"{status} · latency {latency:.0f} ms · dropped {state.dropped}/{state.overflows} · "
                       f"{state.stream_time:.0f} s", style="grey70")
    return Panel(Group(who, strip, status_line), title=Text(state.name or state.source, style="bold"),
                 title_align="left", border_style=colour(current.label) if current and speaking else "grey37", height=5)


def render_all(states: list[LiveState], threshold: float, width: int = 80) -> RenderableType:
    """The full screen for one input; a compact panel per input for several."""
    if len(states) == 1:
        return render(states[0], threshold, width)
    first = states[0]
    head = Text.assemble(("spkrec live", "bold"), f"  {len(states)} inputs · "
                         f"{first.provider.replace('ExecutionProvider', '')} · infer "
                         f"{max(s.percentile(s.inference_ms, 50) for s in states):.0f} ms per batch")
    return Group(head, *(render_compact(s, threshold, width) for s in states))


class TerminalUI:
    """A Rich Live screen as a sink: events update the shared state, the timer redraws."""

    def __init__(self, states: list[LiveState] | LiveState, threshold: float, refresh_hz: float,
                 console: Console | None = None) -> None:
        self.states = states if isinstance(states, list) else [states]
        self.threshold = threshold
        self.console = console or Console(stderr=True)
        self.live = Live(get_renderable=lambda: render_all(self.states, threshold, min(self.console.width, 100)),
                         console=self.console, refresh_per_second=refresh_hz, screen=self.console.is_terminal,
                         transient=False, redirect_stdout=False, redirect_stderr=False)
        self.live.start()

    def handle(self, event: Event) -> None:
        pass  # the state is a sink of its own; this class only draws it

    def close(self) -> None:
        self.live.stop()
