"""The front door: everything the CLI, the dashboard and a notebook can do, as plain functions.

Most names are re-exported from the capability that owns them (``__all__`` at the end lists
them by capability); the functions defined here answer one caller-facing question about a
ModelHandle, in plain values (dicts, lists, bytes), so the dashboard never touches torch.
"""
from __future__ import annotations

import copy

import yaml

from core import run_folder
from core.deploy.artifacts import module_bytes, save_pruned
from core.deploy.evaluate import LiveEvaluator, evaluate
from core.deploy.export import export_onnx
from core.deploy.measure import SPEEDUP_FLOOR, torch_outputs
from core.deploy.onnx_source import inspect_onnx
from core.deploy.profile import profile_plan
from core.deploy.profile import summary as profile_summary
from core.deploy.progressive import Cancelled
from core.deploy.quantize import MODES as QUANTIZE_MODES
from core.errors import PrunelabError, error_line
from core.files import home, sha256_file, writable_folder, writable_home, write_atomic
from core.history.compare import compare_runs, pareto_front
from core.history.mlflow_log import log_runs
from core.history.plan_formats import FORMATS as PLAN_FORMATS
from core.history.plan_formats import export_plan, plan_layers
from core.history.report import build_report, layer_time_figure, pareto_figure, write_report
from core.history.runs import RunStore, delete_run, get_run, list_runs, record_run
from core.inspect import final_classifier as classifier_of
from core.inspect import inspect_model, layer_by_name, threshold_of, weight_histogram
from core.kernels import channel_multiple
from core.prune import criteria
from core.prune.blocks import removable_blocks
from core.prune.channel import coupled_groups as module_groups
from core.prune.criteria import CRITERIA
from core.prune.depth import BlockRanking
from core.prune.depth import block_table as depth_blocks
from core.prune.engine import apply_plan
from core.prune.plan import AUTO, GRANULARITIES, MAX_SPARSITY, SCOPES, Plan, granularity_kind, nm_share, parse_nm
from core.prune.resolved import ResolvedPlan, resolve, resolve_names, validate_for
from core.prune.result import PruneResult
from core.search.allocate import allocate, check_request
from core.search.curves import rise_in_points
from core.search.executors import executor_for
from core.search.explore import DEFAULT_GRID, check_grid_size, explore, parse_grid
from core.search.headline import Headline, headline
from core.search.parallel import default_workers
from core.search.sensitivity import DEFAULT_LEVELS, QUICK_LEVELS, SWEPT_GRANULARITIES, parse_levels, sensitivity
from core.search.spend import SPENDS, Spending, spend_budget
from core.search.sweep_points import has_perplexity
from core.sources import ModelHandle, load_model
from core.train.language import next_token_finetune
from core.train.methods import METHODS as RECOVERY_METHODS
from core.train.methods import recover as run_recovery
from core.train.methods import total_epochs
from core.train.phases import Recovery, Training
from core.train.recovery import (
    finetune,
    gradual_prune,
    iterative_prune,
    lottery_ticket,
    steps_per_epoch,
)
from core.train.schedule import END_FRACTION as SCHEDULE_END_FRACTION
from core.train.schedule import POWER as SCHEDULE_POWER
from core.train.schedule import PolynomialDecay, default_schedule, polynomial_decay
from core.zoo.registry import BUILTINS, DEFAULT_MODEL

# ---- models and layers ---------------------------------------------------------------------------


def builtin_models() -> dict[str, str]:
    """Built-in model names and their one-line descriptions, in menu order."""
    return {name: entry.description for name, entry in BUILTINS.items()}


def default_model() -> str:
    return DEFAULT_MODEL


def layer_table(handle: ModelHandle) -> dict:
    """``{"layers": [one row per prunable layer], "totals": {...}}`` for ``handle``.

    The rows of core.inspect.inspect_model (name, kind, shape, weight statistics, MACs); an ONNX
    source has no module, so its rows come from the graph's weights (MACs unknown).
    Raises PrunelabError when the source cannot be inspected.
    """
    handle.require("inspect")
    if handle.module is None:
        return inspect_onnx(handle)
    return inspect_model(handle.module, handle.example_input())


