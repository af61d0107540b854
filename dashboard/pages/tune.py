"""Tune: shape a pruning plan with one slider per layer and watch the measured metrics move."""
from __future__ import annotations

import streamlit as st

from dashboard import charts, formatting, session, state, sweeps

GRANULARITY_HELP = ("unstructured zeroes single weights; channel removes whole filters (and everything coupled "
                    "to them), which is what makes ONNX Runtime faster; 2:4 zeroes 2 of every 4 weights")
MAX_PERCENT = round(100 * session.MAX_SPARSITY)  # sliders hold whole percents; the plan holds fractions
SCOPE_HELP = "layer: each layer meets its own target; global: one ranking over all layers without their own target"


ROUND_TO = (1, 4, 8, 16)


def _on_granularity() -> None:
    granularity = st.session_state["w.granularity"]
    criterion = state.plan()["criterion"]
    if criterion not in session.criteria_for(granularity):
        criterion = "l1"
        st.session_state["w.criterion"] = criterion
    previous = state.plan()["granularity"]
    if state.switch_granularity(granularity, criterion):
        st.toast(f"Per-layer targets of {previous} are kept: switch back to {previous} to get them again.",
                 icon=":material/undo:")


def _on_global() -> None:
    percent = st.session_state["w.global"]
    value = percent / 100
    state.update_plan(sparsity=value, layers={})
    ignored = {f"w.layer.{name}" for name in session.left_dense()}
    for key in [key for key in st.session_state if str(key).startswith("w.layer.") and key not in ignored]:
        st.session_state[key] = percent


def _on_layer(name: str) -> None:
    state.set_target(name, st.session_state[f"w.layer.{name}"] / 100)


def method_ui(values: dict) -> None:
    """Granularity, criterion and scope selects; each writes straight into the session's plan."""
    for key, field in (("w.granularity", "granularity"), ("w.criterion", "criterion"), ("w.scope", "scope")):
        state.seed(key, values[field])
    first, second, third = st.columns(3)
    first.selectbox("Granularity", session.granularities(), key="w.granularity", on_change=_on_granularity,
                    help=GRANULARITY_HELP)
    second.selectbox("Criterion", session.criteria_for(values["granularity"]), key="w.criterion",
                     on_change=lambda: state.update_plan(criterion=st.session_state["w.criterion"]),
                     help="how weights or channels are ranked before the lowest are cut")
    third.selectbox("Scope", session.SCOPES, key="w.scope", help=SCOPE_HELP,
                    on_change=lambda: state.update_plan(scope=st.session_state["w.scope"]))
    if values["granularity"] == "channel":
        state.seed("w.round_to", int(values.get("round_to", 1)))
        st.selectbox("Round kept channels to a multiple of", ROUND_TO, key="w.round_to",
                     help="ONNX Runtime's convolution kernels work in blocks of 8 channels: odd counts can run "
                          "slower than the dense model, so 8 usually buys the most speed",
                     on_change=lambda: state.update_plan(round_to=int(st.session_state["w.round_to"])))
    state.seed("w.recalibrate", bool(values.get("recalibrate", True)))
    st.toggle("Re-estimate BatchNorm statistics", key="w.recalibrate",
              help="after pruning, a few forward passes over the model's own inputs (no labels) refresh each "
                   "BatchNorm's mean and variance; often most of the lost accuracy comes back",
              on_change=lambda: state.update_plan(recalibrate=bool(st.session_state["w.recalibrate"])))
    state.seed("w.quantize", state.quantize() is not None)
    st.toggle("Quantize to INT8", key="w.quantize", help="static QDQ INT8 in ONNX Runtime after pruning: a 4× smaller "
              "file, and on CNNs lower latency (deltas stay against the dense FP32 model)",
              on_change=lambda: state.set_quantize(bool(st.session_state["w.quantize"])))


def rows(values: dict) -> list[tuple[str, str, str]]:
    """(plan key, slider label, help) per slider: one per layer, or one per coupled group in channel mode."""
    if values["granularity"] != "channel":
        return [(name, name, "") for name in session.layer_names()]
    order = {name: index for index, name in enumerate(session.layer_names())}
    result = []
    for group in sorted(session.groups(), key=lambda group: order.get(group["leader"], len(order))):
        others = [name for name in group["members"] if name != group["leader"]]
        label = group["leader"] + (f" ({group['channels']} heads, with q/k/v)" if group.get("unit") == "head" else
                                   f" (+{len(others)} coupled)" if others else "")
        unit = "heads" if group.get("unit") == "head" else "channels"
        result.append((group["leader"], label, f"{group['channels']} {unit} shared by: "
                                               f"{', '.join(group['members'])}"))
    return result


