"""Tune: shape a pruning plan with one slider per layer and watch the measured metrics move."""
from __future__ import annotations

import streamlit as st

from dashboard import charts, formatting, session

GRANULARITY_HELP = ("unstructured zeroes single weights; channel removes whole filters (and everything coupled "
                    "to them), which is what makes ONNX Runtime faster; 2:4 zeroes 2 of every 4 weights")
MAX_PERCENT = round(100 * session.MAX_SPARSITY)  # sliders hold whole percents; the plan holds fractions
SCOPE_HELP = "layer: each layer meets its own target; global: one ranking over all layers without their own target"


ROUND_TO = (1, 4, 8, 16)


def _forget_layer_widgets() -> None:
    for key in [key for key in st.session_state if str(key).startswith("w.layer.")]:
        del st.session_state[key]


def _forget_plan_widgets() -> None:
    """Drop every plan widget so each reseeds from the plan (after the plan changed from elsewhere)."""
    _forget_layer_widgets()
    for key in ("w.granularity", "w.criterion", "w.scope", "w.global", "w.quantize", "w.round_to", "w.recalibrate"):
        st.session_state.pop(key, None)


def _on_granularity() -> None:
    granularity = st.session_state["w.granularity"]
    criterion = session.plan()["criterion"]
    if criterion not in session.criteria_for(granularity):
        criterion = "l1"
        st.session_state["w.criterion"] = criterion
    session.update_plan(granularity=granularity, criterion=criterion, layers={})
    _forget_layer_widgets()


def _on_global() -> None:
    percent = st.session_state["w.global"]
    value = percent / 100
    session.update_plan(sparsity=value, layers={})
    ignored = {f"w.layer.{name}" for name in session.ignored_layers()}
    for key in [key for key in st.session_state if str(key).startswith("w.layer.") and key not in ignored]:
        st.session_state[key] = percent


def _on_layer(name: str) -> None:
    session.set_target(name, st.session_state[f"w.layer.{name}"] / 100)


def method_ui(values: dict) -> None:
    """Granularity, criterion and scope selects; each writes straight into the session's plan."""
    for key, field in (("w.granularity", "granularity"), ("w.criterion", "criterion"), ("w.scope", "scope")):
        session.seed(key, values[field])
    first, second, third = st.columns(3)
    first.selectbox("Granularity", session.granularities(), key="w.granularity", on_change=_on_granularity,
                    help=GRANULARITY_HELP)
    second.selectbox("Criterion", session.criteria_for(values["granularity"]), key="w.criterion",
                     on_change=lambda: session.update_plan(criterion=st.session_state["w.criterion"]),
                     help="how weights or channels are ranked before the lowest are cut")
    third.selectbox("Scope", session.SCOPES, key="w.scope", help=SCOPE_HELP,
                    on_change=lambda: session.update_plan(scope=st.session_state["w.scope"]))
    if values["granularity"] == "channel":
        session.seed("w.round_to", int(values.get("round_to", 1)))
        st.selectbox("Round kept channels to a multiple of", ROUND_TO, key="w.round_to",
                     help="ONNX Runtime's convolution kernels work in blocks of 8 channels: odd counts can run "
                          "slower than the dense model, so 8 usually buys the most speed",
                     on_change=lambda: session.update_plan(round_to=int(st.session_state["w.round_to"])))
    session.seed("w.recalibrate", bool(values.get("recalibrate", True)))
    st.toggle("Re-estimate BatchNorm statistics", key="w.recalibrate",
              help="after pruning, a few forward passes over the model's own inputs (no labels) refresh each "
                   "BatchNorm's mean and variance; often most of the lost accuracy comes back",
              on_change=lambda: session.update_plan(recalibrate=bool(st.session_state["w.recalibrate"])))
    session.seed("w.quantize", st.session_state.get(session.QUANTIZE) is not None)
    st.toggle("Quantize to INT8", key="w.quantize", help="static QDQ INT8 in ONNX Runtime after pruning: a 4× smaller "
              "file, and on CNNs lower latency (deltas stay against the dense FP32 model)",
              on_change=lambda: st.session_state.update({session.QUANTIZE: "int8" if st.session_state["w.quantize"]
                                                         else None}))


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
    session.seed("w.global", round(100 * values["sparsity"]))
    st.slider("All layers", 0, MAX_PERCENT, step=5, format="%d%%", key="w.global", on_change=_on_global,
              help="sets every layer to this sparsity (layers you move afterwards keep their own value)")
    available = session.allocate_available()
    if st.button("Auto-allocate", disabled=not available, icon=":material/auto_fix_high:",
                 help="fill the sliders from a sensitivity sweep" if available
                 else "run a sweep on the Sensitivity page first (needs core.search.allocate)"):
        with session.guard("auto-allocate"):
            session.auto_allocate()
            _forget_plan_widgets()
            st.rerun()
    nm = ":" in values["granularity"]
    ignored = set(session.ignored_layers())
    if nm:
        st.caption(f"{values['granularity']} prunes a fixed share of every weight block; "
                   f"a slider above 0 includes its layer.")
    for name, label, help_text in rows(values):
        key = f"w.layer.{name}"
        dense = name in ignored
        if dense:
            st.session_state[key] = 0
        session.seed(key, round(100 * session.target(name)))
        st.slider(label, 0, MAX_PERCENT, step=5, format="%d%%", key=key, on_change=_on_layer, args=(name,),
                  disabled=dense, help="left dense: the final classifier" if dense else (help_text or None))


