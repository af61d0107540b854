"""One forward pass with hooks attached: how prunelab watches a model run (MACs, attention inputs,
call order) without leaving anything behind on it."""
from __future__ import annotations

import torch
from torch import nn


class Stop(Exception):
    """Raised by a hook once it has what it needs: the rest of that forward pass is skipped."""


def forward_once(module: nn.Module, example_input, handles: list) -> None:
    """Run ``module`` on ``example_input`` once without gradients, then remove the hook ``handles``
    registered on it for this pass, whether or not the pass succeeded."""
    forward_each(module, [example_input], handles)


def forward_each(module: nn.Module, inputs, handles: list) -> None:
    """Run ``module`` without gradients on each item of ``inputs``, a pass ending early where a hook
    raises Stop, then remove the hook ``handles`` registered for these passes, whether or not they succeeded."""
    try:
        with torch.no_grad():
            for example_input in inputs:
                try:
                    module(example_input)
                except Stop:
                    pass
    finally:
        for handle in handles:
            handle.remove()
