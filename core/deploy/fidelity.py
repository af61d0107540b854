"""Fidelity to the dense model without labels: how close the pruned model's outputs stay.

- Embeddings (an encoder's sentence or image vectors): cosine similarity of each pruned
  embedding to the dense one (mean and 5th percentile), and nearest-neighbour agreement: the share
  of items whose nearest other item is the same under the pruned model as under the dense one.
- Logits (a classifier): top-1 agreement, plus output-level fidelity that still means something
  when every input gets the same class: the relative L2 error of the outputs
  (``||pruned - dense|| / ||dense||`` over all items) and the mean KL divergence of the dense
  softmax from the pruned one.
- Next-token logits (a causal language model): perplexity on the text (when the inputs are real
  text, not random ids), next-token top-1 agreement and KL per position against the dense model.
"""
from __future__ import annotations

import numpy as np

NEIGHBOUR_BLOCK = 512  # rows of the similarity matrix held at once


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.astype(np.float64)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def nearest_neighbours(embeddings: np.ndarray) -> np.ndarray:
    """For each row, the index of the most cosine-similar other row (itself excluded)."""
    unit = _unit(embeddings)
    nearest = np.empty(len(unit), dtype=np.int64)
    for start in range(0, len(unit), NEIGHBOUR_BLOCK):
        similarity = unit[start:start + NEIGHBOUR_BLOCK] @ unit.T  # (block, items)
        rows = np.arange(similarity.shape[0])
        similarity[rows, rows + start] = -np.inf
        nearest[start:start + NEIGHBOUR_BLOCK] = similarity.argmax(axis=1)
    return nearest


def embedding_fidelity(embeddings: np.ndarray, reference: np.ndarray | None) -> dict:
    """``cosine`` (mean), ``cosine_p5`` and ``neighbour_agreement`` of ``embeddings`` to ``reference``.

    ``reference`` None means these are the dense embeddings: every figure is 1.0.
    """
    if reference is None:
        return {"cosine": 1.0, "cosine_p5": 1.0, "neighbour_agreement": 1.0}
    cosine = (_unit(embeddings) * _unit(reference)).sum(axis=1)
    agreement = float((nearest_neighbours(embeddings) == nearest_neighbours(reference)).mean()) \
        if len(embeddings) > 1 else 1.0
    return {"cosine": float(cosine.mean()), "cosine_p5": float(np.percentile(cosine, 5)),
            "neighbour_agreement": agreement}


def output_fidelity(logits: np.ndarray, reference: np.ndarray | None) -> dict:
    """``output_error`` (relative L2 of the outputs) and ``kl`` (mean KL(dense || pruned) of the softmax)."""
    if reference is None:
        return {"output_error": 0.0, "kl": 0.0}
    difference = np.linalg.norm((logits - reference).astype(np.float64))
    error = float(difference / max(np.linalg.norm(reference.astype(np.float64)), 1e-12))
    dense, pruned = _log_softmax(reference), _log_softmax(logits)
    kl = float((np.exp(dense) * (dense - pruned)).sum(axis=1).mean())
    return {"output_error": error, "kl": max(kl, 0.0)}


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


CAUSAL_BLOCK = 16  # windows turned into float64 log-probabilities at once (16 x 128 x 2048 = 32 MB)


