"""Structured OBS (criterion obs): whole input units chosen by the error of rebuilding a layer's output."""
import dataclasses

import torch

from core.prune import obs
from core.prune.engine import apply_plan
from core.prune.plan import Plan


def _inputs(rows: int = 600, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(rows, 6, generator=generator)
    inputs[:, 5] = inputs[:, 0] * 0.8 - inputs[:, 1] * 0.5   # column 5 is rebuilt from columns 0 and 1
    return inputs


def test_costs_are_the_least_squares_error_of_rebuilding_the_output_without_the_unit():
    inputs = _inputs() + 0.3 * torch.randn(600, 6, generator=torch.Generator().manual_seed(3))
    weight = torch.randn(3, 6, generator=torch.Generator().manual_seed(1)).double()
    units = torch.tensor([[0, 1], [2, 3], [4, 5]])
    found = obs.costs(weight, obs.inverse_hessian(inputs.double(), dampening=1e-9), units)
    x = inputs.double()
    for unit, columns in enumerate(units.tolist()):
        kept = [column for column in range(6) if column not in columns]
        solution = torch.linalg.lstsq(x[:, kept], x @ weight.T).solution       # (kept, outputs)
        error = (x[:, kept] @ solution - x @ weight.T).pow(2).sum()
        assert torch.isclose(found[unit], error, rtol=1e-4, atol=1e-6)


def test_a_redundant_unit_goes_first_and_its_removal_is_compensated_exactly():
    inputs = _inputs()
    weight = torch.randn(4, 6, generator=torch.Generator().manual_seed(2)).double()
    units = torch.arange(6).reshape(6, 1)
    order, updated = obs.remove_units(weight, obs.inverse_hessian(inputs.double(), dampening=1e-9), units, 1)
    assert order == [5] and torch.all(updated[:, 5] == 0)
    x = inputs.double()
    assert torch.allclose(x @ updated.T, x @ weight.T, atol=1e-5)
    weighted, _ = obs.remove_units(weight, obs.inverse_hessian(inputs), units, 1,
                                   weighting=torch.tensor([1.0, 1, 1, 1, 1, 1e6]))
    assert weighted != [5]                                                     # the weighting can veto it


def _output_error(handle, result, items: torch.Tensor) -> float:
    with torch.no_grad():
        dense, pruned = handle.module(items), result.module(items)
    dense, pruned = (value[0] if isinstance(value, tuple) else value for value in (dense, pruned))
    return float((pruned - dense).pow(2).mean())


def test_obs_keeps_the_targets_and_rebuilds_outputs_at_least_as_well_as_fisher_and_the_refit(tinylm):
    data = tinylm.data
    few = dataclasses.replace(data, x_train=(data.x_train if data.x_train is not None else data.x_val)[:16])
    items = torch.from_numpy(few.x_train)
    errors = {}
    for criterion in ("fisher", "obs"):
        result = apply_plan(tinylm, Plan(granularity="channel", criterion=criterion, sparsity=0.5), data=few)
        errors[criterion] = _output_error(tinylm, result, items)
        for row in result.kept.values():
            assert row["target"] == 0 or abs(row["kept"] - row["target_kept"]) <= max(1, row["total"] // 8)
        if criterion == "obs":
            assert any("structured OBS" in note for note in result.notes)
    assert errors["obs"] <= errors["fisher"]
