"""Sensitivity: prune one layer at a time and see which layers can be cut hard and which must be spared."""
from __future__ import annotations

import math

import plotly.graph_objects as go
import streamlit as st

from dashboard import charts, session, sweeps

LEVELS, QUICK_LEVELS = session.DEFAULT_LEVELS, session.QUICK_LEVELS
HEIGHT = 340


def settings_ui() -> dict | None:
    """Granularity, criterion and level choices; returns the settings when Run is pressed."""
    granularities = ["unstructured"] + (["channel"] if session.can("channel") else [])
    first, second, third, fourth = st.columns(4)
    granularity = first.selectbox("Granularity", granularities, key="w.sensitivity.granularity",
                                  persist_state="session",
                                  help="channel sweeps also time each level on ONNX Runtime (slower)")
    criteria = session.criteria_for(granularity)
    if st.session_state.get("w.sensitivity.criterion") not in criteria:
        st.session_state["w.sensitivity.criterion"] = criteria[0]
    criterion = second.selectbox("Criterion", criteria, key="w.sensitivity.criterion", persist_state="session")
    quick = third.toggle("Quick (5 levels)", key="w.sensitivity.quick", persist_state="session",
                         help=", ".join(f"{v:.0%}" for v in QUICK_LEVELS))
    every = fourth.toggle("Every val item", key="w.sensitivity.every", persist_state="session",
                          help="large models score the first val items only, which keeps a sweep to minutes; "
                               "the caption above the results says how many were scored")
    workers = st.number_input("Worker processes", min_value=1, max_value=sweeps.cores(), value=1, step=1,
                              key="w.sensitivity.workers", persist_state="session",
                              help="spread the sweep's points over this many processes of this machine; each "
                                   "starts with a few seconds of loading, so it pays off on large models")
    if st.button("Run sweep", type="primary", icon=":material/play_arrow:"):
        return {"granularity": granularity, "criterion": criterion, "levels": QUICK_LEVELS if quick else LEVELS,
                "max_items": "all" if every else "auto", "workers": workers}
    return None


@st.fragment(run_every=0.5)
def progress_panel() -> None:
    """The running sweep's progress bar and Stop button; reruns the page when the sweep ends."""
    job = sweeps.sweep_job()
    if job is None or not job.running:
        st.rerun(scope="app")
    st.progress(job.done / job.total if job.total else 0.0, text=f"{job.done}/{job.total or '?'}: {job.text}")
    st.button("Stop", icon=":material/stop:", on_click=sweeps.stop_sensitivity, key="sensitivity-stop",
              disabled=job.stop.is_set())


def _value(point: dict, field: str):
    """A point's ``field``; 'perplexity' is exp(loss), 'metrics.NAME' reads a number of the model's own metric."""
    if field == "perplexity":
        return math.exp(point["loss"]) if point.get("loss") is not None else None
    if field.startswith("metrics."):
        return (point.get("metrics") or {}).get(field[len("metrics."):])
    return point.get(field)


def curves(result: dict, field: str, title: str, y_title: str, scale: float = 1.0) -> go.Figure:
    """One line per layer of ``field`` against its sparsity."""
    figure = go.Figure()
    for layer in result["layers"]:
        points = [point for point in layer["curve"] if _value(point, field) is not None]
        figure.add_trace(go.Scatter(x=[100 * point["sparsity"] for point in points],
                                    y=[scale * _value(point, field) for point in points], mode="lines+markers",
                                    name=layer["name"]))
    return _layout(figure, title, "sparsity of that layer (%)", y_title)


def _layout(figure: go.Figure, title: str, x_title: str, y_title: str, height: int = HEIGHT) -> go.Figure:
    figure.update_layout(title={"text": title, "x": 0, "font": {"size": 14}}, height=height,
                         margin={"l": 10, "r": 10, "t": 40, "b": 10}, xaxis_title=x_title, yaxis_title=y_title)
    return figure


