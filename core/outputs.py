"""Models that return more than one tensor: a tuple, list or dict of tensors, nested (a detector's
boxes and feature maps, a multi-head model). Each output is measured on its own.

Measurements pass outputs around as one array per item: every output flattened per item and
laid side by side, ``(items, sum of output sizes)``. A layout, ``((name, shape per item), ...)``,
says where each output lies, so ``split`` gives them back by name.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from core.errors import PrunelabError

LOGIT_LIKE_MIN_CLASSES = 2
BOX = 4              # a detection output's first rows are the box (cx, cy, w, h), then one score per class
TOP_DETECTIONS = 10  # the detector headline compares each item's highest-scoring detections
BOOTSTRAP_DRAWS = 400


def leaves(output, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor in ``output`` in order: '0', '1.boxes', 'logits'; None entries skipped.

    Raises PrunelabError for anything else (a string, a number, an object with tensors inside).
    """
    if isinstance(output, torch.Tensor):
        return [(prefix or "output", output)]
    if output is None:
        return []
    if hasattr(output, "to_tuple") and hasattr(output, "keys"):  # a transformers ModelOutput
        output = dict(output.items())
    if isinstance(output, dict):
        items = [(str(key), value) for key, value in output.items()]
    elif isinstance(output, (tuple, list)):
        items = [(str(index), value) for index, value in enumerate(output)]
    else:
        raise PrunelabError(f"the model returns a {type(output).__name__}{f' at {prefix}' if prefix else ''}; "
                            f"prunelab measures a tensor or a tuple, list or dict of tensors")
    return [leaf for key, value in items for leaf in leaves(value, f"{prefix}.{key}" if prefix else key)]


def layout(output) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """((name, shape per item), ...) of every tensor in ``output`` (batch first)."""
    found = leaves(output)
    if not found:
        raise PrunelabError("the model returns no tensor")
    return tuple((name, tuple(tensor.shape[1:])) for name, tensor in found)


def flat(output, items: int) -> np.ndarray:
    """Every tensor of ``output`` flattened per item and laid side by side: (items, total size)."""
    return np.concatenate([tensor.detach().cpu().float().numpy().reshape(items, -1)
                           for _, tensor in leaves(output)], axis=1)


def split(array: np.ndarray, outputs: tuple) -> dict[str, np.ndarray]:
    """The outputs laid side by side in ``array`` (see ``flat``), by name, each (items, *shape)."""
    found, start = {}, 0
    for name, shape in outputs:
        size = math.prod(shape)
        found[name] = array[:, start:start + size].reshape(len(array), *shape)
        start += size
    return found


def logit_like(shape: tuple[int, ...]) -> bool:
    """An output of one score per class per item (batch, classes) is read as logits."""
    return len(shape) == 1 and shape[0] >= LOGIT_LIKE_MIN_CLASSES


def detection_like(shape: tuple[int, ...]) -> bool:
    """A (4 + classes, anchors) output, as YOLOv5/v8 detection heads return in eval mode."""
    return len(shape) == 2 and BOX < shape[0] <= shape[1]


def detector_output(outputs: tuple) -> str | None:
    """The model's detections: its first output shaped like them (YOLOv8's '0'; later ones are its raw
    box distributions, class scores and feature maps), or None."""
    return next((name for name, shape in outputs if detection_like(shape)), None)


def detections_kept(values: np.ndarray, dense: np.ndarray) -> np.ndarray:
    """Per item, the share of the dense model's TOP_DETECTIONS highest (anchor, class) scores that the
    pruned model also ranks among its TOP_DETECTIONS: (items,)."""
    scores, reference = (array[:, BOX:, :].reshape(len(array), -1) for array in (values, dense))  # (items, c * a)
    top = min(TOP_DETECTIONS, scores.shape[1])
    mine = np.argpartition(-scores, top - 1, axis=1)[:, :top]
    theirs = np.argpartition(-reference, top - 1, axis=1)[:, :top]
    return np.array([len(np.intersect1d(a, b)) / top for a, b in zip(mine, theirs)])


