"""Numbers as a person reads them: sizes, counts, times, percentages, and the deltas of metric cards.

The units themselves live in core.units (the HTML report speaks the same way); this module adds
what only the dashboard needs.
"""
from __future__ import annotations

from core.units import count, metric, metric_label, milliseconds, percent, readable, size, times  # noqa: F401

# Words of the engine's notes that name a plan file key, and the dashboard control that does the same.
CONTROLS = {
    "set recalibrate: false": "turn off 'Re-estimate BatchNorm statistics'",
    "recalibrate: false": "'Re-estimate BatchNorm statistics' off",
    "(granularity 'channel')": "(Granularity: channel)",
    "round_to": "'Round kept channels'",
}


def change(new: float | None, old: float | None) -> str | None:
    """Relative change as '-37%' for a metric card delta; None when there is nothing to compare."""
    if new is None or not old:
        return None
    return f"{100 * (new - old) / old:+.0f}%"


def points(new: float | None, old: float | None) -> str | None:
    """Difference of two fractions in percentage points, '+1.2 pts'."""
    if new is None or old is None:
        return None
    return f"{100 * (new - old):+.1f} pts"


def note(text: str) -> str:
    """An engine note as the dashboard says it: units a person reads, controls named as on screen."""
    text = readable(text)
    for words, control in CONTROLS.items():
        text = text.replace(words, control)
    return text
