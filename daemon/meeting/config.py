"""The ``[meeting]`` section: how many voices a meeting may hold and how turns are cut."""

from __future__ import annotations

from dataclasses import dataclass

from spkrec.models.options import Section, option


@dataclass
class MeetingConfig:
    max_speakers: int = option(20, lo=1, hi=200)
    min_speaker_s: float = option(2.0, lo=0.0, hi=60.0)
    max_pause_s: float = option(1.0, lo=0.0, hi=10.0)
    min_turn_s: float = option(0.5, lo=0.0, hi=10.0)
    context_s: float = option(30.0, lo=5.0, hi=300.0)


_CLUSTERING = "meeting clustering takes its thresholds from the model (README, Meeting mode); delete the line"
SECTION = Section("meeting", MeetingConfig, gone={
    "meeting.guest_threshold": _CLUSTERING, "meeting.merge_threshold": _CLUSTERING,
    "meeting.max_guests": "it is meeting.max_speakers now",
    "meeting.change_windows": "turn boundaries come from 0.1-s frames now; delete the line"})
