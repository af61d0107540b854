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


def layer_targets(names: list[str], targets: list[float], effective: list[float] | None = None) -> go.Figure:
    """Horizontal bars of each layer's target sparsity, with the measured sparsity next to it."""
    figure = go.Figure(go.Bar(y=names, x=[100 * value for value in targets], orientation="h", name="target",
                              marker_color=KEPT, hovertemplate="%{y}: %{x:.0f}%<extra>target</extra>"))
    if effective is not None:
        figure.add_trace(go.Bar(y=names, x=[100 * value for value in effective], orientation="h", name="measured",
                                marker_color=EFFECTIVE, hovertemplate="%{y}: %{x:.1f}%<extra>measured</extra>"))
    figure.update_yaxes(autorange="reversed")
    figure.update_xaxes(range=[0, 100])
    height = max(220, 60 + 22 * len(names) * (2 if effective is not None else 1))
    return _layout(figure, "Sparsity per layer", "sparsity (%)", "", height=min(height, 620))
