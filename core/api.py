"""The front door: everything the CLI, the dashboard and a notebook can do, as plain functions.

Most names are re-exported from the capability that owns them (``__all__`` below lists them by
capability: models, layers, pruning, measuring, search, recovery, history); the functions defined
here combine a capability with a ModelHandle for one caller-facing question.
"""
from __future__ import annotations

from core.deploy.artifacts import save_pruned
from core.deploy.evaluate import LiveEvaluator, evaluate
from core.deploy.export import export_onnx
from core.deploy.onnx_source import inspect_onnx
from core.deploy.quantize import MODES as QUANTIZE_MODES
from core.errors import PrunelabError, error_line
from core.files import home, write_atomic
from core.history.compare import compare_runs, pareto_front
from core.history.mlflow_log import log_runs
from core.history.plan_formats import FORMATS as PLAN_FORMATS
from core.history.plan_formats import export_plan, plan_layers
from core.history.report import build_report, write_report
from core.history.runs import RunStore, delete_run, get_run, list_runs, record_run
from core.inspect import final_classifier, inspect_model, layer_by_name, weight_histogram
from core.prune import criteria
from core.prune.channel import coupled_groups
from core.prune.engine import apply_plan
from core.prune.plan import CRITERIA, GRANULARITIES, SCOPES, Plan, granularity_kind
from core.prune.result import PruneResult
from core.search.allocate import allocate, check_request
from core.search.sensitivity import DEFAULT_LEVELS, SWEPT_GRANULARITIES, parse_levels, sensitivity
from core.sources import ModelHandle, load_model
from core.train.recovered import measure_recovered
from core.train.recovery import Recovery, finetune, gradual_prune, iterative_prune, lottery_ticket
from core.train.schedule import PolynomialDecay, polynomial_decay
from core.zoo.registry import BUILTINS, DEFAULT_MODEL


def layer_table(handle: ModelHandle) -> dict:
    """``{"layers": [one row per prunable layer], "totals": {...}}`` for ``handle``.

    The rows of core.inspect.inspect_model (name, kind, shape, weight statistics, MACs); an
    ONNX source has no module, so its rows come from the graph's weights (MACs unknown).
    Raises PrunelabError when the source cannot be inspected.
    """
    handle.require("inspect")
    if handle.module is None:
        return inspect_onnx(handle)
    return inspect_model(handle.module, handle.example_input())


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


__all__ = [
    # errors and files
    "PrunelabError", "error_line", "home", "write_atomic",
    # models: sources and the built-in demos
    "ModelHandle", "load_model", "BUILTINS", "DEFAULT_MODEL",
    # layers
    "layer_table", "histogram", "final_classifier", "coupled_groups", "channel_importance",
    # pruning
    "Plan", "GRANULARITIES", "CRITERIA", "SCOPES", "granularity_kind", "PruneResult", "apply_plan",
    # measuring and deploying
    "evaluate", "LiveEvaluator", "QUANTIZE_MODES", "export_onnx", "save_pruned",
    # search
    "sensitivity", "SWEPT_GRANULARITIES", "DEFAULT_LEVELS", "parse_levels", "allocate", "check_request",
    # recovery
    "Recovery", "finetune", "gradual_prune", "iterative_prune", "lottery_ticket", "measure_recovered",
    "PolynomialDecay", "polynomial_decay",
    # history
    "RunStore", "record_run", "list_runs", "get_run", "delete_run", "compare_runs", "pareto_front",
    "build_report", "write_report", "export_plan", "plan_layers", "PLAN_FORMATS", "log_runs",
]
