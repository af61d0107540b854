"""The Tune page's model graph: layers as a directed graph, coloured by cut or coupled group, clickable."""
from __future__ import annotations

import streamlit as st

from core import api
from core.errors import PrunelabError
from dashboard import charts, formatting, plan_editor, session, state
from dashboard.glossary import TERMS

SELECTED = "prunelab.graph.selected"  # the node id last clicked in the graph


@st.cache_data(max_entries=16, show_spinner=False)
def _layer_graph(_handle, key: str) -> dict:
    with state.lock(key):
        return api.layer_graph(_handle)


def layer_graph() -> dict:
    """This session's model as a graph of its prunable layers (see core.api.layer_graph). Raises PrunelabError."""
    return _layer_graph(session.model(), session.model_key())


def removed_nodes(graph: dict) -> set[str]:
    """Nodes whose layers all lie inside a block the plan removes whole."""
    inside = tuple(f"{block}." for block in state.dropped())
    return {node["id"] for node in graph["nodes"]
            if inside and all(name.startswith(inside) for name in node["layers"])}


def node_cut(graph: dict) -> dict[str, float]:
    """Share of each node's weights the plan removes (a folded block: weighted by its layers' sizes; a
    removed block: all of them)."""
    layers = {row["name"]: row["params"] for row in session.layer_table()["layers"]}
    shares = dict.fromkeys(removed_nodes(graph), 1.0)
    for node in graph["nodes"]:
        if node["id"] in shares:
            continue
        total = sum(layers.get(name, 0) for name in node["layers"]) or 1
        shares[node["id"]] = sum(layers.get(name, 0) * session.cut_share(name) for name in node["layers"]) / total
    return shares


def _on_target(layer: str) -> None:
    state.set_target(layer, st.session_state["w.graph.target"] / 100)
    plan_editor.forget_widgets()


def selected_ui(node: dict) -> None:
    """What the clicked node is, and an exact target for it (its first layer, or the group it leads)."""
    plan = state.plan()
    layer = node["layers"][0]
    if plan.granularity == "channel":
        layer = next((group["leader"] for group in session.groups() if layer in group["members"]), layer)
    shown = ", ".join(node["layers"][:6]) + ("…" if len(node["layers"]) > 6 else "")
    inside = f" ({len(node['layers'])} layers: {shown})" if len(node["layers"]) > 1 else ""
    st.markdown(f"**{node['id']}**{inside}: {formatting.count(node['params'])} weights, "
                f"{formatting.count(node['macs'])} MACs")
    dense = session.left_dense()
    if layer in dense:
        st.caption(dense[layer].capitalize() + ".")
        return
    st.session_state["w.graph.target"] = round(100 * state.target(layer), 1)
    st.number_input(f"Target sparsity of {layer} (%)", 0.0, 100 * session.MAX_SPARSITY, step=5.0,
                    key="w.graph.target", on_change=_on_target, args=(layer,),
                    help="the same value as the layer's slider" + (f"; {TERMS['coupled']}" if "+" in inside else ""))


def graph_ui() -> None:
    """Draw the graph; a click selects a layer (also shown on the Layers page)."""
    try:
        graph = layer_graph()
    except PrunelabError as error:  # an ONNX file has no module to trace
        st.info(f"No graph for this model: {error}", icon=":material/info:")
        return
    with session.guard("drawing the model graph"):
        colour_by = st.radio("Colour by", ["cut", "group"], horizontal=True, key="w.graph.colour",
                             format_func={"cut": "how much is cut", "group": "coupled group"}.get,
                             help=TERMS["coupled"])
        selected = st.session_state.get(SELECTED)
        figure = charts.model_graph(graph, node_cut(graph), colour_by, selected, removed=removed_nodes(graph))
        event = st.plotly_chart(figure, key="tune-graph", on_select="rerun", selection_mode="points",
                                config={"displayModeBar": False})
        clicked = [point["customdata"] for point in (event.selection.points if event else [])
                   if point.get("customdata")]
        if clicked and clicked[0] != selected:
            selected = st.session_state[SELECTED] = clicked[0]
        st.caption(f"Arrows follow the {graph['traced']} between prunable layers; layers of one colour under "
                   f"'coupled group' lose channels together. Click a node to select it.")
        by_id = {node["id"]: node for node in graph["nodes"]}
        if selected in by_id:
            st.session_state[state.LAYER] = by_id[selected]["layers"][0]
            selected_ui(by_id[selected])
