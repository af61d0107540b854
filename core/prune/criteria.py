"""Criteria: score functions registered by name. A score never mutates anything.

A criterion turns one layer's weight, plus the evidence it needs (gradients, input-activation
norms, the scale of a following BatchNorm), into scores: one per weight for unstructured and
N:M plans, one per output channel for channel plans. Low scores are pruned first. Selection
(core.prune.unstructured, core.prune.nm, core.prune.channel) and application live elsewhere.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from core.data import Dataset
from core.errors import PrunelabError
from core.inspect import Layer

CALIBRATION_ITEMS = 64
CALIBRATION_BATCH = 16


@dataclass
class Evidence:
    """What a criterion may read about one layer besides its weight."""

    gradient_score: torch.Tensor | None = None  # sum over batches of |w * grad|, shaped like the weight
    input_norm: torch.Tensor | None = None      # L2 norm of each input feature / channel over calibration data
    bn_weight: torch.Tensor | None = None       # gamma of the BatchNorm that follows (channel plans)
    generator: torch.Generator | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Criterion:
    """A named score: ``weight_score(weight, evidence)`` shaped like the weight, ``channel_score`` per output row."""

    name: str
    needs: str | None  # None, "gradients" or "activations"
    weight_score: Callable[[torch.Tensor, Evidence], torch.Tensor] | None
    channel_score: Callable[[torch.Tensor, Evidence], torch.Tensor]


def _rows(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], -1)  # (out_channels, in_channels * kernel elements)


def _random(weight: torch.Tensor, evidence: Evidence) -> torch.Tensor:
    return torch.rand(weight.shape, generator=evidence.generator)


def _require(value, name: str, criterion: str):
    if value is None:
        raise PrunelabError(f"criterion '{criterion}' needs {name}, which were not collected")
    return value


def _input_scale(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """The input norm broadcast to the weight's shape (grouped convolutions index their own group's inputs)."""
    in_per_group = weight.shape[1]
    groups = input_norm.numel() // in_per_group
    per_group = input_norm.reshape(groups, in_per_group)                       # (groups, in_per_group)
    scale = per_group.repeat_interleave(weight.shape[0] // groups, dim=0)      # (out_channels, in_per_group)
    return scale.reshape(*scale.shape, *([1] * (weight.ndim - 2)))


def _activation(weight: torch.Tensor, evidence: Evidence) -> torch.Tensor:
    norm = _require(evidence.input_norm, "input activations", "activation")
    return weight.abs() * _input_scale(weight, norm.to(weight.dtype))


def _taylor(weight: torch.Tensor, evidence: Evidence) -> torch.Tensor:
    return _require(evidence.gradient_score, "gradients", "taylor")


def _fpgm(weight: torch.Tensor, evidence: Evidence) -> torch.Tensor:
    """Filters near the geometric median of the layer's filters are redundant: sum of distances to the others."""
    rows = _rows(weight).double()
    return torch.cdist(rows, rows).sum(dim=1).to(weight.dtype)


def _bn_scale(weight: torch.Tensor, evidence: Evidence) -> torch.Tensor:
    if evidence.bn_weight is None:
        raise PrunelabError("criterion 'bn_scale' needs a BatchNorm after the layer")
    return evidence.bn_weight.abs()


CRITERIA: dict[str, Criterion] = {
    "l1": Criterion("l1", None, lambda w, e: w.abs(), lambda w, e: _rows(w).abs().sum(1)),
    "l2": Criterion("l2", None, lambda w, e: w.abs(), lambda w, e: _rows(w).norm(dim=1)),
    "random": Criterion("random", None, _random, lambda w, e: torch.rand(w.shape[0], generator=e.generator)),
    "taylor": Criterion("taylor", "gradients", _taylor, lambda w, e: _rows(_taylor(w, e)).sum(1)),
    "activation": Criterion("activation", "activations", _activation,
                            lambda w, e: _rows(_activation(w, e)).sum(1)),
    "bn_scale": Criterion("bn_scale", None, None, _bn_scale),
    "fpgm": Criterion("fpgm", None, None, _fpgm),
}


def criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise PrunelabError(f"unknown criterion '{name}' (criteria: {', '.join(CRITERIA)})")
    return CRITERIA[name]


# ---- evidence --------------------------------------------------------------------------------

