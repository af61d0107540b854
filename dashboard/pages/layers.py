"""Layers: every prunable layer, and what the current plan is about to cut from each."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, formatting, session, state


def table_ui(rows: list[dict]) -> None:
    """One row per prunable layer with its target under the current plan."""
    frame = pd.DataFrame([{
        "layer": row["name"], "kind": row["kind"],
        "unit": f"{row['heads']} heads" if row.get("unit") == "head" else "channels",
        "shape": " × ".join(str(size) for size in row["shape"]),
        "parameters": row["params"], "MACs": row["macs"], "target": 100 * session.target_of_layer(row["name"]),
        "|w| median": row["stats"]["abs_p50"], "|w| p99": row["stats"]["abs_p99"],
    } for row in rows])
    st.dataframe(frame, hide_index=True, column_config={
        "target": st.column_config.ProgressColumn("target", format="%.0f%%", min_value=0, max_value=100),
        "MACs": st.column_config.NumberColumn(format="compact"),
        "parameters": st.column_config.NumberColumn(format="compact"),
        "|w| median": st.column_config.NumberColumn(format="%.4f"),
        "|w| p99": st.column_config.NumberColumn(format="%.4f")})


def blocks_ui(blocks: list[dict]) -> None:
    """Whole blocks a plan can remove (the Tune page's block switches), and the residual ones it cannot."""
    if not blocks:
        return
    st.subheader("Removable blocks")
    st.caption("Blocks whose input and output a skip connection joins: removing one leaves its skip path. "
               "Influence is 1 - cosine between a block's input and output on calibration data; low goes first.")
    st.dataframe(pd.DataFrame([{
        "block": block["name"], "kind": block["kind"], "removable": "yes" if block["removable"] else "no",
        "layers": len(block["layers"]), "parameters": block["params"], "MACs": block["macs"],
        "influence": block["influence"], "why not": block["reason"]} for block in blocks]),
        hide_index=True, column_config={"MACs": st.column_config.NumberColumn(format="compact"),
                                        "parameters": st.column_config.NumberColumn(format="compact"),
                                        "influence": st.column_config.NumberColumn(format="%.4f")})


def layer_ui(names: list[str]) -> str:
    """The layer to look at; remembered across page switches."""
    state.seed("w.layers.layer", st.session_state.get(state.LAYER, names[0]))
    if st.session_state["w.layers.layer"] not in names:
        st.session_state["w.layers.layer"] = names[0]
    return st.selectbox("Layer", names, key="w.layers.layer", persist_state="session",
                        on_change=lambda: st.session_state.update({state.LAYER: st.session_state["w.layers.layer"]}))


def weights_view(layer: str) -> None:
    sparsity = session.cut_share(layer)
    histogram = session.histogram(layer)
    cut = session.threshold(layer, sparsity) if sparsity > 0 else None
    st.plotly_chart(charts.weight_histogram(histogram, cut, layer), key="layers-histogram",
                    config={"displayModeBar": False})
    if state.plan().criterion not in ("l1", "l2") and sparsity > 0:
        st.caption(f"'{state.plan().criterion}' does not rank by |w| alone: the line marks the same share "
                   f"of weights ({formatting.percent(sparsity)}), not the exact ones it removes.")


def channels_view(layer: str) -> None:
    importance = session.channel_importance(layer)
    st.plotly_chart(charts.channel_importance(importance["scores"], importance["removed"], layer),
                    key="layers-channels", config={"displayModeBar": False})
    coupled = [group for group in session.groups() if layer in group["members"]]
    if coupled and len(coupled[0]["members"]) > 1:
        st.markdown(f"**Coupled with:** {', '.join(name for name in coupled[0]['members'] if name != layer)}. "
                    f"Removing a channel here removes it from all of them (residual, concat or attention).")


def groups_ui() -> None:
    groups = session.groups()
    if groups:
        st.subheader("Coupled groups")
        st.dataframe(pd.DataFrame([{"leader": group["leader"], "channels": group["channels"],
                                    "members": ", ".join(group["members"])} for group in groups]),
                     hide_index=True)


st.title("Layers")
st.caption("Every prunable layer and the weights (or, in channel mode, the channels) the current plan cuts: "
           "red is removed.")
with session.guard("reading the layers"):
    rows = session.layer_table()["layers"]
    table_ui(rows)
    layer = layer_ui([row["name"] for row in rows])
    channel = state.plan().granularity == "channel"
    with session.guard(f"showing {layer}"):
        if channel:
            channels_view(layer)
        else:
            weights_view(layer)
    if channel:
        groups_ui()
    with session.guard("finding removable blocks"):
        blocks_ui(session.block_table())
