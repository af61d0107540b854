"""The Tune page's per-layer views, one at a time: the targets chart, the editable per-layer table (with
measured layer times on demand) and the model graph."""
from __future__ import annotations

import streamlit as st

from dashboard import charts, closer_look, formatting, goals, graph_view, plan_editor, session, state
from dashboard.glossary import TERMS

VIEWS = ("Sparsity per layer", "Per-layer table", "Model graph")


def layers_ui() -> None:
    """One per-layer view at a time (only the chosen one is drawn, which keeps a slider release quick)."""
    report = session.last_report()
    state.seed("w.tune.view", VIEWS[0])
    view = st.segmented_control("Per-layer view", VIEWS, key="w.tune.view", label_visibility="collapsed",
                                required=True)
    if view == "Per-layer table":
        frame = plan_editor.table_rows(report, goals.matching_sweep(), closer_look.known_profile())
        st.caption("Click a column title to sort; type a target to set it exactly. "
                   "Sensitivity: the sweep's accuracy drop for that layer alone at its target.")
        profile_button()
        st.data_editor(frame, key=plan_editor.TABLE_KEY, hide_index=True, num_rows="fixed", width="stretch",
                       disabled=[column for column in frame.columns if column != "target (%)"],
                       on_change=plan_editor.apply_edits, args=(frame,), column_config=_table_columns())
    elif view == "Model graph":
        graph_view.graph_ui()
    else:
        names = session.layer_names()
        measured = (report or {}).get("layer_sparsity") or {}
        figure = charts.layer_targets(list(formatting.short_names(names).values()),
                                      [session.target_of_layer(name) for name in names],
                                      [measured.get(name, 0.0) for name in names] if measured else None)
        st.plotly_chart(figure, key="tune-targets", config={"displayModeBar": False})


def profile_button() -> None:
    """Profile the plan on demand (never on a slider move): the table gains each layer's measured ms."""
    if closer_look.known_profile() is not None:
        return
    if st.button("Time every layer", icon=":material/timer:", key="tune-profile",
                 help="profile the dense model and this plan in ONNX Runtime; the table gains ms dense, ms pruned, "
                      "ms saved and ms per MAC (a few seconds; longer on big models)"):
        with session.guard("profiling"), st.spinner("Profiling on ONNX Runtime…"):
            closer_look.profile(True)
        st.rerun()


def _table_columns() -> dict:
    number = st.column_config.NumberColumn
    return {"layer": st.column_config.TextColumn("layer", width="medium", pinned=True,
                                                 help="a long name is cut: double-click its cell to read it whole"),
            "parameters": number("parameters", format="compact", help="weights in the layer"),
            "MACs": number("MACs", format="compact", help=TERMS["macs"]),
            "sensitivity": st.column_config.TextColumn("sensitivity", help=TERMS["sensitivity"]),
            "drop (pts)": number("drop (pts)", format="%.2f", help=TERMS["pts"]),
            "target (%)": number("target (%)", min_value=0.0, max_value=100 * session.MAX_SPARSITY, step=0.5,
                                 format="%.1f", help="the sparsity asked for; type an exact value"),
            "measured (%)": number("measured (%)", format="%.1f", help="the sparsity the pruned model really has"),
            "ms dense": number("ms dense", format="%.3f", help="the layer's measured time in the dense model"),
            "ms pruned": number("ms pruned", format="%.3f", help="the layer's measured time in the pruned model"),
            "ms saved": number("ms saved", format="%.3f", help="ms dense minus ms pruned"),
            "ms per MAC": number("ms per MAC", format="%.2fx", help=TERMS["ms_per_mac"])}
