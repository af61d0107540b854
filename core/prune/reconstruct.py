"""Reconstruction after structured pruning: refit the layers that read removed channels or heads.

When channels, neurons or heads are removed, the layer that read them (the consumer: the next
Conv or Linear, an attention's output projection) sees fewer inputs. Its weights are refit by
ridge-regularised least squares so that, on calibration inputs, it reproduces what the dense
model's layer produced: ``min ||X W^T + b - Y||^2 + ridge * mean(diag(X^T X)) * ||W - W_pruned||^2``, with X
the pruned model's own inputs to the layer and Y the dense layer's outputs (its kept output
channels). Consumers are refit in one forward pass over all calibration items, each in a hook
just before it runs, so each reads inputs that already pass through the refit layers before it
and errors do not pile up. The lost mean of the removed
inputs goes into the bias (FLAP's compensation) as part of the same solve; a layer without a
bias gets none (a BatchNorm usually follows, and its statistics are re-estimated afterwards).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.hooks import forward_once

RIDGE = 1.0           # relative ridge: times the mean diagonal of X^T X (pulls towards the pruned weights)
MAX_INPUTS = 8192     # a consumer with more inputs (times kernel elements) than this is not refit
MAX_ROWS = 8_192      # rows (items x positions) used per consumer; beyond, positions are subsampled
SUPPORTED = (nn.Linear, nn.Conv2d)
MIN_ROWS_PER_INPUT = 2  # fewer calibration rows than this per input overfit (minilm's FFN: 806 rows, 768 inputs)


@dataclass
class Target:
    """One consumer to refit: its name and which of the dense layer's output channels it kept."""

    name: str
    kept_outputs: torch.Tensor | None   # indices into the dense output channels; None: all kept


def refittable(layer: nn.Module) -> bool:
    """Whether ``layer`` is a type reconstruction refits (Linear, ungrouped Conv2d)."""
    return isinstance(layer, SUPPORTED) and getattr(layer, "groups", 1) == 1


def _rows(layer: nn.Module, value: torch.Tensor) -> torch.Tensor:
    """The layer's input as regression rows: (positions, inputs), im2col for a convolution."""
    if isinstance(layer, nn.Linear):
        return value.reshape(-1, value.shape[-1])
    patches = nn.functional.unfold(value, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])               # (items * positions, C * kh * kw)


def _outputs(layer: nn.Module, value: torch.Tensor) -> torch.Tensor:
    """The layer's output as rows: (positions, output channels)."""
    if isinstance(layer, nn.Linear):
        return value.reshape(-1, value.shape[-1])
    return value.movedim(1, -1).reshape(-1, value.shape[1])                   # (items * positions, out channels)


def _row_weights(value: torch.Tensor, positions: torch.Tensor | None, layer: nn.Module) -> torch.Tensor | None:
    """Which rows count: real tokens only when ``positions`` (items, tokens) matches a Linear's input."""
    if positions is None or not isinstance(layer, nn.Linear) or value.ndim != 3:
        return None
    if tuple(value.shape[:2]) != tuple(positions.shape):
        return None
    return positions.reshape(-1)


def dense_outputs(module: nn.Module, names: list[str], inputs: torch.Tensor,
                  positions: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The dense model's output rows of every named layer on ``inputs`` (one batch, one pass; real tokens
    only), in the order the forward pass reaches the layers (a layer called twice per pass: its first call)."""
    found: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        layer = module.get_submodule(name)

        def hook(child, args, output, name=name, layer=layer):
            if name not in found:
                weights = _row_weights(output, positions, layer)
                rows = _outputs(layer, output.detach())
                found[name] = rows if weights is None else rows[weights]
        handles.append(layer.register_forward_hook(hook))
    forward_once(module, inputs, handles)
    return found


def solve(inputs: torch.Tensor, targets: torch.Tensor, prior: torch.Tensor, bias: bool,
          ridge: float | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ridge least squares pulled towards the layer's own weights: (weight (outputs, inputs), bias or None)
    minimising ``||X W^T + b - Y||^2 + penalty * ||W - prior||^2``.

    The penalty is ``ridge`` (default RIDGE) times the mean diagonal of X^T X; a large ridge keeps
    the pruned weights as they are (and still refits the bias); the bias is not penalised.
    """
    x, y, prior = inputs.float(), targets.float(), prior.double()
    if bias:
        mean_x, mean_y = x.mean(0), y.mean(0)
        x, y = x - mean_x, y - mean_y
    gram = (x.T @ x).double()                                                   # (inputs, inputs); float32 products
    projected = (x.T @ y).double()
    mean_x, mean_y = (mean_x.double(), mean_y.double()) if bias else (None, None)
    penalty = (RIDGE if ridge is None else ridge) * gram.diagonal().mean().clamp_min(1e-12)
    gram.diagonal().add_(penalty)
    weight = torch.linalg.solve(gram, projected + penalty * prior.T).T          # (outputs, inputs)
    return weight, (mean_y - weight @ mean_x) if bias else None