def block_scores(handle: ModelHandle, criterion: str) -> tuple[str, dict[str, float]]:
    """How ``criterion`` ranks ``handle``'s removable blocks ('influence' or 'fisher') and each block's score,
    low removed first: the ranking depth plans and the allocation's depth option read
    (core.prune.depth.BlockRanking). ({}, for a model without removable blocks or an ONNX source.)
    Raises PrunelabError."""
    handle.require("inspect")
    ranking = BlockRanking.for_handle(handle, criterion)
    if handle.module is None:
        return ranking.score, {}
    names = removable_blocks(handle.module, handle.example_input())
    return ranking.score, ranking.scores(handle.module, names) if names else {}


def block_table(handle: ModelHandle) -> list[dict]:
    """The blocks a depth plan can remove and the residual ones it cannot (with the reason), as rows
    (see core.prune.depth.block_table); [] for an ONNX source. Raises PrunelabError."""
    handle.require("inspect")
    if handle.module is None:
        return []
    return depth_blocks(handle.module, handle.example_input(), handle.data)


def final_classifier(handle: ModelHandle) -> str | None:
    """The layer plans leave dense by default (the model's last classifier), or None."""
    return classifier_of(handle.module, handle.example_input()) if handle.module is not None else None


def coupled_groups(model, example_input=None) -> list[dict]:
    """Channel dependency groups of a ModelHandle (or of a module and its example input), as
    ``[{"leader", "members", "channels"}]`` (see core.prune.channel.coupled_groups)."""
    if isinstance(model, ModelHandle):
        return module_groups(model.module, model.example_input())
    return module_groups(model, example_input)


def layer_graph(handle: ModelHandle, max_nodes: int | None = None) -> dict:
    """The prunable layers as a directed graph with coupled groups (see core.model_graph.layer_graph)."""
    from core.model_graph import MAX_NODES
    from core.model_graph import layer_graph as graph

    handle.require("inspect")
    if handle.module is None:
        raise PrunelabError(f"{handle.name}: the layer graph needs the PyTorch model")
    return graph(handle.module, handle.example_input(), MAX_NODES if max_nodes is None else max_nodes)


def histogram(handle: ModelHandle, layer: str, bins: int = 60, absolute: bool = True) -> dict:
    """Histogram data of one layer's weights, for the dashboard."""
    return weight_histogram(handle.module, layer, bins=bins, absolute=absolute)


def channel_importance(handle: ModelHandle, layer: str, criterion: str = "l1", sparsity: float = 0.0,
                       seed: int = 0, round_to: int | str = 1) -> dict:
    """Per-output-channel importance of one layer and the channels ``sparsity`` removes: the lowest
    ``n - kept``, where ``kept`` is rounded to a multiple of ``round_to`` (or ``"auto"``) as the engine rounds it.

    Returns ``{"scores": [...], "removed": [bool, ...]}``: what the layer alone would lose at
    ``sparsity`` (coupled layers are ranked together by the engine, so its choice can differ).
    Raises PrunelabError for an unknown layer, or a criterion that needs evidence this view lacks.
    """
    handle.require("channel")
    target = layer_by_name(handle.module, layer)
    ranking = criteria.criterion(criterion)
    if "batchnorm" in ranking.needs:
        shown = [name for name in criteria.for_granularity("channel") if "batchnorm" not in CRITERIA[name].needs]
        raise PrunelabError(f"the per-channel view does not show {criterion} (it reads the BatchNorm of a coupled "
                            f"group); pick {', '.join(shown)}")
    evidence = criteria.gather_evidence(handle.module, [target], criterion, handle.data, seed)[layer]
    scores = ranking(target.weight.detach(), evidence, per="channel").float()
    rounding = resolve_names(Plan(granularity="channel", round_to=round_to), [layer], None)
    count = scores.numel() - rounding.kept_channels(scores.numel(), sparsity)
    removed = [False] * scores.numel()
    for index in scores.argsort()[:count].tolist():
        removed[index] = True
    return {"scores": scores.tolist(), "removed": removed}