def next_token_quality(logits: np.ndarray, ids: np.ndarray, reference: np.ndarray | None, text: bool,
                       stride: int | None = None) -> dict:
    """A causal LM's quality on windows of token ids ``ids`` (windows, context).

    ``logits`` are its outputs flattened to ``(windows, context * vocabulary)``; position ``t``
    predicts token ``t + 1``. ``stride`` None (or ``context``): the windows do not overlap and each
    scores its ``context - 1`` predictable tokens. A smaller ``stride``: window ``i + 1`` starts
    ``stride`` tokens after window ``i`` (core.text_data.with_stride) and, as in Hugging Face's
    sliding-window perplexity, the first window scores all its tokens and every later one only its
    last ``stride``, the tokens no earlier window scored, each with up to ``context - stride`` tokens
    of history. ``reference`` are the dense model's logits (None: these are the dense ones). ``text``
    False (random token ids) leaves ``perplexity``, ``loss`` and ``next_token_accuracy`` None.
    Returns those, ``agreement`` (top-1 next token equal to the dense model's), ``kl`` (mean
    KL(dense || pruned) per scored position), ``output_error``, ``context``, ``stride`` and ``label``.
    """
    windows, context = ids.shape
    stride = context if stride is None else int(stride)
    later = slice(context - 1 - min(stride, context - 1), context - 1)  # the positions a later window scores
    totals = {"nll": 0.0, "correct": 0, "agree": 0, "kl": 0.0, "error": 0.0, "norm": 0.0, "scored": 0}
    for rows in [slice(0, 1)] + [slice(start, start + CAUSAL_BLOCK) for start in range(1, windows, CAUSAL_BLOCK)]:
        positions = slice(0, context - 1) if rows.start == 0 else later
        _score_windows(totals, logits[rows], ids[rows], None if reference is None else reference[rows], positions)
    scored = max(totals["scored"], 1)
    loss = totals["nll"] / scored
    figures = {"perplexity": float(np.exp(loss)) if text else None, "loss": loss if text else None,
               "next_token_accuracy": totals["correct"] / scored if text else None,
               "agreement": 1.0 if reference is None else totals["agree"] / scored,
               "kl": 0.0 if reference is None else max(totals["kl"] / scored, 0.0),
               "output_error": 0.0 if reference is None else float(np.sqrt(totals["error"] / max(totals["norm"],
                                                                                                  1e-24))),
               "context": int(context), "stride": stride}
    return {"accuracy": None, **figures, "label": "perplexity" if text else "agreement"}


def _score_windows(totals: dict, logits: np.ndarray, ids: np.ndarray, reference: np.ndarray | None,
                   positions: slice) -> None:
    """Add a block of windows' figures at ``positions`` (predicting the token after each) to ``totals``."""
    windows, context = ids.shape
    raw_pruned = logits.reshape(windows, context, -1)[:, positions]  # (windows, scored positions, vocabulary)
    pruned = _log_softmax_last(raw_pruned)
    predicted = pruned.argmax(-1)
    targets = ids[:, positions.start + 1:positions.stop + 1]
    totals["scored"] += targets.size
    totals["nll"] -= float(np.take_along_axis(pruned, targets[..., None], -1).sum())
    totals["correct"] += int((predicted == targets).sum())
    if reference is None:
        return
    raw = reference.reshape(windows, context, -1)[:, positions]
    dense = _log_softmax_last(raw)
    totals["agree"] += int((predicted == dense.argmax(-1)).sum())
    totals["kl"] += float((np.exp(dense) * (dense - pruned)).sum())
    totals["error"] += float(np.square(raw_pruned - raw, dtype=np.float64).sum())
    totals["norm"] += float(np.square(raw, dtype=np.float64).sum())


def _log_softmax_last(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def classes_predicted(logits: np.ndarray) -> int:
    """How many distinct top-1 classes the outputs give (1: agreement tells nothing)."""
    return len(np.unique(logits.argmax(axis=1))) if len(logits) else 0


def constant_class_note(baseline: dict) -> list[str]:
    """A plain warning when the dense model gives every input the same class."""
    if baseline.get("classes_predicted") != 1 or baseline.get("label") == "cosine":
        return []
    if baseline.get("label") == "accuracy":
        what = "accuracy is just that class's share of the labels"
    else:
        what = "top-1 agreement tells nothing"
    note = (f"the dense model predicts the same class for every input ({what}, typical of randomly initialized "
            f"weights); judge fidelity by the relative output error and KL divergence instead")
    return [note]


def perplexity_note(baseline: dict) -> list[str]:
    """Why a causal language model has no perplexity: it was fed random token ids."""
    if not baseline.get("context") or baseline.get("perplexity") is not None:
        return []
    return ["perplexity is not available: the model has no tokenizer and no token data, so it was fed random "
            "token ids; next-token agreement and KL against the dense model stand in (give it a .txt with a "
            "tokenizer, or token ids in an .npz, for perplexity)"]

