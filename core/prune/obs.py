"""Structured optimal brain surgeon: choose whole input units of a layer to remove and compensate the rest.

For a layer computing ``W x`` (rows = outputs, columns = inputs) and calibration inputs X, the
error of removing the input columns G and updating the rest optimally is, with
``H^-1 = (X^T X + dampening * mean(diag) * I)^-1``, ``cost(G) = tr(W[:,G] (H^-1[G,G])^-1 W[:,G]^T)``,
and the update is ``W -= W[:,G] (H^-1[G,G])^-1 H^-1[G,:]``. Units (one neuron's column, a head's
columns) are removed greedily, cheapest first, and ``H^-1`` shrinks by the Schur complement after
each step (ZipLM: Kurtic et al. 2023; the math of OBC and SparseGPT applied to whole columns). A
criterion's scores may weight the cost, so a unit goes when it is both cheap to compensate here
and unimportant to the model's output. X is centred: the mean input's share of the output goes
into the bias exactly (FLAP's compensation), the rest is what the update fits.

The units of each layer are chosen in one forward pass, each layer in a hook just before it
runs, on the inputs the layers before it give once their own units are gone (``choose``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.hooks import forward_once
from core.prune.reconstruct import token_rows
from core.prune.sparsegpt import one_thread

DAMPENING = 0.3  # minilm, plain 50% channel plan: cosine 0.826 at 0.1 and 0.3, 0.816 at 1, 0.799 at 3
STEPS = 32       # greedy steps per layer at most: each removes count / STEPS units at once


def inverse_hessian(rows: torch.Tensor, dampening: float = DAMPENING) -> torch.Tensor:
    """``(X^T X + dampening * mean(diag) * I)^-1`` of input rows X (rows, inputs), in X's dtype.

    The dampening bounds the condition number (by 1 + inputs / dampening), so float32 keeps
    the choices of float64 (minilm's plain 50% channel plan: the same cosine) at a third of the time.
    """
    hessian = rows.T @ rows                                                    # (inputs, inputs)
    hessian.diagonal().add_(dampening * float(hessian.diagonal().mean().clamp_min(1e-12)))
    return torch.linalg.inv(hessian)  # cholesky_inverse is several times slower here


def costs(weight: torch.Tensor, inverse: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """cost(G) of every unit (see module doc); ``units`` (units, columns per unit) of column indices."""
    if units.shape[1] == 1:  # one column each: ||W[:, j]||^2 / H^-1[j, j]
        columns = units[:, 0]
        return weight[:, columns].pow(2).sum(0) / inverse.diagonal()[columns]
    blocks = inverse[units.unsqueeze(2), units.unsqueeze(1)]                   # (units, size, size)
    parts = weight[:, units].permute(1, 2, 0)                                  # (units, size, outputs)
    return (parts * torch.linalg.solve(blocks, parts)).sum((1, 2))


def remove_units(weight: torch.Tensor, inverse: torch.Tensor, units: torch.Tensor, count: int,
                 weighting: torch.Tensor | None = None, steps: int = STEPS) -> tuple[list[int], torch.Tensor]:
    """Remove ``count`` units greedily; returns (units in removal order, the compensated weight in
    ``inverse``'s dtype).

    weight: (outputs, inputs); inverse: inverse_hessian of the layer's inputs; units: (units, size)
    column indices. weighting: one positive factor per unit multiplying its cost when choosing, or
    None. Each of at most ``steps`` steps removes the cheapest units together. The removed columns of
    the returned weight are zero.
    """
    weight, inverse = weight.to(inverse.dtype).clone(), inverse.clone()
    remaining = torch.ones(len(units), dtype=torch.bool)
    removed: list[int] = []
    per_step = max(1, -(-count // max(1, steps)))
    while len(removed) < count:
        alive = remaining.nonzero().squeeze(1)
        found = costs(weight, inverse, units[alive])
        if weighting is not None:
            found = found * weighting[alive].to(found.dtype)
        taken = alive[torch.argsort(found, stable=True)[:min(per_step, count - len(removed))]]
        columns = units[taken].reshape(-1)
        rows = inverse[columns]                                                # (taken columns, inputs)
        solved = torch.linalg.solve(rows[:, columns], rows)
        weight.addmm_(weight[:, columns], solved, alpha=-1)   # in place: ``-=`` of a product allocated
        inverse.addmm_(rows.T, solved, alpha=-1)              # a temporary each step, 12x slower here
        weight[:, columns] = 0.0
        remaining[taken] = False
        removed += taken.tolist()
    return removed, weight


@dataclass
class Choice:
    """One Linear layer whose input units are chosen: the unit group's leader (its key in the plan's
    scores), the layer's name, the columns of each unit (units, size), how many go, and the
    weighting of each unit's cost (a criterion's scores, or None)."""

    leader: str
    layer: str
    columns: torch.Tensor
    count: int
    weighting: torch.Tensor | None = None


def _surgery(layer: nn.Linear, rows: torch.Tensor, choice: Choice, dampening: float) -> list[int]:
    """Remove ``choice``'s units from ``layer`` in place (columns zeroed, the rest compensated, the
    mean folded into the bias when it has one); the units in removal order."""
    rows = rows.float()
    weight = layer.weight.detach().double()
    mean = rows.mean(0) if layer.bias is not None else None
    inverse = inverse_hessian(rows - mean if mean is not None else rows, dampening)
    with one_thread():  # the greedy steps' small products slow down many times on contended cores
        removed, updated = remove_units(weight, inverse, choice.columns, choice.count, choice.weighting)
    updated, mean = updated.double(), None if mean is None else mean.double()
    with torch.no_grad():
        if mean is not None:
            layer.bias.add_(((weight - updated) @ mean).to(layer.bias.dtype))
        layer.weight.copy_(updated.to(layer.weight.dtype))
    return removed


def choose(module: nn.Module, choices: list[Choice], inputs: torch.Tensor, positions: torch.Tensor | None,
           dampening: float | None = None) -> dict[str, list[int]]:
    """Run ``module`` once on ``inputs`` (one batch); each layer of ``choices`` loses its units just
    before it runs (``_surgery``), so later layers read what the pruned layers give. positions: which
    token positions are real (items, tokens), or None. Returns {leader: units in removal order}; a
    layer the pass does not reach is missing. dampening: DAMPENING unless given."""
    chosen: dict[str, list[int]] = {}
    dampening = DAMPENING if dampening is None else dampening

    def hook_for(choice: Choice):
        def hook(layer, args):
            if choice.leader not in chosen:  # a layer called twice per pass: its first call
                chosen[choice.leader] = _surgery(layer, token_rows(args[0].detach(), positions), choice, dampening)
        return hook

    handles = [module.get_submodule(choice.layer).register_forward_pre_hook(hook_for(choice)) for choice in choices]
    forward_once(module, inputs, handles)
    return chosen
