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


def quality(metrics: dict, dense: dict | None = None) -> dict:
    """The headline quality card of a report side: ``{"title", "value", "delta", "help"}``.

    Accuracy with labels; without labels, top-1 agreement for classifiers (with the relative output
    error in the help) and, for embedding models, the mean cosine similarity to the dense embeddings
    (with its 5th percentile and the nearest-neighbour agreement in the help).
    """
    dense = dense or {}
    label = metrics.get("label", "accuracy")
    if label == "cosine":
        value = metrics.get("cosine")
        delta = None if value is None or dense.get("cosine") is None else f"{value - dense['cosine']:+.3f}"
        return {"title": "Cosine to dense", "value": "–" if value is None else f"{value:.3f}", "delta": delta,
                "help": f"embeddings without labels: mean cosine similarity to the dense model's embeddings "
                        f"(5th percentile {metrics.get('cosine_p5', 0):.3f}); nearest-neighbour agreement "
                        f"{percent(metrics.get('neighbour_agreement'))}"}
    value = metrics.get(label) if metrics.get(label) is not None else metrics.get("agreement")
    help_text = "on the test split" if label == "accuracy" else "no labels: top-1 match with the dense model"
    if metrics.get("output_error") is not None:
        help_text += f"; relative output error {metrics['output_error']:.3g}, KL {metrics.get('kl', 0):.3g}"
    return {"title": label.capitalize(), "value": percent(value), "delta": points(value, dense.get(label)),
            "help": help_text}


def fidelity(metrics: dict) -> tuple[str, str, str] | None:
    """A second fidelity card (title, value, help) where labels are missing, else None."""
    if metrics.get("label") == "cosine":
        return ("Neighbours kept", percent(metrics.get("neighbour_agreement")),
                "share of items whose nearest other item is the same as under the dense model")
    if metrics.get("label") == "agreement" and metrics.get("output_error") is not None:
        return ("Output error", f"{metrics['output_error']:.3g}",
                "relative L2 distance of the outputs to the dense model's; still meaningful when every input "
                "gets the same class")
    return None
