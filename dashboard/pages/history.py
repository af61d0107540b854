"""History: every saved run, the accuracy/latency Pareto front, a side-by-side diff, reports and plan exports."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import run_history, run_tables, session, state, sweeps

OPEN_RUN = "prunelab.history.open"  # the run shown in detail (set by a chart click or the table)
FORMATS = [("torch-pruning", "Torch-Pruning"), ("nni", "NNI config_list"), ("sparseml", "SparseML recipe")]
MIME = {".json": "application/json", ".py": "text/x-python", ".yaml": "text/yaml"}


def save_ui() -> None:
    with st.expander("Save the current plan as a run", icon=":material/save:"):
        label = st.text_input("Label", key="w.history.label", persist_state="session", max_chars=80)
        notes = st.text_area("Notes", key="w.history.notes", persist_state="session", max_chars=2000)
        if st.button("Save run", icon=":material/save:", key="history-save"):
            with session.guard("saving the run"), st.spinner("Measuring the plan…"):
                run_id = run_history.save_run(label, notes)
                st.session_state[OPEN_RUN] = run_id
                st.success(f"Saved run {run_id}.")


def grid_ui() -> None:
    """Measure a grid of plans on the current model, each kept as a run (fills the Pareto chart)."""
    job = sweeps.grid_job()
    with st.expander("Measure a grid of plans", icon=":material/grid_on:", expanded=job is not None):
        if job is not None and job.running:
            grid_progress()
            return
        grid = st.text_input("Grid", value=sweeps.DEFAULT_GRID, key="w.history.grid", persist_state="session",
                             help="KEY=V1,V2 parts separated by ';' (sparsity, criterion, granularity, scope, "
                                  "round_to); every combination is one plan")
        workers = st.number_input("Worker processes", min_value=1, max_value=sweeps.cores(), value=1, step=1,
                                  key="w.history.workers", persist_state="session")
        if st.button("Measure the grid", icon=":material/play_arrow:", key="history-grid"):
            with session.guard("starting the grid"):
                sweeps.start_grid(grid, workers)
                st.rerun()
        if job is not None and job.error:
            st.error(job.error)
        elif job is not None and job.result is not None:
            summary = job.result
            st.success(f"Measured {summary['measured']} of {summary['plans']} plans in {summary['seconds']:.0f} s; "
                       "each is a run below." + (f" Missing: {', '.join(summary['missing'])}."
                                                 if summary["missing"] else "")
                       + (f" Skipped {len(summary['skipped'])} combinations a plan refuses."
                          if summary["skipped"] else ""))


@st.fragment(run_every=0.5)
def grid_progress() -> None:
    """The running grid's progress bar and Stop button; reruns the page when the grid ends."""
    job = sweeps.grid_job()
    if job is None or not job.running:
        st.rerun(scope="app")
    st.progress(job.fraction, text=f"{job.done}/{job.total or '?'} plans: {job.text}")
    st.button("Stop", icon=":material/stop:", on_click=sweeps.stop_grid, key="history-grid-stop",
              disabled=job.stop.is_set())


def table_ui(rows: list[dict]) -> list[int]:
    """The runs table; returns the ids of the selected rows."""
    frame = pd.DataFrame(rows).set_index("id")
    frame["p50_ms"] = frame["p50_ms"] * 1000  # µs: what these models take
    frame["compressed_bytes"] = frame["compressed_bytes"] / 1024
    number = st.column_config.NumberColumn
    event = st.dataframe(frame, key="history-table", on_select="rerun", selection_mode="multi-row",
                         column_config={"quality": number("accuracy / agreement", format="percent"),
                                        "removed": number("weights removed", format="percent",
                                                          help="share of the prunable weights zero or gone, measured"),
                                        "p50_ms": number("p50 latency (µs)", format="%.1f",
                                                         help="median time of one prediction on ONNX Runtime"),
                                        "compressed_bytes": number("compressed size (KB)", format="%.0f",
                                                                   help="the .onnx file after gzip")})
    return [int(frame.index[row]) for row in event.selection.rows]


def chart_ui(run_ids: list[int]) -> None:
    """The Pareto chart; clicking a point opens that run."""
    event = st.plotly_chart(run_history.runs_pareto_chart(run_ids), key="history-pareto", on_select="rerun",
                            selection_mode="points", width="stretch")
    points = event.selection.points if event else []
    if points and points[0].get("customdata") is not None:
        clicked = points[0]["customdata"]
        st.session_state[OPEN_RUN] = int(clicked[0] if isinstance(clicked, list) else clicked)


