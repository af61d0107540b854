"""The one training loop: fit a model on a Dataset's train split, and its test-time accuracy.

The demo models are trained with it (core/zoo/train.py) and every recovery method fine-tunes
with it (core/train/recovery.py), re-applying pruning masks through ``on_step``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from core.data import Dataset


def fit(model: nn.Module, data: Dataset, epochs: int, lr: float = 3e-3, seed: int = 0,
        batch_size: int = 64, on_epoch=None, on_step=None) -> nn.Module:
    """Train ``model`` in place with AdamW, cosine learning rate and light shift augmentation.

    ``on_epoch(epoch, loss)`` runs after each epoch with the last batch's loss; ``on_step(step, loss)``
    runs after every optimizer step (recovery re-applies pruning masks there).
    """
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    per_epoch = (len(x_train) + batch_size - 1) // batch_size
    steps = epochs * per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            inputs = _shift(x_train[index], generator)
            optimizer.zero_grad()
            loss = loss_fn(model(inputs), y_train[index])
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
