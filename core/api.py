"""The Python API: everything the CLI and the dashboard can do, as plain functions."""
from __future__ import annotations

from core.search.allocate import allocate
from core.prune.engine import PruneResult, apply_plan
from core.errors import PrunelabError
from core.deploy.evaluate import LiveEvaluator, evaluate
from core.deploy.export import export_onnx
from core.inspect import inspect_model, weight_histogram
from core.prune.plan import CRITERIA, GRANULARITIES, SCOPES, Plan, granularity_kind
from core.history.plan_formats import export_plan, plan_layers
from core.history.report import build_report, write_report
from core.history.compare import compare_runs, pareto_front
from core.history.runs import delete_run, get_run, list_runs, record_run
from core.search.sensitivity import SWEPT_GRANULARITIES, sensitivity
from core.sources import ModelHandle, load_model


def inspect(handle: ModelHandle) -> dict:
    """Per-layer table and totals for ``handle`` (see core.inspect.inspect_model)."""
    handle.require("inspect")
    if handle.module is None:
        from core.deploy.onnx_source import inspect_onnx  # ONNX sources have no module structure
        return inspect_onnx(handle)
    return inspect_model(handle.module, handle.example_input())


def coupled_groups(module, example_input) -> list[dict]:
    """Channel dependency groups of ``module`` (see core.prune.channel.coupled_groups)."""
    from core.prune.channel import coupled_groups as groups
    return groups(module, example_input)


def histogram(handle: ModelHandle, layer: str, bins: int = 60, absolute: bool = True) -> dict:
    """Histogram data of one layer's weights, for the dashboard."""
    return weight_histogram(handle.module, layer, bins=bins, absolute=absolute)


def channel_importance(handle: ModelHandle, layer: str, criterion: str = "l1", sparsity: float = 0.0,
                       seed: int = 0) -> dict:
    """Per-output-channel importance of one layer and the lowest ``round(sparsity * n)`` channels.

    Returns ``{"scores": [...], "removed": [bool, ...]}``: what the layer alone would lose at
    ``sparsity`` (coupled layers are ranked together by the engine, so its choice can differ).
    Raises PrunelabError for an unknown layer, or a criterion that needs evidence this view lacks.
    """
    from core.prune import criteria
    from core.inspect import layer_by_name

    handle.require("channel")
    target = layer_by_name(handle.module, layer)
    if criterion == "bn_scale":
        raise PrunelabError("the per-channel view does not show bn_scale; pick l1, l2, fpgm or a data criterion")
    evidence = criteria.gather_evidence(handle.module, [target], criterion, handle.data, seed)[layer]
    scores = criteria.criterion(criterion).channel_score(target.weight.detach(), evidence).float()
    count = int(round(sparsity * scores.numel()))
    removed = [False] * scores.numel()
    for index in scores.argsort()[:count].tolist():
        removed[index] = True
    return {"scores": scores.tolist(), "removed": removed}


__all__ = ["ModelHandle", "load_model", "inspect", "histogram", "Plan", "GRANULARITIES", "CRITERIA", "SCOPES",
           "granularity_kind", "SWEPT_GRANULARITIES", "PruneResult", "apply_plan",
           "coupled_groups", "channel_importance", "evaluate", "LiveEvaluator", "export_onnx",
           "sensitivity", "allocate"]
__all__ += ["record_run", "list_runs", "get_run", "delete_run", "compare_runs", "pareto_front",
            "build_report", "write_report", "export_plan", "plan_layers"]

# Recovery: fine-tuning with masks held, gradual, iterative and lottery-ticket pruning (core/train/recovery.py).
from core.train.recovery import Recovery, finetune, gradual_prune, iterative_prune, lottery_ticket  # noqa: E402
from core.train.schedule import PolynomialDecay, polynomial_decay  # noqa: E402

__all__ += ["Recovery", "finetune", "gradual_prune", "iterative_prune", "lottery_ticket", "PolynomialDecay",
            "polynomial_decay"]