def details_ui(run_id: int) -> None:
    details = run_history.run_details(run_id)
    st.subheader(f"Run {run_id} {details['label']}".strip())
    st.caption(f"{details['created']} · {details['model']} · {details['notes']}")
    left, right = st.columns([2, 3])
    left.markdown("**Plan**")
    left.dataframe(run_tables.plan_table(details["plan"]), hide_index=True, key="history-plan")
    left.dataframe(run_tables.layer_table(details["plan"], details.get("layer_sparsity") or {}), hide_index=True,
                   key="history-layers", column_config={"target": "target sparsity", "measured": "measured sparsity"})
    right.markdown("**Measured on ONNX Runtime**")
    right.dataframe(run_tables.metrics_table(details["metrics"].get("pruned", {}),
                                             details["metrics"].get("baseline", {})),
                    hide_index=True, key="history-metrics")
    load, delete = st.columns(2)
    if load.button("Load this plan into the sliders", icon=":material/tune:", key="history-load"):
        with session.guard("loading the plan"):
            warning = run_history.load_run_plan(run_id)
            if warning:
                st.warning(warning)
            st.success("Plan loaded; open Tune to adjust it.")
    if delete.button("Delete this run", icon=":material/delete:", key="history-delete"):
        with session.guard("deleting the run"):
            run_history.delete_run(run_id)
            st.session_state.pop(OPEN_RUN, None)
            st.rerun()
    export_ui(run_id)


def export_ui(run_id: int) -> None:
    st.caption("This run's plan for other pruning tools:")
    for column, (format, title) in zip(st.columns(len(FORMATS)), FORMATS):
        with column, session.guard(title):
            for suffix, text in run_history.run_plan_export(run_id, format).items():
                column.download_button(f"{title} ({suffix})", text, file_name=f"run-{run_id}-plan{suffix}",
                                       mime=MIME[suffix], key=f"history-export-{format}{suffix}")


def compare_ui(ids: list[int], selected: list[int]) -> None:
    st.subheader("Compare two runs")
    chosen = (selected + [run_id for run_id in ids if run_id not in selected])[:2]
    for key, run_id in (("w.history.a", chosen[0]), ("w.history.b", chosen[-1])):
        if st.session_state.get(key) not in ids:  # first visit, or that run was deleted
            st.session_state[key] = run_id
    first_column, second_column = st.columns(2)
    first = first_column.selectbox("Run A", ids, key="w.history.a", persist_state="session")
    second = second_column.selectbox("Run B", ids, key="w.history.b", persist_state="session")
    diff = run_history.compare_runs(first, second)
    layer_rows, metric_rows = run_tables.difference_tables(diff)
    layers, metrics = st.columns(2)
    layers.dataframe(layer_rows, hide_index=True, key="history-diff-layers")
    metrics.dataframe(metric_rows, hide_index=True, key="history-diff-metrics")


def report_ui(run_ids: list[int]) -> None:
    st.download_button(f"HTML report of {len(run_ids)} run(s)", data=lambda: run_history.runs_report_html(run_ids),
                       file_name="prunelab-report.html", mime="text/html", icon=":material/summarize:",
                       key="history-report", help="one self-contained file; opens without a network")


st.title("History")
st.caption("Saved runs of every model: pick the best trade-off, compare two, hand on a report or the plan.")
save_ui()
grid_ui()
with session.guard("reading the run history"):
    state.seed("w.history.only", True)
    only_this = st.toggle("Only this model's runs", key="w.history.only", persist_state="session")
    rows = run_history.runs(this_model_only=only_this)
    if not rows:
        st.info("No runs yet. Save one above, or run `prunelab prune MODEL --plan PLAN --out DIR`.")
    else:
        selected = table_ui(rows)
        ids = [row["id"] for row in rows]
        chosen = selected or ids
        report_ui(chosen)
        chart_ui(chosen)
        if st.session_state.get(OPEN_RUN) in ids:
            details_ui(st.session_state[OPEN_RUN])
        else:
            st.caption("Click a point (or save a run) to open it.")
        if len(ids) >= 2:
            compare_ui(ids, selected)
