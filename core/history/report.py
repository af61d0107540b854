"""A stakeholder report: one self-contained HTML file about a few chosen runs.

The file holds the model, the runs with their plans, a Pareto chart (accuracy or agreement
against p50 latency, marker size = compressed size, the front highlighted), the per-layer
sparsity of each run and a metrics table. Plotly's JavaScript is inlined, so the file opens
in a browser with no network. Every person-typed text (labels, notes) is escaped.
"""
from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from pathlib import Path

import plotly.graph_objects as go

from core.errors import PrunelabError
from core.files import write_atomic
from core.history.compare import flat_metrics, pareto_indices, planned_sparsity
from core.history.runs import Run, get_run
from core.units import MISSING, metric_label, milliseconds, percent, readable, size
from core.units import metric as units_metric

TABLE_METRICS = ["accuracy", "perplexity", "agreement", "loss", "generation.decode_tokens_per_s",
                 "generation.prefill_tokens_per_s", "latency_ms.p50", "latency_ms.p90", "throughput", "removed",
                 "sparsity", "params", "nonzero_params", "macs", "onnx_bytes", "compressed_bytes", "max_abs_diff"]
STYLE = """body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}thead{background:#f3f3f3}.front{font-weight:bold}
.muted{color:#777}"""


def run_name(run: Run) -> str:
    return f"#{run.id} {run.label}".strip()


def _time_scale(latencies: list[float]) -> tuple[float, str]:
    """(factor, unit) that shows ``latencies`` given in ms as people read them: µs below a millisecond."""
    known = [value for value in latencies if value is not None]
    return (1000.0, "µs") if known and max(known) < 1 else (1.0, "ms")


def pareto_figure(runs: list[Run], baseline: dict | None = None) -> go.Figure:
    """Quality (%) against p50 latency; marker area follows compressed size; the front in its own trace;
    the dense baseline a labelled star drawn last, so no run hides it.

    Each run point's ``customdata`` is the run id (the dashboard opens the run on click); a click
    fades nothing.
    """
    points = [(run.quality, run.latency_p50) for run in runs]
    front = set(pareto_indices(points))
    dense_quality = None if not baseline else (
        baseline.get("accuracy") if baseline.get("accuracy") is not None else baseline.get("agreement"))
    dense_latency = ((baseline or {}).get("latency_ms") or {}).get("p50")
    scale, unit = _time_scale([latency for _, latency in points] + [dense_latency])
    sizes = [run.compressed_bytes or 0 for run in runs]
    largest = max(sizes + [1])
    unfaded = {"marker": {"opacity": 0.85}, "textfont": {"color": None}}
    figure = go.Figure()
    for on_front in (False, True):
        chosen = [index for index in range(len(runs)) if (index in front) == on_front]
        figure.add_trace(go.Scatter(
            x=[_scaled(points[index][1], scale) for index in chosen],
            y=[_scaled(points[index][0], 100) for index in chosen],
            mode="markers+text", text=[html.escape(run_name(runs[index])) for index in chosen],
            textposition="top center", customdata=[runs[index].id for index in chosen],
            name="Pareto front" if on_front else "other runs", selected=unfaded, unselected=unfaded,
            marker={"size": [12 + 28 * math.sqrt(sizes[index] / largest) for index in chosen],
                    "color": "#d62728" if on_front else "#7f7f7f", "opacity": 0.85,
                    "line": {"width": 1, "color": "#333"}},
            hovertext=[f"{html.escape(run_name(runs[index]))}<br>p50 {milliseconds(points[index][1])}<br>"
                       f"{percent(points[index][0])}<br>compressed {size(sizes[index])}" for index in chosen],
            hoverinfo="text"))
    ordered = sorted(front, key=lambda index: points[index][1])
    figure.add_trace(go.Scatter(x=[_scaled(points[index][1], scale) for index in ordered],
                                y=[_scaled(points[index][0], 100) for index in ordered],
                                mode="lines", line={"color": "#d62728", "dash": "dot"}, hoverinfo="skip",
                                showlegend=False))
    if dense_latency is not None:
        figure.add_trace(_baseline_trace(dense_latency, dense_quality, scale, unfaded))
    label = "accuracy" if all(run.pruned.get("accuracy") is not None for run in runs) else "accuracy / agreement"
    figure.update_layout(xaxis_title=f"p50 latency ({unit})", yaxis_title=f"{label} (%)", height=480,
                         margin={"l": 60, "r": 20, "t": 30, "b": 50}, clickmode="event+select")
    return figure


