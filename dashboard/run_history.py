"""The run history for the dashboard.

The run store (core.history.runs) is one SQLite file shared by every session and the CLI; each call
opens its own connection, so nothing here is cached. Values out are plain dicts and lists.

Part of the session layer: pages reach these names as ``session.<name>``.
"""
from __future__ import annotations

import streamlit as st

from dashboard.session import PLAN, _lock, measure, model, model_key, plan_object, plan_yaml

__all__ = [
    "compare_runs", "delete_run", "load_run_plan", "run_details", "run_plan_export", "runs",
    "runs_pareto_chart", "runs_report_html", "save_run",
]

def runs(this_model_only: bool = False) -> list[dict]:
    """Recorded runs, newest first: one row per run with the plan and headline metrics."""
    from core.history.runs import list_runs

    chosen = list_runs(model().name if this_model_only else None)
    return [{"id": run.id, "label": run.label, "created": run.created, "model": run.model,
             "granularity": run.plan.get("granularity"), "criterion": run.plan.get("criterion"),
             "scope": run.plan.get("scope"), "sparsity": run.plan.get("sparsity"), "quality": run.quality,
             "p50_ms": run.latency_p50, "compressed_bytes": run.compressed_bytes, "notes": run.notes}
            for run in chosen]


def run_details(run_id: int) -> dict:
    """Everything stored about one run (see core.history.runs.Run.to_dict). Raises PrunelabError."""
    from core.history.runs import get_run

    return get_run(run_id).to_dict()


def runs_pareto_chart(run_ids: list[int]):
    """The report's Pareto figure for these runs (customdata = run id, for click-to-open)."""
    from core.history.report import pareto_figure
    from core.history.runs import get_run

    chosen = [get_run(run_id) for run_id in run_ids]
    return pareto_figure(chosen, chosen[0].metrics.get("baseline") if chosen else None)


def compare_runs(first: int, second: int) -> dict:
    """``{"layers": [...], "metrics": [...], "plan": [...]}`` rows with a, b and delta."""
    from core.history.compare import compare_runs as compare

    return compare(first, second)


def save_run(label: str = "", notes: str = "") -> int:
    """Measure this session's plan (cached) and keep it in the run store with its plan and report."""
    import json

    from core.history.runs import record_run

    report = measure()
    current = plan_object()
    files = {"plan.yaml": plan_yaml(), "report.json": json.dumps(report, indent=2, default=str)}
    return record_run(report, model=model(), plan=current, files=files, label=label, notes=notes).id


def delete_run(run_id: int) -> None:
    from core.history.runs import delete_run as delete

    delete(run_id)


def load_run_plan(run_id: int) -> str | None:
    """Put a run's plan into this session's sliders; returns a warning when it was made on another model.

    Raises PrunelabError when the plan does not fit this session's model.
    """
    from core.history.runs import get_run
    from core.prune.plan import Plan

    run = get_run(run_id)
    values = Plan.from_dict(run.plan).to_dict()
    handle = model()
    if handle.module is not None:
        Plan.from_dict(values).validate_for(handle.module)
    st.session_state[PLAN] = {**values, "layers": dict(values["layers"])}
    plan_widgets = [key for key in st.session_state
                    if str(key).startswith("w.") and not str(key).startswith("w.history.")]
    for key in plan_widgets:
        st.session_state.pop(key, None)  # the plan's widgets reseed from the plan on their next draw
    if run.model != handle.name:
        return f"run {run_id} was made on {run.model}; its plan is now applied to {handle.name}"
    return None


def runs_report_html(run_ids: list[int]) -> bytes:
    """The self-contained HTML report of these runs."""
    from core.history.report import build_report
    from core.history.runs import get_run

    return build_report([get_run(run_id) for run_id in run_ids]).encode()


def run_plan_export(run_id: int, format: str) -> dict[str, str]:
    """A run's plan for Torch-Pruning, NNI or SparseML: file suffix -> text.

    Per-layer targets are resolved on this session's model when the run was made on it.
    """
    from core.history.plan_formats import export_plan, plan_layers
    from core.history.runs import get_run
    from core.prune.plan import Plan

    run = get_run(run_id)
    plan = Plan.from_dict(run.plan)
    handle = model()
    layers = None
    if run.model == handle.name and handle.module is not None:
        with _lock(model_key()):
            layers = plan_layers(plan, handle)
    return export_plan(plan, format, layers, stem=f"run-{run_id}-plan")