# ---- plans ---------------------------------------------------------------------------------------


def criteria_for(granularity: str) -> list[str]:
    """The criteria that can rank weights at ``granularity`` (some rank channels only)."""
    return criteria.for_granularity(granularity_kind(granularity))


def plan_text(plan: Plan) -> str:
    """``plan`` as the YAML text ``Plan.load`` reads back."""
    return yaml.safe_dump(plan.to_dict(), sort_keys=False)


def check_plan(handle: ModelHandle, plan: Plan) -> None:
    """Raise PrunelabError naming a layer of ``plan`` that ``handle``'s model lacks (ONNX sources: no check)."""
    if handle.module is not None:
        validate_for(plan, handle.module)


def resolve_plan(handle: ModelHandle, plan: Plan) -> ResolvedPlan:
    """``plan`` read against ``handle``'s model: the layers left dense (and why), each layer's target.

    An ONNX source's final classifier is its last weight layer. Raises PrunelabError naming a layer
    of ``plan`` that the model lacks.
    """
    if handle.module is not None:
        return resolve(plan, handle)
    names = [row["name"] for row in inspect_onnx(handle)["layers"]]
    return resolve_names(plan, names, names[-1] if names else None)


def layers_left_dense(handle: ModelHandle, granularity: str) -> dict[str, str]:
    """Layers an N:M ``granularity`` cannot prune (no groups of M along their input), with the reason;
    {} for other granularities and for ONNX sources (whose pruning checks each initializer itself)."""
    if parse_nm(granularity) is None or handle.module is None:
        return {}
    return dict(resolve(Plan(granularity=granularity, ignore=[]), handle).ungroupable)


# ---- measuring and exporting ---------------------------------------------------------------------


def export_file(evaluator: LiveEvaluator, kind: str, plan: Plan | None = None,
                recovered: ModelHandle | None = None) -> bytes:
    """The file a person downloads: the model ``evaluator.measure(plan)`` measured, as ``onnx`` (the very
    bytes measured, INT8 when the evaluator quantizes), ``state_dict`` or ``pt2`` (dynamic batch, as
    ``prunelab prune`` writes). With ``recovered`` (see ``recover``), that model instead of the plan's.
    Raises PrunelabError for an unknown kind or a model torch.export cannot capture.
    """
    artifact = evaluator.artifact(plan, None if recovered is None else recovered.module)
    if kind == "onnx":
        return artifact.model_bytes
    if artifact.module is None:
        raise PrunelabError(f"an ONNX source has no PyTorch weights to save as {kind}")
    return module_bytes(artifact.module, evaluator.handle.example_input(), kind)


# ---- recovery ------------------------------------------------------------------------------------


def schedule_curve(handle: ModelHandle, final_sparsity: float, epochs: int, initial_sparsity: float = 0.0,
                   end_fraction: float = SCHEDULE_END_FRACTION, power: float = SCHEDULE_POWER
                   ) -> tuple[dict, list[dict]]:
    """The gradual-pruning schedule a run of ``epochs`` would use, and its ``[{"epoch", "step", "sparsity"}]``.

    The first value holds PolynomialDecay's arguments (pass them to ``start_recovery``).
    """
    per_epoch = steps_per_epoch(handle)
    schedule = default_schedule(final_sparsity, epochs, per_epoch, initial_sparsity, end_fraction, power)
    total = max(2, epochs * per_epoch)
    return schedule.to_dict(), [{**point, "epoch": point["step"] / per_epoch} for point in schedule.curve(total)]


TRAINING_BATCH = Training.batch_size  # items per optimizer step of every recovery method