def layer_time_figure(rows: list[dict], pruned: bool, top: int = 30) -> go.Figure:
    """Horizontal bars of measured ms per layer (the ``top`` slowest dense layers), pruned beside dense.

    ``rows`` as core.deploy.profile.compare returns them (``name``, ``ms_dense``, ``ms_pruned``).
    """
    shown = sorted(rows, key=lambda row: -row["ms_dense"])[:top]
    names = [row["name"] for row in shown]
    figure = go.Figure(go.Bar(y=names, x=[row["ms_dense"] for row in shown], orientation="h", name="dense",
                              marker_color="#4c78a8", hovertemplate="%{y}: %{x:.3f} ms<extra>dense</extra>"))
    if pruned:
        figure.add_trace(go.Bar(y=names, x=[row["ms_pruned"] for row in shown], orientation="h", name="pruned",
                                marker_color="#f58518", hovertemplate="%{y}: %{x:.3f} ms<extra>pruned</extra>"))
    figure.update_yaxes(autorange="reversed", tickfont={"size": 10}, automargin=True)
    height = 80 + 18 * len(names) * (2 if pruned else 1)
    title = "Measured time per layer" + (f" (the {top} slowest)" if len(rows) > top else "")
    figure.update_layout(title={"text": title, "x": 0, "font": {"size": 14}}, height=max(240, min(height, 1400)),
                         margin={"l": 10, "r": 10, "t": 40, "b": 10}, xaxis_title="ms per run (median)",
                         legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"})
    return figure


def _baseline_trace(latency: float, quality: float | None, scale: float, unfaded: dict) -> go.Scatter:
    """The dense model: a labelled star (added last, so it is drawn above every run)."""
    return go.Scatter(
        x=[latency * scale], y=[_scaled(quality, 100)], mode="markers+text", text=["dense"],
        textposition="bottom center", textfont={"color": "#1f77b4", "size": 13}, name="dense baseline",
        selected=unfaded, unselected=unfaded, hoverinfo="text",
        hovertext=[f"dense baseline<br>p50 {milliseconds(latency)}<br>{percent(quality)}"],
        marker={"symbol": "star", "size": 22, "color": "#1f77b4", "line": {"width": 1.5, "color": "white"}})


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _cell(value) -> str:
    if value is None or value == MISSING:
        return '<span class="muted">–</span>'
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join(f'<tr class="{(classes or [""] * len(rows))[index]}">' + "".join(f"<td>{_cell(cell)}</td>"
                                                                                   for cell in row) + "</tr>"
                   for index, row in enumerate(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _runs_table(runs: list[Run], front: set[int]) -> str:
    rows = [[run_name(run), run.created, run.model, run.plan.get("granularity"), run.plan.get("criterion"),
             run.plan.get("scope"), percent(run.removed), percent(run.quality), milliseconds(run.latency_p50),
             size(run.compressed_bytes), "yes" if index in front else "", run.notes] for index, run in enumerate(runs)]
    classes = ["front" if index in front else "" for index in range(len(runs))]
    return _table(["run", "created", "model", "granularity", "criterion", "scope", "weights removed",
                   "accuracy / agreement", "p50 latency", "compressed size", "on Pareto front", "notes"], rows, classes)


def _layers_table(runs: list[Run]) -> str:
    names = list(dict.fromkeys(name for run in runs for name in [*run.layer_sparsity, *(run.plan.get("layers") or {})]))
    per_run = [planned_sparsity(run, names) for run in runs]
    rows = [[name, *[percent(sparsity.get(name)) for sparsity in per_run]] for name in names]
    return _table(["layer (sparsity)", *[run_name(run) for run in runs]], rows)


def _metrics_table(runs: list[Run]) -> str:
    flat = [flat_metrics(run.pruned) for run in runs]
    baseline = flat_metrics(runs[0].metrics.get("baseline") or {})
    rows = [[metric_label(name), units_metric(name, baseline.get(name)),
             *[units_metric(name, values.get(name)) for values in flat]] for name in TABLE_METRICS
            if baseline.get(name) is not None or any(values.get(name) is not None for values in flat)]
    return _table(["metric", "dense baseline", *[run_name(run) for run in runs]], rows)


def _profiles(runs: list[Run]) -> str:
    """Measured time per layer of every run profiled when it was pruned (``prunelab prune --profile``)."""
    parts = []
    for run in runs:
        profile = run.metrics.get("profile")
        if not profile:
            continue
        chart = layer_time_figure(profile["rows"], True, top=20).to_html(
            full_html=False, include_plotlyjs=False, config={"displaylogo": False})
        parts.append(f"<h3>{html.escape(run_name(run))}</h3><p class=\"muted\">One run: dense "
                     f"{milliseconds(profile['dense_p50_ms'])}, pruned {milliseconds(profile['pruned_p50_ms'])} "
                     f"(medians of runs without the profiler; layer times are the profiler's, less its own time inside "
                     f"each node; outside layers {milliseconds(profile['other_ms'])}).</p>{chart}")
    return f"<h2>Where the time goes</h2>{''.join(parts)}" if parts else ""


def build_report(runs: list[Run], title: str = "Pruning report") -> str:
    """The whole HTML document for ``runs`` (at least one). Raises PrunelabError when empty."""
    if not runs:
        raise PrunelabError("a report needs at least one run")
    front = set(pareto_indices([(run.quality, run.latency_p50) for run in runs]))
    models = ", ".join(dict.fromkeys(f"{run.model} ({run.model_digest or 'no digest'})" for run in runs))
    chart = pareto_figure(runs, runs[0].metrics.get("baseline")).to_html(
        full_html=False, include_plotlyjs=True, config={"displaylogo": False})
    notes = "".join(f"<li><b>{html.escape(run_name(run))}</b>: {html.escape(readable(note))}</li>"
                    for run in runs for note in run.metrics.get("notes") or [])
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Model: <b>{html.escape(models)}</b>. {len(runs)} run(s); generated {generated} by prunelab.</p>
<h2>Runs</h2>{_runs_table(runs, front)}
<h2>Accuracy against latency</h2>
<p class="muted">Marker size follows the compressed (gzip) model size; red points form the Pareto front; the blue
star is the dense model.</p>
{chart}
<h2>Per-layer sparsity</h2>{_layers_table(runs)}
<h2>Metrics</h2>{_metrics_table(runs)}
{_profiles(runs)}
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
</body></html>
"""


def write_report(run_ids: list[int], path: str | Path, title: str = "Pruning report") -> Path:
    """Build the report for the stored runs ``run_ids`` and write it atomically to ``path``."""
    return write_atomic(path, build_report([get_run(run_id) for run_id in run_ids], title))
