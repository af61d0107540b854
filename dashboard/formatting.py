"""Numbers as a person reads them: sizes, counts, times, percentages, and the deltas of metric cards.

The units themselves live in core.units (the HTML report speaks the same way); this module adds
what only the dashboard needs.
"""
from __future__ import annotations

from core.outputs import TOP_DETECTIONS
from core.units import count, metric, metric_label, milliseconds, percent, readable, size, times  # noqa: F401

# Words of the engine's notes that name a plan file key, and the dashboard control that does the same.
CONTROLS = {
    "set recalibrate: false": "turn off 'Re-estimate BatchNorm statistics'",
    "recalibrate: false": "'Re-estimate BatchNorm statistics' off",
    "set prune_width: true": "turn on 'Prune the residual stream too'",
    "set prune_width: false": "turn off 'Prune the residual stream too'",
    "set reconstruct: false": "turn off 'Reconstruct the layers that read removed units'",
    "(granularity 'channel')": "(Granularity: channel)",
    "round_to": "'Round kept channels'",
}


def shown_change(new: float | None, old: float | None) -> float | None:
    """The relative change in percent as a card shows it (whole percents), None with nothing to compare;
    its sign, not the text, colours the card."""
    if new is None or not old:
        return None
    return round(100 * (new - old) / old) + 0.0  # + 0.0: -0.0 reads as no change


def change(new: float | None, old: float | None) -> str | None:
    """Relative change as '-37%' for a metric card delta; None when there is nothing to compare."""
    shown = shown_change(new, old)
    return None if shown is None else f"{shown:+.0f}%"


def shown_points(new: float | None, old: float | None) -> float | None:
    """The difference of two fractions in percentage points as shown (one decimal), None without both."""
    if new is None or old is None:
        return None
    return round(100 * (new - old), 1) + 0.0


def points(new: float | None, old: float | None) -> str | None:
    """Difference of two fractions in percentage points, '+1.2 pts'."""
    shown = shown_points(new, old)
    return None if shown is None else f"{shown:+.1f} pts"


def note(text: str) -> str:
    """An engine note as the dashboard says it: units a person reads, controls named as on screen."""
    text = readable(text)
    for words, control in CONTROLS.items():
        text = text.replace(words, control)
    return text


def quality(metrics: dict, dense: dict | None = None) -> dict:
    """The headline quality card of a report side: ``{"title", "value", "delta", "moved", "help"}``,
    ``moved`` being the delta as a number (0 when it shows no change; its sign colours the card).

    Perplexity for language models on text (lower is better: ``lower_is_better``); accuracy with
    labels; without labels, top-1 agreement for classifiers (with the relative output
    error in the help) and, for embedding models, the mean cosine similarity to the dense embeddings
    (with its 5th percentile and the nearest-neighbour agreement in the help).
    """
    dense = dense or {}
    label = metrics.get("label", "accuracy")
    if label == "perplexity":
        value = metrics.get("perplexity")
        return {"title": "Perplexity", "value": "–" if value is None else f"{value:.1f}",
                "delta": change(value, dense.get("perplexity")), "lower_is_better": True,
                "moved": shown_change(value, dense.get("perplexity")) or 0.0,
                "help": f"exp of the mean next-token loss on the test text (context {metrics.get('context')}, "
                        f"stride {metrics.get('stride')}; lower is better); next-token agreement with the dense "
                        f"model {percent(metrics.get('agreement'))}, KL {metrics.get('kl', 0):.3g}"}
    if label == "cosine":
        value = metrics.get("cosine")
        moved = value is not None and dense.get("cosine") is not None and abs(value - dense["cosine"]) >= 5e-4
        delta = f"{value - dense['cosine']:+.3f}" if moved else None
        return {"title": "Cosine to dense", "value": "–" if value is None else f"{value:.3f}", "delta": delta,
                "moved": round(value - dense["cosine"], 3) if moved else 0.0,
                "help": f"embeddings without labels: mean cosine similarity to the dense model's embeddings "
                        f"(5th percentile {metrics.get('cosine_p5', 0):.3f}); nearest-neighbour agreement "
                        f"{percent(metrics.get('neighbour_agreement'))}"}
    if label in ("detections", "output_error"):
        return _outputs_quality(metrics, dense)
    value = metrics.get(label) if metrics.get(label) is not None else metrics.get("agreement")
    help_text = "on the test split" if label == "accuracy" else "no labels: top-1 match with the dense model"
    if metrics.get("output_error") is not None:
        help_text += f"; relative output error {metrics['output_error']:.3g}, KL {metrics.get('kl', 0):.3g}"
    return {"title": label.capitalize(), "value": percent(value), "delta": points(value, dense.get(label)),
            "moved": shown_points(value, dense.get(label)) or 0.0, "help": help_text}


