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
    (``output_error``) and the lowest agreement over logit-like outputs (``agreement``)."""
    rows = per_output(array, reference, outputs)
    agreements = [row["agreement"] for row in rows.values() if row["agreement"] is not None]
    return {"accuracy": None, "loss": None, "agreement": min(agreements) if agreements else None,
            "output_error": max(row["error"] for row in rows.values()), "kl": None, "outputs": rows,
            "label": "agreement" if agreements else "output_error"}


def parity(expected: np.ndarray, got: np.ndarray, outputs: tuple) -> dict[str, float]:
    """max |torch - ORT| per output."""
    got_split = split(got, outputs)
    return {name: float(np.abs(values - got_split[name]).max()) for name, values in split(expected, outputs).items()}
