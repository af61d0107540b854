"""Numbers as a person reads them: sizes, counts, times, percentages, and the deltas of metric cards."""
from __future__ import annotations


def count(value: float | None) -> str:
    """12_345_678 -> '12.3 M'."""
    if value is None:
        return "–"
    for limit, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= limit:
            return f"{_short(value / limit)}{suffix}"
    return f"{value:.0f}"


def _short(value: float) -> str:
    """Three significant digits at most: 629.9 -> '630', 15.26 -> '15.3', 1.234 -> '1.23'."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def size(value: float | None) -> str:
    """Bytes -> '1.4 MB' (powers of 1024)."""
    if value is None:
        return "–"
    for limit, suffix in ((2**30, "GB"), (2**20, "MB"), (2**10, "KB")):
        if value >= limit:
            return f"{_short(value / limit)} {suffix}"
    return f"{value:.0f} B"


def milliseconds(value: float | None) -> str:
    """0.0604 -> '60.4 µs', 2.65 -> '2.65 ms'."""
    if value is None:
        return "–"
    return f"{_short(1000 * value)} µs" if value < 1 else f"{_short(value)} ms"


def percent(value: float | None) -> str:
    """0.1234 -> '12.3%'; below 1% two decimals, so a small nonzero share does not read as zero."""
    if value is None:
        return "–"
    return f"{100 * value:.2f}%" if 0 < abs(value) < 0.01 else f"{100 * value:.1f}%"


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