def per_item(array: np.ndarray, reference: np.ndarray, outputs: tuple) -> dict[str, dict[str, np.ndarray]]:
    """Per output, per item: squared distance to the dense output and its squared norm (``error`` is the
    ratio of their sums' roots), top-1 hits of logit-like outputs, detections kept of detection outputs."""
    found = {}
    dense = split(reference, outputs)
    for name, values in split(array, outputs).items():
        shape, base = values.shape[1:], dense[name]
        difference = (values - base).astype(np.float64).reshape(len(values), -1)
        row = {"distance": np.square(difference).sum(1),
               "norm": np.square(base.astype(np.float64).reshape(len(base), -1)).sum(1)}
        if logit_like(shape):
            row["agreement"] = (values.argmax(axis=1) == base.argmax(axis=1)).astype(np.float64)
        if name == detector_output(outputs):
            row["detections"] = detections_kept(values, base)
        found[name] = row
    return found


def headline(items: dict[str, dict[str, np.ndarray]], label: str, chosen: np.ndarray | None = None) -> float:
    """The headline figure (``label``: agreement, detections or output_error) over the items ``chosen``."""
    pick = (lambda values: values) if chosen is None else (lambda values: values[chosen])
    if label == "output_error":
        return max(float(np.sqrt(pick(row["distance"]).sum() / max(pick(row["norm"]).sum(), 1e-24)))
                   for row in items.values())
    return min(float(pick(row[label]).mean()) for row in items.values() if label in row)


def swept_label(outputs: tuple) -> str:
    """What a sensitivity sweep scores a many-output model on (core.search.sweep_points.Scorer): 'agreement',
    'detections', or 'output match' (one minus the output error, so that higher is better as elsewhere)."""
    if any(logit_like(shape) for _, shape in outputs):
        return "agreement"
    return "detections" if detector_output(outputs) else "output match"


def interval(array: np.ndarray, reference: np.ndarray | None, outputs: tuple, label: str, seed: int = 0) -> dict | None:
    """The 95% interval of a many-output model's headline figure: a percentile bootstrap over items
    (None against itself: the dense model's figures are exact)."""
    if reference is None or len(array) < 2:
        return None
    items = per_item(array, reference, outputs)
    generator = np.random.default_rng(seed)
    draws = [headline(items, label, generator.integers(0, len(array), len(array))) for _ in range(BOOTSTRAP_DRAWS)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"low": float(low), "high": float(high), "items": len(array), "method": "bootstrap"}


def per_output(array: np.ndarray, reference: np.ndarray | None, outputs: tuple) -> dict[str, dict]:
    """{name: {shape, error (relative L2 to the dense outputs), agreement (top-1, logit-like outputs)}}."""
    found = {}
    dense = split(reference, outputs) if reference is not None else {}
    for name, values in split(array, outputs).items():
        shape = values.shape[1:]
        row = {"shape": list(shape), "error": 0.0, "agreement": 1.0 if logit_like(shape) else None}
        if name in dense:
            difference = np.linalg.norm((values - dense[name]).astype(np.float64))
            row["error"] = float(difference / max(np.linalg.norm(dense[name].astype(np.float64)), 1e-12))
            if logit_like(shape):
                row["agreement"] = float((values.argmax(axis=1) == dense[name].argmax(axis=1)).mean())
        found[name] = row
    return found


def quality(array: np.ndarray, reference: np.ndarray | None, outputs: tuple) -> dict:
    """The quality figures of a many-output model: per output (see ``per_output``), the largest error
    (``output_error``), the lowest agreement over logit-like outputs (``agreement``) and, for a
    detector, the share of its top detections kept (``detections``, on ``detector_output``). The headline (``label``)
    is agreement where there are logits, else detections kept where there is a detection output,
    else the output error."""
    rows = per_output(array, reference, outputs)
    agreements = [row["agreement"] for row in rows.values() if row["agreement"] is not None]
    detector = detector_output(outputs)
    kept = 1.0 if detector else None
    if detector and reference is not None:
        kept = headline(per_item(array, reference, outputs), "detections")
    label = "agreement" if agreements else "detections" if detector else "output_error"
    return {"accuracy": None, "loss": None, "agreement": min(agreements) if agreements else None,
            "detections": kept, "output_error": max(row["error"] for row in rows.values()), "kl": None,
            "outputs": rows, "label": label}


def parity(expected: np.ndarray, got: np.ndarray, outputs: tuple) -> dict[str, float]:
    """max |torch - ORT| per output."""
    got_split = split(got, outputs)
    return {name: float(np.abs(values - got_split[name]).max()) for name, values in split(expected, outputs).items()}
