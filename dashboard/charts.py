"""Plotly figures for the dashboard: plain data in, a figure out. No Streamlit, no core here.

Few traces with per-point colours (many traces make plotly.js slow), labelled axes with units.
"""
from __future__ import annotations

import plotly.graph_objects as go

KEPT = "#4c78a8"
REMOVED = "#e45756"
EFFECTIVE = "#f58518"
HEIGHT = 320


def _layout(figure: go.Figure, title: str, x_title: str, y_title: str, height: int = HEIGHT) -> go.Figure:
    figure.update_layout(title={"text": title, "x": 0, "font": {"size": 14}}, height=height,
                         margin={"l": 10, "r": 10, "t": 40, "b": 10}, xaxis_title=x_title, yaxis_title=y_title,
                         legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"})
    return figure


def weight_histogram(histogram: dict, threshold: float | None, layer: str) -> go.Figure:
    """Bars of |w| counts; bins below ``threshold`` (the weights the plan cuts) in red, a line at it."""
    edges, counts = histogram["edges"], histogram["counts"]
    centres = [(low + high) / 2 for low, high in zip(edges[:-1], edges[1:])]
    cut = threshold if threshold is not None else float("-inf")
    colours = [REMOVED if centre < cut else KEPT for centre in centres]
    figure = go.Figure(go.Bar(x=centres, y=counts, marker_color=colours, width=edges[1] - edges[0],
                              hovertemplate="|w| ≈ %{x:.4f}<br>%{y} weights<extra></extra>", showlegend=False))
    if threshold is not None and threshold > edges[0]:
        figure.add_vline(x=threshold, line_color=REMOVED, line_dash="dash",
                         annotation_text=f"threshold {threshold:.4f}", annotation_position="top right")
    return _layout(figure, f"{layer}: weight magnitudes", "|w|", "weights")


def channel_importance(scores: list[float], removed: list[bool], layer: str) -> go.Figure:
    """One bar per output channel, sorted by importance; channels the plan removes in red."""
    order = sorted(range(len(scores)), key=lambda index: scores[index])
    figure = go.Figure(go.Bar(
        x=list(range(len(order))), y=[scores[index] for index in order], customdata=order,
        marker_color=[REMOVED if removed[index] else KEPT for index in order], showlegend=False,
        hovertemplate="channel %{customdata}<br>importance %{y:.4f}<extra></extra>"))
    count = sum(removed)
    return _layout(figure, f"{layer}: channel importance ({count} of {len(scores)} removed, red)",
                   "channels, least important first", "importance")


ROW_PIXELS = 11  # per bar of the sparsity chart: room for every layer's label at an 11 px font


def layer_targets(names: list[str], targets: list[float], effective: list[float] | None = None) -> go.Figure:
    """Horizontal bars of each layer's target sparsity, with the measured sparsity next to it; every bar is
    labelled (the chart grows with the layers: 37 rows on minilm)."""
    figure = go.Figure(go.Bar(y=names, x=[100 * value for value in targets], orientation="h", name="target",
                              marker_color=KEPT, hovertemplate="%{y}: %{x:.0f}%<extra>target</extra>"))
    if effective is not None:
        figure.add_trace(go.Bar(y=names, x=[100 * value for value in effective], orientation="h", name="measured",
                                marker_color=EFFECTIVE, hovertemplate="%{y}: %{x:.1f}%<extra>measured</extra>"))
    figure.update_yaxes(autorange="reversed", tickmode="array", tickvals=names, ticktext=names,
                        tickfont={"size": 11})
    figure.update_xaxes(range=[0, 100])
    height = max(220, 80 + ROW_PIXELS * len(names) * (2 if effective is not None else 1))
    return _layout(figure, "Sparsity per layer", "sparsity (%)", "", height=height)



GROUP_COLOURS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6",
                 "#9d755d", "#bab0ac"]
UNGROUPED = "#9e9e9e"
EDGE = "rgba(136,136,136,0.7)"