def _calibration(data: Dataset | None, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A few inputs (and their labels, when the train split has them) for data-driven criteria."""
    if data is None:
        raise PrunelabError(f"criterion '{name}' needs data (pass --data or use a model that has some)")
    inputs = torch.from_numpy(np.ascontiguousarray(data.calibration(CALIBRATION_ITEMS)))
    inputs = inputs if not inputs.is_floating_point() else inputs.float()  # token ids stay integer
    labels = None
    if data.x_train is not None and data.y_train is not None:
        labels = torch.from_numpy(np.ascontiguousarray(data.y_train[:len(inputs)])).long()
    return inputs, labels


def _loss(output: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    if output.ndim == 2 and targets is not None:
        return nn.functional.cross_entropy(output, targets)
    return 0.5 * output.pow(2).sum()


def collect_gradient_scores(module: nn.Module, layers: list[Layer], data: Dataset | None) -> dict[str, torch.Tensor]:
    """Sum over a few calibration batches of |w * dL/dw| per layer (module left unchanged, eval mode).

    Unlabelled data uses the model's own predictions as targets.
    """
    inputs, labels = _calibration(data, "taylor")
    scores = {layer.name: torch.zeros_like(layer.weight) for layer in layers}
    module.eval()
    for start in range(0, len(inputs), CALIBRATION_BATCH):
        batch = inputs[start:start + CALIBRATION_BATCH]
        module.zero_grad(set_to_none=True)
        output = module(batch)
        if labels is not None:
            targets = labels[start:start + CALIBRATION_BATCH]
        else:
            targets = output.detach().argmax(1) if output.ndim == 2 else None
        _loss(output, targets).backward()
        for layer in layers:
            gradient = layer.weight.grad
            if gradient is not None:
                scores[layer.name] += (layer.weight.detach() * gradient).abs()
    module.zero_grad(set_to_none=True)
    return scores


def _square_sums(tensor: torch.Tensor, channel_dim: int) -> torch.Tensor:
    moved = tensor.detach().movedim(channel_dim, -1)
    return moved.reshape(-1, moved.shape[-1]).double().pow(2).sum(0)  # (features,)


def collect_input_norms(module: nn.Module, layers: list[Layer], data: Dataset | None) -> dict[str, torch.Tensor]:
    """L2 norm of each input feature (Linear, attention) or input channel (Conv) over calibration data."""
    inputs, _ = _calibration(data, "activation")
    sums: dict[str, torch.Tensor] = {}

    def hook_for(layer: Layer):
        def hook(child, args, kwargs):
            values = list(args) + [kwargs[key] for key in ("query", "key", "value") if key in kwargs]
            if layer.kind == "attention":
                parts = [_square_sums(values[i], -1) for i in range(3)]
                squares = torch.cat(parts)  # q, k, v inputs stacked for the (3E, E) projection rows
            else:
                squares = _square_sums(values[0], -1 if layer.kind == "linear" else 1)
            sums[layer.name] = sums.get(layer.name, 0) + squares
        return hook

    handles = [layer.module.register_forward_pre_hook(hook_for(layer), with_kwargs=True) for layer in layers]
    try:
        with torch.no_grad():
            for start in range(0, len(inputs), CALIBRATION_BATCH):
                module(inputs[start:start + CALIBRATION_BATCH])
    finally:
        for handle in handles:
            handle.remove()
    norms = {name: total.sqrt().float() for name, total in sums.items()}
    for layer in layers:  # inputs no hook sees (an attention's out_proj is called functionally): magnitude only
        if layer.name not in norms:
            inputs_per_item = layer.weight.shape[1] * getattr(layer.module, "groups", 1)
            norms[layer.name] = torch.ones(inputs_per_item * (3 if layer.kind == "attention" else 1))
    return norms


def gather_evidence(module: nn.Module, layers: list[Layer], name: str, data: Dataset | None,
                    seed: int) -> dict[str, Evidence]:
    """Evidence for every layer that the criterion ``name`` needs."""
    needs = criterion(name).needs
    gradients = collect_gradient_scores(module, layers, data) if needs == "gradients" else {}
    norms = collect_input_norms(module, layers, data) if needs == "activations" else {}
    generator = torch.Generator().manual_seed(seed)
    return {layer.name: Evidence(gradients.get(layer.name), norms.get(layer.name), None, generator)
            for layer in layers}


def weight_scores(layer: Layer, name: str, evidence: Evidence) -> torch.Tensor:
    """One score per weight of ``layer`` (shaped like its weight); low scores are pruned first."""
    score = criterion(name).weight_score
    if score is None:
        raise PrunelabError(f"criterion '{name}' ranks channels only")
    weight = layer.weight.detach()
    if layer.kind == "attention" and evidence.input_norm is not None:
        # (3E, E) projection: each third of the rows reads its own input (query, key, value)
        embed = weight.shape[1]
        norms = evidence.input_norm.reshape(3, embed)
        return torch.cat([weight[i * embed:(i + 1) * embed].abs() * norms[i] for i in range(3)])
    return score(weight, evidence)
