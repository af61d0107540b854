"""One forward pass with hooks attached: how prunelab watches a model run (MACs, attention inputs,
call order) without leaving anything behind on it."""
from __future__ import annotations

import torch
from torch import nn


def forward_once(module: nn.Module, example_input, handles: list) -> None:
    """Run ``module`` on ``example_input`` once without gradients, then remove the hook ``handles``
    registered on it for this pass, whether or not the pass succeeded."""
    try:
        with torch.no_grad():
            module(example_input)
    finally:
        for handle in handles:
            handle.remove()