def _graph_positions(nodes: list[dict]) -> dict[str, tuple[float, float]]:
    """Data flows top to bottom (y = -depth), as in Netron; nodes of one depth sit side by side around
    x = 0, so every name has the room to its right (a left-to-right flow crowded them at 1280 px)."""
    rows: dict[int, list[str]] = {}
    for node in nodes:
        rows.setdefault(node["depth"], []).append(node["id"])
    return {name: (column - (len(names) - 1) / 2, -depth) for depth, names in rows.items()
            for column, name in enumerate(names)}


def _arrow_heads(edges: list[list[str]], positions: dict) -> go.Scatter:
    """A small arrow head three quarters along each edge, pointing the way the data flows."""
    import math

    xs, ys, angles = [], [], []
    for source, target in edges:
        (x0, y0), (x1, y1) = positions[source], positions[target]
        xs.append(x0 + 0.75 * (x1 - x0))
        ys.append(y0 + 0.75 * (y1 - y0))
        angles.append(90 - math.degrees(math.atan2(y1 - y0, x1 - x0)))
    return go.Scatter(x=xs, y=ys, mode="markers", hoverinfo="skip", showlegend=False,
                      marker={"symbol": "triangle-up", "size": 9, "angle": angles, "color": EDGE})


def model_graph(graph: dict, cut: dict[str, float], colour_by: str = "cut", selected: str | None = None,
                times: dict[str, float] | None = None, removed: set[str] | None = None) -> go.Figure:
    """The layers as a top-to-bottom directed graph; node colour = share cut (or coupled group, or time).

    ``graph`` as core.api.layer_graph returns it; ``cut`` maps a node id to the share of its
    weights the plan removes; with ``colour_by="time"``, ``times`` maps a node id to measured ms; nodes in
    ``removed`` (inside a block the plan removes whole) are drawn as a cross, named "removed".
    Each node's ``customdata`` is its id (click to select).
    """
    nodes, positions = graph["nodes"], _graph_positions(graph["nodes"])
    depths = len({node["depth"] for node in nodes})
    widest = max([1] + [sum(1 for node in nodes if node["depth"] == depth) for depth in {n["depth"] for n in nodes}])
    label_width = max(12, min(48, 66 // widest))  # characters that fit between two nodes of a row at 1280 px
    edge_x, edge_y = [], []
    for source, target in graph["edges"]:
        edge_x += [positions[source][0], positions[target][0], None]
        edge_y += [positions[source][1], positions[target][1], None]
    figure = go.Figure(go.Scatter(x=edge_x, y=edge_y, mode="lines", line={"color": EDGE, "width": 1.5},
                                  hoverinfo="skip", showlegend=False))
    figure.add_trace(_arrow_heads(graph["edges"], positions))
    if colour_by == "group":
        colours = [GROUP_COLOURS[node["group"] % len(GROUP_COLOURS)] if node["group"] >= 0 else UNGROUPED
                   for node in nodes]
        marker = {"color": colours}
    elif colour_by == "time":
        values = [(times or {}).get(node["id"], 0.0) for node in nodes]
        marker = {"color": values, "cmin": 0, "cmax": max(values + [1e-6]), "colorscale": "YlOrRd",
                  "colorbar": {"title": {"text": "ms"}, "thickness": 12}}
    else:
        marker = {"color": [100 * cut.get(node["id"], 0.0) for node in nodes], "cmin": 0, "cmax": 100,
                  "colorscale": "OrRd", "colorbar": {"title": {"text": "cut (%)"}, "thickness": 12}}
    removed = removed or set()
    marker.update(symbol=["x" if node["id"] in removed else "circle" for node in nodes],
                  opacity=[0.55 if node["id"] in removed else 1.0 for node in nodes])
    marker.update(size=[22 if node["id"] == selected else 16 for node in nodes],
                  line={"width": [3 if node["id"] == selected else 1 for node in nodes], "color": "#555"})
    figure.add_trace(go.Scatter(
        x=[positions[node["id"]][0] for node in nodes], y=[positions[node["id"]][1] for node in nodes],
        mode="markers+text", text=[_short_name(node["id"], label_width) + (" (removed)" if node["id"] in removed
                                                                            else "") for node in nodes],
        textposition=["middle left" if positions[node["id"]][0] < 0 else "middle right" for node in nodes],
        textfont={"size": 10}, customdata=[node["id"] for node in nodes], marker=marker, showlegend=False,
        hovertext=[_node_hover(node, cut.get(node["id"], 0.0))
                   + (f"<br>{times.get(node['id'], 0.0):.3f} ms measured" if times is not None else "")
                   for node in nodes], hoverinfo="text"))
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False, scaleanchor=None)
    figure.update_xaxes(range=[-widest / 2 - 0.6, widest / 2 + 0.6])  # room for the outer names
    title = "Layers and how data flows between them" + (" (repeated blocks folded)" if graph["collapsed"] else "")
    figure = _layout(figure, title, "", "", height=min(900, 140 + 40 * depths))
    figure.update_layout(clickmode="event+select", dragmode="pan")
    return figure


def _short_name(name: str, width: int = 36) -> str:
    """A node label that fits beside its node: the whole name when short, else its last dotted parts
    (block numbers kept, so the blocks of a stage stay apart), after an ellipsis."""
    if len(name) <= width:
        return name
    tail = name.split(".")[-1]
    for part in reversed(name.split(".")[:-1]):
        if len(part) + 1 + len(tail) > width - 1:
            break
        tail = f"{part}.{tail}"
    return "…" + tail[-(width - 1):]


def _node_hover(node: dict, cut: float) -> str:
    group = f"coupled group {node['group'] + 1}" if node["group"] >= 0 else "no coupled group"
    inside = f"<br>{len(node['layers'])} layers" if len(node["layers"]) > 1 else ""
    return (f"<b>{node['id']}</b><br>{node['kind']}{inside}<br>{node['params']:,} weights, "
            f"{node['macs']:,} MACs<br>{group}<br>cut {100 * cut:.0f}%")


def sensitivity_heatmap(result: dict, headline) -> go.Figure:
    """Layers x sparsity level, coloured by the damage to ``headline`` (core's Headline: a drop in percentage
    points, or a rise in perplexity) when only that layer is pruned; darker is worse either way.

    The levels are categories ('10%' ... '95%'): one column each, all of equal width, labelled as written.
    """
    names = [layer["name"] for layer in result["layers"]]
    levels = result["levels"]
    damage = [[None] * len(levels) for _ in names]
    for row, layer in enumerate(result["layers"]):
        for point in layer["curve"]:
            damage[row][levels.index(point["sparsity"])] = round(headline.damage(point), 1)
    columns = [f"{100 * level:g}%" for level in levels]
    change = f"{headline.name} {headline.word}"
    unit = " percentage points" if headline.unit == "pts" else ""
    figure = go.Figure(go.Heatmap(
        z=damage, x=columns, y=names, colorscale="Reds", zmin=0, xgap=1, ygap=1,
        text=damage, texttemplate="%{text}",
        colorbar={"title": {"text": change + ("<br>(pts)" if headline.unit == "pts" else "")}},
        hovertemplate=f"%{{y}} pruned to %{{x}}<br>{change} %{{z}}{unit}<extra></extra>"))
    figure.update_xaxes(type="category", categoryorder="array", categoryarray=columns, side="top")
    figure.update_yaxes(type="category", autorange="reversed")
    title = f"{headline.word.capitalize()} in {headline.name}{' (percentage points)' if unit else ''} " \
            "when only one layer is pruned"
    return _layout(figure, title, "sparsity of that layer", "", height=max(HEIGHT, 28 * len(names) + 110))


def block_points(result: dict, headline) -> go.Figure:
    """One point per removable block: its measured latency saving (x) against ``headline`` without it (y),
    with the dense model's figure as a dashed line; the cheapest blocks to remove sit nearest that line on the
    right (above it for a higher-is-better figure, below it for perplexity)."""
    label = headline.name
    blocks = [block for block in result.get("blocks") or [] if block.get("latency_saving_ms") is not None]
    figure = go.Figure(go.Scatter(
        x=[block["latency_saving_ms"] for block in blocks], y=[headline.value(block) for block in blocks],
        mode="markers+text", text=point_labels([block["latency_saving_ms"] for block in blocks],
                                               [headline.value(block) for block in blocks],
                                               [_short_name(block["name"], 24) for block in blocks]),
        textposition="top center",
        customdata=[[block["name"], f"{block['macs']:,}"] for block in blocks], marker={"size": 10},
        hovertemplate=f"without %{{customdata[0]}}<br>{label} %{{y:.4g}}<br>saves %{{x:.3f}} ms "
                      "(p50, batch 1)<br>%{customdata[1]} MACs left<extra></extra>"))
    figure.add_hline(y=headline.baseline, line_dash="dash", annotation_text=f"dense {headline.baseline:.4g}")
    # From zero: blocks of one model save nearly the same time, and a range fitted around them drew ticks
    # such as 0.03041 ... 0.03044 ms, which read as large differences.
    figure.update_xaxes(rangemode="tozero")
    unit = " (%)" if headline.scale == 100.0 else ""
    return _layout(figure, f"Without one whole block: {label} and the time it saves", "measured p50 saving (ms)",
                   f"{label}{unit}")


def point_labels(xs: list[float], ys: list[float], names: list[str], near: float = 0.04) -> list[str]:
    """One label per group of points that would print over each other: points within ``near`` of the axis
    ranges in both x and y share one label, on the first of them, naming up to three and counting the rest
    (the others get none; hovering still names each)."""
    span_x = (max(xs) - min(xs)) or 1.0 if xs else 1.0
    span_y = (max(ys) - min(ys)) or 1.0 if ys else 1.0
    labels, owner = [""] * len(names), list(range(len(names)))
    for index in range(len(names)):
        for earlier in range(index):
            if owner[earlier] == earlier and abs(xs[index] - xs[earlier]) <= near * span_x \
                    and abs(ys[index] - ys[earlier]) <= near * span_y:
                owner[index] = earlier
                break
    for head in set(owner):
        group = [name for index, name in enumerate(names) if owner[index] == head]
        labels[head] = ", ".join(group[:3]) + (f" +{len(group) - 3}" if len(group) > 3 else "")
    return labels


def training_curves(history: list[dict]) -> tuple[go.Figure, go.Figure]:
    """Two small charts per epoch, one y-axis each: mean training loss, and validation accuracy (%) or, for a
    language model (rows with ``val_perplexity``), validation perplexity."""
    epochs = [row["epoch"] for row in history]
    loss = go.Figure(go.Scatter(x=epochs, y=[row["loss"] for row in history], mode="lines+markers",
                                marker_color=KEPT, text=[row.get("phase", "") for row in history],
                                hovertemplate="epoch %{x}<br>loss %{y:.4f}<extra>%{text}</extra>"))
    language = any(row.get("val_perplexity") is not None for row in history)
    if language:
        values, hover = [row.get("val_perplexity") for row in history], "epoch %{x}<br>perplexity %{y:.2f}"
    else:
        values = [None if row.get("val_accuracy") is None else 100 * row["val_accuracy"] for row in history]
        hover = "epoch %{x}<br>%{y:.1f}%"
    validation = go.Figure(go.Scatter(x=epochs, y=values, mode="lines+markers", marker_color=EFFECTIVE,
                                      text=[row.get("phase", "") for row in history],
                                      hovertemplate=hover + "<extra>%{text}</extra>"))
    for figure in (loss, validation):
        figure.update_xaxes(tickmode="linear", dtick=1, tickformat="d", rangemode="tozero")
    titles = ("Validation perplexity", "perplexity") if language else ("Validation accuracy", "accuracy (%)")
    return (_layout(loss, "Training loss", "epoch", "mean cross-entropy", height=280),
            _layout(validation, titles[0], "epoch", titles[1], height=280))

