"""The one training loop: fit a model on a Dataset's train split, and its test-time accuracy.

The demo models are trained with it (core/zoo/train.py) and every recovery method fine-tunes
with it (core/train/phases.py), re-applying pruning masks through ``on_step``. What it
minimizes is an objective ``(model, inputs, labels, generator) -> loss``: ``classification``
(labels, light shift augmentation) or ``next_token`` (a causal language model on its own windows).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.data import Dataset

SMOOTHING = 0.05  # label smoothing of the classification objective


def classification(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """Cross-entropy (label smoothing SMOOTHING) of ``model`` on shifted ``inputs`` against ``labels``."""
    return F.cross_entropy(model(_shift(inputs, generator)), labels, label_smoothing=SMOOTHING)


def next_token(model: nn.Module, inputs: torch.Tensor, labels, generator) -> torch.Tensor:
    """Mean next-token cross-entropy of a causal LM over windows of token ids ``inputs`` (batch, context):
    position ``t`` predicts token ``t + 1``. ``model`` returns logits flattened to (batch, context * vocabulary)."""
    batch, context = inputs.shape
    logits = model(inputs).reshape(batch, context, -1)[:, :-1]  # (batch, context - 1, vocabulary)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), inputs[:, 1:].reshape(-1))


@torch.no_grad()
def perplexity(model: nn.Module, windows: np.ndarray, batch_size: int = 16) -> float:
    """exp of the mean next-token loss of a causal LM over ``windows`` (each scored on its own)."""
    model.eval()
    total = 0.0
    for start in range(0, len(windows), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(windows[start:start + batch_size]))
        total += float(next_token(model, batch, None, None)) * len(batch)
    return math.exp(total / max(1, len(windows)))


def fit(model: nn.Module, data: Dataset, epochs: int, lr: float = 3e-3, seed: int = 0,
        batch_size: int = 64, on_epoch=None, on_step=None, objective=classification) -> nn.Module:
    """Train ``model`` in place on ``data``'s train split with AdamW and a one-cycle learning rate,
    minimizing ``objective`` (``classification`` by default; ``next_token`` needs no labels).

    ``on_epoch(epoch, loss)`` runs after each epoch with the last batch's loss; ``on_step(step, loss)``
    runs after every optimizer step (recovery re-applies pruning masks there).
    """
    generator = torch.Generator().manual_seed(seed)
    x_train = torch.from_numpy(data.x_train)
    y_train = None if data.y_train is None else torch.from_numpy(data.y_train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    per_epoch = (len(x_train) + batch_size - 1) // batch_size
    steps = epochs * per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            optimizer.zero_grad()
            loss = objective(model, x_train[index], None if y_train is None else y_train[index], generator)
            loss.backward()
            optimizer.step()
            schedule.step()
            if on_step is not None:
                on_step(epoch * per_epoch + start // batch_size, loss.item())
        if on_epoch is not None:
            on_epoch(epoch, loss.item())
    return model.eval()


def _shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each batch by up to one pixel (an eighth of the image) to fight overfitting."""
    limit = max(1, images.shape[-1] // 8)
    dy, dx = torch.randint(-limit, limit + 1, (2,), generator=generator).tolist()
    return torch.roll(images, shifts=(dy, dx), dims=(-2, -1))


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    predictions = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((predictions == y).mean())