def _card(column, label: str, value: str, delta: str | None, lower_is_better: bool = True,
          help: str | None = None) -> None:
    """A metric card; a delta that rounds to zero is grey, a change is coloured by whether it helps."""
    flat = delta is None or delta.lstrip("+-").startswith(("0%", "0.0 pts"))
    colour = "off" if flat else ("inverse" if lower_is_better else "normal")
    column.metric(label, value, delta, delta_color=colour, delta_arrow="off" if flat else "auto", border=True,
                  help=help)


def cards(report: dict) -> None:
    """Metric cards of the pruned model with deltas against the dense one."""
    pruned, dense = report["pruned"], report["baseline"]
    label = pruned.get("label", "accuracy")
    quality = pruned.get(label) if pruned.get(label) is not None else pruned.get("agreement")
    latency, dense_latency = pruned["latency_ms"]["p50"], dense["latency_ms"]["p50"]
    speedup = dense_latency / latency if latency else None
    top, bottom = st.columns(4), st.columns(4)
    _card(top[0], label.capitalize(), formatting.percent(quality), formatting.points(quality, dense.get(label)),
          lower_is_better=False, help="on the test split" if label == "accuracy" else "top-1 match with the dense model")
    _card(top[1], "p50 latency", formatting.milliseconds(latency), formatting.change(latency, dense_latency),
          help="ONNX Runtime on CPU, batch 1, 2 threads")
    _card(top[2], "Speedup", "–" if speedup is None else f"{speedup:.2f}×", None,
          help="dense p50 latency / pruned p50 latency")
    _card(top[3], "MACs", formatting.count(pruned["macs"]), formatting.change(pruned["macs"], dense["macs"]),
          help="multiply-accumulates per item")
    _card(bottom[0], "Parameters", formatting.count(pruned["nonzero_params"]),
          formatting.change(pruned["nonzero_params"], dense["nonzero_params"]), help="nonzero parameters")
    _card(bottom[1], "File size", formatting.size(pruned["onnx_bytes"]),
          formatting.change(pruned["onnx_bytes"], dense["onnx_bytes"]), help="the .onnx file")
    _card(bottom[2], "Compressed", formatting.size(pruned["compressed_bytes"]),
          formatting.change(pruned["compressed_bytes"], dense["compressed_bytes"]), help="the .onnx file after gzip")
    _card(bottom[3], "Sparsity", formatting.percent(pruned.get("sparsity")), None,
          help="zero share of the prunable weights")


@st.fragment
def metrics_panel() -> None:
    """Measure this session's plan and show the cards, a one-line explanation and the per-layer chart."""
    values = session.plan()
    with session.guard("measuring the plan"):
        with st.spinner("Measuring on ONNX Runtime…"):
            report = session.measure()
        cards(report)
        reason = session.no_speedup_reason(values, report)
        if reason:
            st.info(reason, icon=":material/info:")
        names = session.layer_names()
        measured = report.get("layer_sparsity") or {}
        figure = charts.layer_targets(names, [session.target(name) if name not in session.ignored_layers()
                                              else 0.0 for name in names],
                                      [measured.get(name, 0.0) for name in names] if measured else None)
        st.plotly_chart(figure, key="tune-targets", config={"displayModeBar": False})
        for note in report.get("notes", []):
            st.caption(note)


st.title("Tune")
st.caption("Drag a layer's slider to choose how much of it to prune; the panel measures the pruned model "
           "on ONNX Runtime with every release.")
with session.guard("loading the model"):
    current = session.plan()
    st.caption(f"Model: **{session.model().name}**, {session.model().description} (change it on the Model page)")
    controls, panel = st.columns([2, 3], gap="large")
    with controls:
        method_ui(current)
        sliders_ui(current)
    with panel:
        metrics_panel()