def blocks_ui(result: dict, headline) -> None:
    """The block points: the headline figure without each removable block against its measured latency saving."""
    st.plotly_chart(charts.block_points(result, headline), key="sensitivity-blocks", config={"displayModeBar": False})
    second = headline.secondary
    st.dataframe([{"block": block["name"], f"{headline.name} without it": round(headline.value(block), 2),
                   headline.word: round(headline.damage(block), 2),
                   **({f"{second} without it (%)": round(100 * block["accuracy"], 2)} if second else {}),
                   "MACs left": block["macs"], "saves (ms)": block.get("latency_saving_ms")}
                  for block in result["blocks"]], hide_index=True, key="sensitivity-block-table")


def _quality_charts(result: dict, headline) -> None:
    """The headline figure per layer beside the loss, or, for perplexity (exp of the loss), beside agreement."""
    left, right = st.columns(2)
    second = headline.secondary
    if second:
        left.plotly_chart(curves(result, "perplexity", "Perplexity per layer (lower is better)", "perplexity"),
                          key="sensitivity-perplexity", config={"displayModeBar": False})
        right.plotly_chart(curves(result, "accuracy", f"{second.capitalize()} per layer", "%", 100),
                           key="sensitivity-accuracy", config={"displayModeBar": False})
        return
    left.plotly_chart(curves(result, "accuracy", f"{result['label'].capitalize()} per layer", "%", 100),
                      key="sensitivity-accuracy", config={"displayModeBar": False})
    right.plotly_chart(curves(result, "loss", "Loss per layer", "cross-entropy"), key="sensitivity-loss",
                       config={"displayModeBar": False})


def results_ui(result: dict) -> None:
    where = result["evaluated_on"]
    subset = f" ({where['subset']})" if where.get("subset") else ""
    headline = session.headline(result)
    st.caption(f"{result['granularity']} / {result['criterion']} on {where['items']} {where['split']} items{subset}, "
               f"{headline.describe()}, computed in {result['seconds']:.1f} s"
               + (f"; BatchNorm re-estimated on {where['batchnorm_items']} training items per point"
                  if where.get("batchnorm_items") else "")
               + (f"; {where['workers']} worker processes" if (where.get("workers") or 1) > 1 else "")
               + ("" if result["complete"] else " — stopped early, partial result"))
    if result.get("missing"):
        st.warning(f"Points lost with a worker process twice: {', '.join(result['missing'])}")
    st.plotly_chart(charts.sensitivity_heatmap(result, headline), key="sensitivity-heatmap",
                    config={"displayModeBar": False})
    _quality_charts(result, headline)
    for name in result.get("baseline_metrics") or {}:
        st.plotly_chart(curves(result, f"metrics.{name}", f"{name} per layer (your metric)", name),
                        key=f"sensitivity-metric-{name}", config={"displayModeBar": False})
    if result["granularity"] == "channel":
        st.plotly_chart(curves(result, "latency_ms", "Latency each group buys (ONNX Runtime p50, batch 1)", "ms"),
                        key="sensitivity-latency", config={"displayModeBar": False})
    if result.get("blocks"):
        blocks_ui(result, headline)
    if result["complete"]:
        st.info("On the Tune page, set 'All layers' to an overall target and press Auto-allocate to spread it "
                "over the layers by these curves.", icon=":material/auto_fix_high:")


st.title("Sensitivity")
st.caption("Each layer is pruned alone, the rest kept dense, and scored on the validation split: "
           "layers whose row stays pale can be cut hard, dark rows must be spared.")
with session.guard("sensitivity"):
    job = sweeps.sweep_job()
    if job is not None and job.running:
        progress_panel()
    else:
        settings = settings_ui()
        if settings is not None:
            sweeps.start_sensitivity(**settings)
            st.rerun()
        if job is not None and job.error:
            st.error(job.error)
        result = sweeps.finish_sensitivity()
        if result is not None:
            results_ui(result)
