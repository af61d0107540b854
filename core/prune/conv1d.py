"""transformers' ``Conv1D`` (GPT-2's projections) seen as the ``nn.Linear`` it computes.

``Conv1D`` stores its weight as (in, out), transposed against ``nn.Linear``, and torch-pruning
does not know it. Channel pruning swaps every ``Conv1D`` for an equal ``nn.Linear`` while it
traces, scores and cuts, then writes the (possibly narrower) weights back into the original
``Conv1D`` modules, so the pruned model keeps GPT-2's own classes and state_dict layout.
"""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' Conv1D, recognised by name so transformers need not be imported."""
    kind = type(module)
    return kind.__name__ == "Conv1D" and kind.__module__.startswith("transformers")


def _as_linear(layer: nn.Module) -> nn.Linear:
    linear = nn.Linear(layer.weight.shape[0], layer.weight.shape[1], bias=layer.bias is not None)
    linear.weight = nn.Parameter(layer.weight.detach().t().clone(), layer.weight.requires_grad)  # (out, in)
    if layer.bias is not None:
        linear.bias = layer.bias
    return linear


def _write_back(layer: nn.Module, linear: nn.Linear, original) -> nn.Module:
    """``layer`` with ``linear``'s weights: untouched when ``linear`` was not cut."""
    if linear.weight is original:
        return layer
    layer.weight = nn.Parameter(linear.weight.detach().t().contiguous(), linear.weight.requires_grad)  # (in, out)
    layer.bias = linear.bias
    layer.nf = linear.out_features
    if hasattr(layer, "nx"):
        layer.nx = linear.in_features
    return layer


@contextmanager
def as_linear(module: nn.Module):
    """Within the block every Conv1D inside ``module`` is an nn.Linear; afterwards the Conv1D modules
    are back, carrying what was cut. Yields the number of layers swapped."""
    swapped = []
    for name, child in list(module.named_modules()):
        if is_conv1d(child):
            parent_name, _, attribute = name.rpartition(".")
            parent = module.get_submodule(parent_name)
            linear = _as_linear(child)
            swapped.append((parent, attribute, child, linear, linear.weight))
            setattr(parent, attribute, linear)
    try:
        yield len(swapped)
    finally:
        for parent, attribute, layer, linear, original in swapped:
            setattr(parent, attribute, _write_back(layer, linear, original))
