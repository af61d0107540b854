"""Your own quality metric: ``--metric file.py:function`` (or ``module:function``).

The function takes the model's outputs on the scored items and those items, and returns named
numbers::

    def metric(outputs, data) -> dict[str, float]:
        ...

``outputs`` is a numpy array ``(items, ...)`` for a model returning one tensor, or a dict from
output name ('0', '1.boxes', 'logits'; see core.outputs) to such arrays for a model returning
several. ``data`` has ``x`` (the inputs) and ``y`` (the labels, or None without labels), in the
same order. Every report then carries the numbers under ``metrics``, for the dense and the pruned
model alike.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import PrunelabError, error_line
from core.outputs import split
from core.user_code import import_location


@dataclass(frozen=True)
class Items:
    """The scored items a metric sees: inputs ``x`` and labels ``y`` (None when unlabelled)."""

    x: np.ndarray
    y: np.ndarray | None


@dataclass(frozen=True, eq=False)
class Metric:
    """A user's metric function and where it came from (``spec``)."""

    spec: str
    function: object
    digest: str = ""  # names the metric in cache keys: its spec and, for a file, the file's contents

    def __call__(self, outputs: np.ndarray, layout: tuple, x: np.ndarray, y: np.ndarray | None) -> dict[str, float]:
        """The metric's named numbers for ``outputs`` (laid side by side as core.outputs.flat lays them)."""
        given = split(outputs, layout) if layout else outputs
        try:
            values = self.function(given, Items(x, y))
        except Exception as error:  # the user's code: report, never crash
            raise PrunelabError(f"the metric {self.spec} raised {error_line(error, with_type=True)}") from None
        return _numbers(values, self.spec)

    def __reduce__(self):
        """Pickled by where it came from: a worker process imports the file again."""
        return load_metric, (self.spec,)


def _numbers(values, spec: str) -> dict[str, float]:
    if not isinstance(values, dict) or not values:
        raise PrunelabError(f"the metric {spec} must return a dict of named numbers, e.g. {{'mAP': 0.41}}; "
                            f"got {type(values).__name__}")
    found = {}
    for name, value in values.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise PrunelabError(f"the metric {spec} returned '{name}': {type(value).__name__}, not a number") from None
        if not math.isfinite(number):
            raise PrunelabError(f"the metric {spec} returned '{name}': {number}, not a finite number")
        found[str(name)] = number
    return found


def load_metric(spec: str) -> Metric:
    """The metric at ``spec`` ('file.py:function' or 'module:function'); PrunelabError naming what is wrong."""
    location, colon, name = str(spec).rpartition(":")
    if not colon or not location or not name:
        raise PrunelabError(f"--metric takes file.py:function, got '{spec}'")
    function = getattr(import_location(location), name, None)
    if not callable(function):
        raise PrunelabError(f"'{location}' has no callable named '{name}'")
    path = Path(location)
    content = path.read_bytes() if location.endswith(".py") and path.is_file() else b""
    return Metric(str(spec), function, f"{spec}-{hashlib.sha256(content).hexdigest()[:16]}")