def _outputs_quality(metrics: dict, dense: dict) -> dict:
    """The headline of a many-output model without logits: a detector's top detections kept, else the
    relative output error (lower is better)."""
    error = f"relative output error {metrics.get('output_error', 0):.3g} (largest over the outputs)"
    if metrics["label"] == "detections":
        value = metrics.get("detections")
        return {"title": "Detections kept", "value": percent(value), "delta": points(value, dense.get("detections")),
                "moved": shown_points(value, dense.get("detections")) or 0.0,
                "help": f"a detector: per image, the share of the dense model's {TOP_DETECTIONS} highest-scoring "
                        f"detections (anchor and class) that the pruned model also ranks in its top "
                        f"{TOP_DETECTIONS}, averaged over the test images; {error}"}
    value = metrics.get("output_error")
    return {"title": "Output error", "value": "–" if value is None else f"{value:.3g}", "lower_is_better": True,
            "delta": None if value is None or dense.get("output_error") is None
            else f"{value - dense['output_error']:+.3g}",
            "moved": 0.0 if value is None else round(value - (dense.get("output_error") or 0.0), 4),
            "help": f"no logits to compare: {error}; 0 is the dense model"}


def fidelity(metrics: dict) -> tuple[str, str, str] | None:
    """A second fidelity card (title, value, help) where labels are missing, else None."""
    if metrics.get("label") == "perplexity":
        return ("Next-token agreement", percent(metrics.get("agreement")),
                f"share of positions where the pruned model's most likely next token is the dense model's; "
                f"KL to the dense model {metrics.get('kl', 0):.3g} per position")
    if metrics.get("label") == "cosine":
        return ("Neighbours kept", percent(metrics.get("neighbour_agreement")),
                "share of items whose nearest other item is the same as under the dense model")
    if metrics.get("label") == "agreement" and metrics.get("output_error") is not None:
        return ("Output error", f"{metrics['output_error']:.3g}",
                "relative L2 distance of the outputs to the dense model's; still meaningful when every input "
                "gets the same class")
    return None


def tokens_per_second(figures: dict | None, part: str) -> tuple[str, str | None]:
    """('1,234 tok/s', delta) for ``part`` 'prefill' or 'decode' of a report's ``generation`` figures."""
    if not figures:
        return "–", None
    value = figures[f"{part}_tokens_per_s"]
    speedup = (figures.get("speedup") or {}).get(part)
    if not speedup or speedup.get("same_kernels"):
        delta = "same graph" if speedup else None
    elif not speedup["measurable"]:
        delta = f"noise: {speedup['low']:.2f}–{speedup['high']:.2f}×"
    else:
        delta = f"{100 * (speedup['p50'] - 1):+.0f}% ({speedup['low']:.2f}–{speedup['high']:.2f}×)"
    return f"{value:,.0f} tok/s", delta


def short_names(names: list[str]) -> dict[str, str]:
    """Layer name -> the name as sliders and charts show it: without the dotted prefix every layer shares
    (a wrapper's ``model.``), so ``model.encoder.layer.0.attention.self.query`` reads ``encoder.layer.0...``."""
    if len(names) < 2:
        return {name: name for name in names}
    parts = [name.split(".") for name in names]
    shared = 0
    while all(len(part) > shared + 1 and part[shared] == parts[0][shared] for part in parts):
        shared += 1
    return {name: ".".join(part[shared:]) for name, part in zip(names, parts)}