def recover(handle: ModelHandle, plan: Plan, method: str, *, epochs: int, lr: float = Training.lr, rounds: int = 3,
            rewind_epoch: int = 0, schedule: dict | None = None, on_epoch=None,
            should_stop=None, on_step=None) -> tuple[dict, ModelHandle]:
    """Train ``handle`` back after pruning by ``plan`` with recovery ``method`` (finetune, gradual, iterative,
    lottery, next_token for causal language models); ``schedule`` holds PolynomialDecay's arguments for
    gradual; ``on_step(step, loss)`` follows the optimizer steps of the whole run. Returns the run's summary
    and the recovered model as a handle (measure it with ``LiveEvaluator.measure_module``). Raises PrunelabError.
    """
    result = run_recovery(handle, plan, method, epochs=epochs, lr=lr, rounds=rounds, rewind_epoch=rewind_epoch,
                          schedule=PolynomialDecay(**schedule) if schedule else None, seed=plan.seed,
                          on_epoch=on_epoch, should_stop=should_stop, on_step=on_step)
    return result.summary(), handle.with_module(result.module)


def recovered_handle(handle: ModelHandle, module) -> ModelHandle:
    """``handle`` holding ``module``, a retrained copy of its model (a Recovery's ``module``)."""
    return handle.with_module(module)


def measure_recovered(evaluator: LiveEvaluator, recovered: ModelHandle, plan: Plan | None = None) -> dict:
    """The report of a recovered model (see ``recover``) against the dense baseline of ``evaluator``'s
    model, measured like a plan (INT8 when the evaluator quantizes)."""
    return evaluator.measure_module(recovered.module, plan)[0]


def recovery_epochs(method: str, epochs: int, rounds: int) -> int:
    """Epochs a recovery run trains in all (lottery: dense, each round, and the random re-init control)."""
    return total_epochs(method, epochs, rounds)


def private_copy(handle: ModelHandle) -> ModelHandle:
    """``handle`` with its own deep copy of the module, for a long job that must not hold the shared one."""
    return handle if handle.module is None else handle.with_module(copy.deepcopy(handle.module))


__all__ = [
    # errors and files
    "PrunelabError", "error_line", "home", "writable_home", "writable_folder", "write_atomic", "sha256_file",
    "run_folder",
    # models and layers
    "ModelHandle", "load_model", "BUILTINS", "DEFAULT_MODEL", "builtin_models", "default_model", "layer_table",
    "histogram", "threshold_of", "final_classifier", "coupled_groups", "block_table", "block_scores", "layer_graph",
    "channel_importance",
    # plans and pruning
    "Plan", "GRANULARITIES", "MAX_SPARSITY", "CRITERIA", "SCOPES", "granularity_kind", "nm_share", "criteria_for",
    "AUTO", "channel_multiple",
    "plan_text", "check_plan",
    "layers_left_dense", "resolve_plan", "ResolvedPlan", "PruneResult", "apply_plan",
    # measuring and exporting
    "evaluate", "LiveEvaluator", "Cancelled", "QUANTIZE_MODES", "export_onnx", "export_file", "save_pruned",
    "torch_outputs",
    "SPEEDUP_FLOOR", "profile_plan", "profile_summary", "layer_time_figure",
    # search
    "sensitivity", "SWEPT_GRANULARITIES", "DEFAULT_LEVELS", "QUICK_LEVELS", "parse_levels", "allocate", "check_request",
    "Headline", "headline",
    "rise_in_points", "has_perplexity", "SPENDS", "Spending", "spend_budget",
    "executor_for", "default_workers", "explore", "parse_grid", "check_grid_size", "DEFAULT_GRID",
    # recovery
    "Recovery", "finetune", "gradual_prune", "iterative_prune", "lottery_ticket", "next_token_finetune", "recover",
    "recovered_handle", "measure_recovered", "run_recovery", "recovery_epochs", "schedule_curve", "private_copy",
    "PolynomialDecay", "RECOVERY_METHODS", "TRAINING_BATCH", "Training",
    "SCHEDULE_END_FRACTION", "SCHEDULE_POWER",
    "polynomial_decay",
    # history
    "RunStore", "record_run", "list_runs", "get_run", "delete_run", "compare_runs", "pareto_front",
    "pareto_figure", "build_report", "write_report", "export_plan", "plan_layers", "PLAN_FORMATS", "log_runs",
]
