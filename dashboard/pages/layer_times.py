"""Profile: where the time goes, layer by layer, measured by ONNX Runtime's profiler, dense and pruned."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, closer_look, formatting, graph_view, session


def reconciliation(profile: dict, label: str) -> str:
    """'dense: layers 2.08 ms + outside layers 0.02 ms + rest 0.35 ms = one run 2.45 ms (median of 30 plain
    runs); ...' with what the profiler added, which the layer times leave out."""
    layers = sum(layer["ms"] for layer in profile["layers"])
    return (f"**{label}**: layers {formatting.milliseconds(layers)} + outside layers "
            f"{formatting.milliseconds(profile['other_ms'])} + rest "
            f"{formatting.milliseconds(profile['overhead_ms'])} = one run {formatting.milliseconds(profile['p50_ms'])} "
            f"(median of {profile['timed_runs']} runs without the profiler). The {profile['runs']} profiled runs took "
            f"{formatting.milliseconds(profile['profiler_ms'])} more; the {profile['node_cost_us']:.1f} µs the "
            "profiler spends inside each node is left out of the layer times.")


def table_ui(rows: list[dict], dense_p50: float) -> None:
    frame = pd.DataFrame([{
        "layer": row["name"], "ms dense": row["ms_dense"], "ms pruned": row["ms_pruned"],
        "ms saved": row["ms_saved"], "share of run": 100 * row["ms_dense"] / dense_p50 if dense_p50 else 0.0,
        "MACs removed": 100 * (1 - row["macs_pruned"] / row["macs_dense"]) if row["macs_dense"] else None,
        "time per MAC": row["ms_per_mac"]} for row in rows])
    st.dataframe(frame, hide_index=True, column_config={
        "layer": st.column_config.TextColumn(pinned=True),
        "ms dense": st.column_config.NumberColumn(format="%.3f"),
        "ms pruned": st.column_config.NumberColumn(format="%.3f"),
        "ms saved": st.column_config.NumberColumn(format="%.3f"),
        "share of run": st.column_config.ProgressColumn(format="%.1f%%", min_value=0, max_value=100),
        "MACs removed": st.column_config.NumberColumn(format="%.0f%%"),
        "time per MAC": st.column_config.NumberColumn(
            format="%.2fx", help="the pruned layer's time per MAC against the dense layer's: above 1, the cut "
                                 "bought less time than the work it removed (kernels that fall off their "
                                 "blocked layout, memory-bound layers)")})


def other_ui(profile: dict) -> None:
    other = profile["other"]
    if other:
        shown = ", ".join(f"{op} {formatting.milliseconds(ms)}" for op, ms in list(other.items())[:8])
        st.caption(f"Outside layers ({formatting.milliseconds(profile['other_ms'])}): {shown}.")


def graph_ui(rows: list[dict], which: str) -> None:
    graph = graph_view.layer_graph()
    by_layer = {row["name"]: row[f"ms_{which}"] for row in rows}
    times = {node["id"]: sum(by_layer.get(name, 0.0) for name in node["layers"]) for node in graph["nodes"]}
    st.plotly_chart(charts.model_graph(graph, {}, "time", None, times), key="profile-graph",
                    config={"displayModeBar": False})


st.title("Profile")
st.caption("Where one run's time goes: ONNX Runtime's profiler times every node it runs; each is traced back "
           "to the layer it computes. Dense and pruned are profiled in turn, so load falls on both alike.")
pruned = st.toggle("Profile the current plan beside the dense model", value=True, key="w.profile.pruned")
if st.button("Profile", type="primary", icon=":material/timer:"):
    st.session_state["prunelab.profile.asked"] = True
if st.session_state.get("prunelab.profile.asked"):
    with session.guard("profiling"), st.spinner("Profiling on ONNX Runtime…"):
        report = closer_look.profile(pruned)
        dense, measured = report["dense"], report["pruned"]
        st.markdown(reconciliation(dense, "Dense"))
        if measured:
            st.markdown(reconciliation(measured, "Pruned"))
        rows = report["rows"]
        st.plotly_chart(closer_look.layer_time_figure(rows, measured is not None), key="profile-bars",
                        config={"displayModeBar": False})
        other_ui(measured or dense)
        table_ui(rows, dense["p50_ms"])
        which = st.radio("Colour the graph by", ["dense", "pruned", "saved"] if measured else ["dense"],
                         horizontal=True, key="w.profile.colour", format_func=lambda key: f"ms {key}")
        with session.guard("drawing the graph"):
            graph_ui(rows, which)
else:
    st.info("Press Profile to time every layer (a few seconds; longer on big models).", icon=":material/info:")