def sliders_ui(values: dict) -> None:
    """The global slider, Auto-allocate, and one slider per layer (or group)."""
    pattern = session.nm_share(values["granularity"])
    state.seed("w.global", round(100 * values["sparsity"]))
    st.slider("All layers", 0, MAX_PERCENT, step=5, format="%d%%", key="w.global", on_change=_on_global,
              disabled=pattern is not None,
              help="sets every layer to this sparsity (layers you move afterwards keep their own value)")
    available = sweeps.allocate_available()
    if st.button("Auto-allocate", disabled=not available, icon=":material/auto_fix_high:",
                 help="fill the sliders from a sensitivity sweep" if available
                 else "run a complete sweep on the Sensitivity page first"):
        with session.guard("auto-allocate"):
            sweeps.auto_allocate()
            state.forget_plan_widgets()
            st.rerun()
    dense = session.left_dense(values["granularity"])
    if pattern is not None:
        st.caption(f"{values['granularity']} zeroes a fixed {pattern:.0%} of every layer that can take it (the "
                   f"sliders show which); per-layer values do not apply.")
    for name, label, help_text in rows(values):
        key = f"w.layer.{name}"
        if name in dense or pattern is not None:  # a value the person cannot change: shown as it is
            st.session_state[key] = round(100 * session.target_of_layer(name))
        state.seed(key, round(100 * state.target(name)))
        fixed = f"{values['granularity']}: a fixed pattern" if pattern is not None else None
        st.slider(label, 0, MAX_PERCENT, step=5, format="%d%%", key=key, on_change=_on_layer, args=(name,),
                  disabled=name in dense or pattern is not None, help=dense.get(name) or fixed or help_text or None)


def _card(column, label: str, value: str, delta: str | None, lower_is_better: bool = True,
          help: str | None = None) -> None:
    """A metric card; a delta that rounds to zero or is noise is grey, a change is coloured by whether it helps."""
    flat = delta is None or delta.lstrip("+-").startswith(("0%", "0.0 pts", "no measurable", "same graph", "noise"))
    colour = "off" if flat else ("inverse" if lower_is_better else "normal")
    column.metric(label, value, delta, delta_color=colour, delta_arrow="off" if flat else "auto", border=True,
                  help=help)


def speed_values(pruned: dict) -> tuple[str, str | None, str | None]:
    """(speedup value, speedup delta, latency delta) from the paired runs: 'no measurable change' within noise."""
    speedup = pruned.get("speedup")
    if not speedup:
        return "–", None, None
    if speedup.get("same_model"):
        return "1.00×", "same graph", None
    interval = f"{speedup['low']:.2f}–{speedup['high']:.2f}×"
    if not speedup["measurable"]:
        return f"{speedup['p50']:.2f}×", f"noise: {interval}", "no measurable change"
    return f"{speedup['p50']:.2f}×", f"{interval} (95%)", f"{100 * (1 / speedup['p50'] - 1):+.0f}%"


def cards(report: dict) -> None:
    """Metric cards of the pruned model with deltas against the dense one (the one dense measurement)."""
    pruned, dense = report["pruned"], report["baseline"]
    quality = formatting.quality(pruned, dense)
    speedup, speedup_delta, latency_delta = speed_values(pruned)
    top, middle, bottom = st.columns(3), st.columns(3), st.columns(3)
    splits = report.get("settings", {}).get("splits")
    _card(top[0], quality["title"], quality["value"], quality["delta"], lower_is_better=False,
          help=quality["help"] + (f". {splits}" if splits else ""))
    _card(top[1], "p50 latency", formatting.milliseconds(pruned["latency_ms"]["p50"]), latency_delta,
          help=f"ONNX Runtime on CPU, batch 1, 2 threads; dense: {formatting.milliseconds(dense['latency_ms']['p50'])}"
               " (the Model page's figure); the change comes from runs timed in alternation with the dense model")
    _card(top[2], "Speedup", speedup, speedup_delta, lower_is_better=False,
          help="median of dense/pruned time over pairs of runs timed in alternation, with its 95% interval; "
               "'noise' (no measurable change) when the interval holds 1× or it is within 10% of 1×")
    _card(middle[0], "MACs", formatting.count(pruned["macs"]), formatting.change(pruned["macs"], dense["macs"]),
          help="multiply-accumulates per item")
    _card(middle[1], "Parameters", formatting.count(pruned["nonzero_params"]),
          formatting.change(pruned["nonzero_params"], dense["nonzero_params"]), help="nonzero parameters")
    _card(middle[2], "Weights removed", formatting.percent(pruned.get("removed")), None,
          help="share of the dense model's prunable weights that are zero or gone (channel pruning removes them)")
    _card(bottom[0], "File size", formatting.size(pruned["onnx_bytes"]),
          formatting.change(pruned["onnx_bytes"], dense["onnx_bytes"]), help="the .onnx file")
    _card(bottom[1], "Compressed", formatting.size(pruned["compressed_bytes"]),
          formatting.change(pruned["compressed_bytes"], dense["compressed_bytes"]), help="the .onnx file after gzip")
    second = formatting.fidelity(pruned)
    if second is not None:
        _card(bottom[2], second[0], second[1], None, help=second[2])


@st.fragment
def metrics_panel() -> None:
    """Measure this session's plan and show the cards, a one-line explanation and the per-layer chart."""
    with session.guard("measuring the plan"):
        with st.spinner("Measuring on ONNX Runtime…"):
            report = session.measure()
        cards(report)
        names = session.layer_names()
        measured = report.get("layer_sparsity") or {}
        figure = charts.layer_targets(names, [session.target_of_layer(name) for name in names],
                                      [measured.get(name, 0.0) for name in names] if measured else None)
        st.plotly_chart(figure, key="tune-targets", config={"displayModeBar": False})
        for note in report.get("notes", []):
            st.caption(note)


st.title("Tune")
st.caption("Drag a layer's slider to choose how much of it to prune; the panel measures the pruned model "
           "on ONNX Runtime with every release.")
with session.guard("loading the model"):
    current = state.plan()
    st.caption(f"Model: **{session.model().name}**, {session.model().description} (change it on the Model page)")
    controls, panel = st.columns([2, 3], gap="large")
    with controls:
        method_ui(current)
        sliders_ui(current)
    with panel:
        metrics_panel()