def refit_layer(layer: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, ridge: float | None = None) -> float:
    """Replace ``layer``'s weight (and bias) by the ridge solution; returns the relative error reduction
    on the calibration rows (1 - error after / error before). A layer the solve would not improve stays."""
    weight = layer.weight.detach()
    flat = weight.reshape(weight.shape[0], -1)                                  # (out, in * kernel elements)
    before_bias = layer.bias.detach() if layer.bias is not None else 0
    before = ((inputs @ flat.T + before_bias - targets).pow(2).sum()).item()
    new_weight, new_bias = solve(inputs, targets, flat, layer.bias is not None, ridge)
    after_bias = new_bias if new_bias is not None else 0
    after = ((inputs.double() @ new_weight.T + after_bias - targets.double()).pow(2).sum()).item()
    if after >= before:
        return 0.0
    with torch.no_grad():
        layer.weight.copy_(new_weight.reshape(weight.shape).to(weight.dtype))
        if new_bias is not None:
            layer.bias.copy_(new_bias.to(layer.bias.dtype))
    return 1.0 - after / max(before, 1e-30)


def _leading_items(layer: nn.Module, value: torch.Tensor, rows: int) -> torch.Tensor:
    """A convolution's input cut to the first items that give MAX_ROWS rows (im2col of every item is slow)."""
    if isinstance(layer, nn.Linear):
        return value
    per_item = rows // len(value)                                               # output positions per item
    return value[:max(1, -(-MAX_ROWS // max(per_item, 1)))]


def _subsample(rows: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """At most MAX_ROWS rows, evenly spread (convolution positions are many and alike)."""
    if len(rows) <= MAX_ROWS:
        return rows, targets
    pick = torch.linspace(0, len(rows) - 1, MAX_ROWS).long()
    return rows[pick], targets[pick]


def refit(module: nn.Module, targets: list[Target], dense: dict[str, torch.Tensor], inputs: torch.Tensor,
          positions: torch.Tensor | None, ridge: float | None = None) -> dict[str, float]:
    """Refit each target layer of the pruned ``module``, in one forward pass; {name: relative error reduction}.

    Each layer is solved in a hook just before it runs on all of ``inputs`` (one batch), so the
    layers after it already read its refit outputs. dense: the dense layers' output rows
    (dense_outputs) on the same inputs; positions: which token positions are real (or None).
    Layers that cannot be refit are skipped.
    """
    reduced: dict[str, float] = {}

    def hook_for(target: Target):
        def hook(layer, args):
            if target.name in reduced:  # a layer called twice per pass: its first call only
                return
            value = _leading_items(layer, args[0].detach(), len(dense[target.name]))
            weights = _row_weights(value, positions, layer)
            rows = _rows(layer, value)
            rows = rows if weights is None else rows[weights]
            wanted = dense[target.name][:len(rows)]
            if target.kept_outputs is not None:
                wanted = wanted[:, target.kept_outputs]
            enough = len(rows) >= MIN_ROWS_PER_INPUT * rows.shape[1]
            if rows.shape[1] <= MAX_INPUTS and len(rows) == len(wanted) and enough:
                rows, wanted = _subsample(rows, wanted)
                reduced[target.name] = refit_layer(layer, rows, wanted, ridge)
        return hook

    handles = [module.get_submodule(target.name).register_forward_pre_hook(hook_for(target))
               for target in targets if target.name in dense and refittable(module.get_submodule(target.name))]
    forward_once(module, inputs, handles)
    return reduced
