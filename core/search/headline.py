"""The figure a sensitivity sweep is read by: perplexity for a causal language model scored on text (lower is
better, so damage is a rise), else the sweep's own label (accuracy, agreement, cosine...; damage is a drop).

The page, its charts and ``prunelab sensitivity``'s table all read this one choice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Headline:
    """How to show a sweep's points: ``name`` of the figure, the dense ``baseline`` in shown units, ``scale``
    from a point's stored fraction to shown units (100 for percentages), which way is better, and ``secondary``,
    the label of the sweep's agreement figure shown beside a perplexity (None when that figure is the headline)."""
    name: str
    baseline: float
    scale: float
    lower_is_better: bool
    secondary: str | None = None
    secondary_baseline: float | None = None

    def describe(self) -> str:
        """'baseline perplexity 96.6 (agreement 100.00%)', or 'baseline accuracy 99.50%'."""
        if self.lower_is_better:
            beside = f" ({self.secondary} {self.secondary_baseline:.2%})" if self.secondary else ""
            return f"baseline {self.name} {self.baseline:.4g}{beside}"
        return f"baseline {self.name} {self.baseline / self.scale:.2%}"

    @property
    def word(self) -> str:
        """'rise' for a lower-is-better figure, 'drop' otherwise: what damage does to it."""
        return "rise" if self.lower_is_better else "drop"

    @property
    def unit(self) -> str:
        """The unit of a change: percentage points for a percentage, the figure's own units otherwise."""
        return "pts" if self.scale == 100.0 else ""

    def value(self, point: dict) -> float:
        """A point's figure in shown units (perplexity = exp(loss))."""
        if self.lower_is_better:
            return math.exp(point["loss"])
        return self.scale * point["accuracy"]

    def damage(self, point: dict) -> float:
        """How much worse a point is than the dense model, positive being worse (a rise or a drop)."""
        change = self.value(point) - self.baseline
        return change if self.lower_is_better else -change

    def relative(self, point: dict) -> float:
        """Damage on a percentage scale for shading: percentage points, or percent of the dense perplexity."""
        damage = self.damage(point)
        return 100.0 * damage / self.baseline if self.lower_is_better and self.baseline else damage


def headline(result: dict) -> Headline:
    """The figure ``result`` (a complete or partial sensitivity sweep with its dense point) is read by."""
    if result.get("baseline_perplexity") is not None:
        return Headline("perplexity", result["baseline_perplexity"], 1.0, True,
                        secondary=result["label"], secondary_baseline=result["baseline_accuracy"])
    scale = 1.0 if result["label"] == "cosine" else 100.0
    return Headline(result["label"], scale * result["baseline_accuracy"], scale, False)

