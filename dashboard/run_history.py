"""The run history for the History page.

The run store is one SQLite file shared by every session and the CLI; each call opens its own
connection, so nothing here is cached. Values out are plain dicts and lists (and one figure).
"""
from __future__ import annotations

import json

from core import api
from dashboard import session, state


def runs(this_model_only: bool = False) -> list[dict]:
    """Recorded runs, newest first: one row per run with the plan and headline metrics.

    ``removed`` is the measured share of the prunable weights zero or gone (any granularity).
    """
    chosen = api.list_runs(session.model().name if this_model_only else None)
    return [{"id": run.id, "label": run.label, "created": run.created, "model": run.model,
             "granularity": run.plan.get("granularity"), "criterion": run.plan.get("criterion"),
             "scope": run.plan.get("scope"), "removed": run.removed, "quality": run.quality,
             "p50_ms": run.latency_p50, "compressed_bytes": run.compressed_bytes, "notes": run.notes}
            for run in chosen]


def run_details(run_id: int) -> dict:
    """Everything stored about one run (see core.history.runs.Run.to_dict). Raises PrunelabError."""
    return api.get_run(run_id).to_dict()


def runs_pareto_chart(run_ids: list[int]):
    """The report's Pareto figure for these runs (customdata = run id, for click-to-open)."""
    chosen = [api.get_run(run_id) for run_id in run_ids]
    return api.pareto_figure(chosen, chosen[0].metrics.get("baseline") if chosen else None)


def compare_runs(first: int, second: int) -> dict:
    """``{"layers": [...], "metrics": [...], "plan": [...]}`` rows with a, b and delta."""
    return api.compare_runs(first, second)


def save_run(label: str = "", notes: str = "") -> int:
    """Measure this session's plan (cached) and keep it in the run store with its plan and report."""
    report = session.measure()
    files = {"plan.yaml": session.plan_yaml(), "report.json": json.dumps(report, indent=2, default=str)}
    return api.record_run(report, model=session.model(), plan=session.plan_object(), files=files, label=label,
                          notes=notes).id


def delete_run(run_id: int) -> None:
    api.delete_run(run_id)


def load_run_plan(run_id: int) -> str | None:
    """Put a run's plan into this session's sliders; returns a warning when it was made on another model.

    Raises PrunelabError when the plan does not fit this session's model.
    """
    run = api.get_run(run_id)
    plan = api.Plan.from_dict(run.plan)
    handle = session.model()
    api.check_plan(handle, plan)
    state.set_plan(plan)
    if run.model != handle.name:
        return f"run {run_id} was made on {run.model}; its plan is now applied to {handle.name}"
    return None


def runs_report_html(run_ids: list[int]) -> bytes:
    """The self-contained HTML report of these runs."""
    return api.build_report([api.get_run(run_id) for run_id in run_ids]).encode()


def run_plan_export(run_id: int, format: str) -> dict[str, str]:
    """A run's plan for Torch-Pruning, NNI or SparseML: file suffix -> text.

    Per-layer targets are resolved on this session's model when the run was made on it.
    """
    run = api.get_run(run_id)
    plan = api.Plan.from_dict(run.plan)
    handle = session.model()
    layers = None
    if run.model == handle.name and handle.can("finetune"):  # a PyTorch module to resolve layers on
        with state.lock(session.model_key()):
            layers = api.plan_layers(plan, handle)
    return api.export_plan(plan, format, layers, stem=f"run-{run_id}-plan")
