"""Calibration items for the scores and refits that read a model's own data (Fisher scores of units and
blocks, structured OBS, reconstruction): one home, so every reader takes the same items in the same batches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.prune import criteria

BATCH = 16
TOKENS = 4096      # real positions a token model's calibration reaches, taking up to MAX_ITEMS items:
MAX_ITEMS = 256    # minilm's 240 calibration sentences (about 13 tokens each), plain 50% channel plan with obs
                   # (residual-sum ridge 3): cosine 0.846 on 128 of them, 0.870 on 192, 0.877 on all 240


@dataclass
class Calibration:
    """Calibration items, their labels and (token models) which positions are real.

    Token items are sorted by length and cut after the longest sequence, and each batch after its
    own longest: padded positions are masked out of attention and pooling, so the real positions
    compute the same values, several times faster.
    """

    inputs: torch.Tensor
    labels: torch.Tensor | None
    positions: torch.Tensor | None      # (items, tokens) bool, or None

    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(inputs, labels) per batch of BATCH items."""
        found = []
        for start in range(0, len(self.inputs), BATCH):
            batch = self.inputs[start:start + BATCH]
            if self.positions is not None:
                batch = batch[:, :_length(self.positions[start:start + BATCH])]
            found.append((batch, None if self.labels is None else self.labels[start:start + BATCH]))
        return found


def _length(positions: torch.Tensor) -> int:
    """Columns up to the last real position of any item (at least one)."""
    used = positions.any(0).nonzero()
    return int(used.max()) + 1 if len(used) else 1


def calibration(job, name: str) -> Calibration:
    """The calibration items of ``job`` (PrunelabError naming ``name`` when the model has no data).

    CALIBRATION_ITEMS items, or for token ids as many more (up to MAX_ITEMS) as it takes to reach
    TOKENS real positions: least squares over a layer's inputs needs more rows than it has inputs,
    and 64 short sentences give fewer rows than a 1536-neuron layer has.
    """
    tokens = job.pad_id is not None and job.data is not None and job.data.integer and job.data.x_test.ndim == 2
    inputs, labels = criteria.calibration_items(job.data, name, MAX_ITEMS if tokens else criteria.CALIBRATION_ITEMS)
    if not tokens or inputs.is_floating_point() or inputs.ndim != 2:
        inputs = inputs[:criteria.CALIBRATION_ITEMS]
        return Calibration(inputs, None if labels is None else labels[:len(inputs)], None)
    reached = torch.cumsum((inputs != job.pad_id).sum(1), 0) < TOKENS
    count = max(criteria.CALIBRATION_ITEMS, int(reached.sum()) + 1)
    inputs, labels = inputs[:count], None if labels is None else labels[:count]
    order = torch.argsort((inputs != job.pad_id).sum(1), stable=True)
    inputs, labels = inputs[order], None if labels is None else labels[order]
    positions = inputs != job.pad_id
    length = _length(positions)
    return Calibration(inputs[:, :length], labels, positions[:, :length])
