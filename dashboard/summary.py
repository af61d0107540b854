"""The Tune page's read-out: a Dense -> Pruned strip in plain words, then metric cards with deltas.

``strip`` and ``cards`` take a measured report (see core.deploy.evaluate) and draw it; nothing
here measures. A report drawn while a newer plan is measured is shown faded under a "measuring"
line (``stale=True``), so the screen never passes old figures off as new ones.
"""
from __future__ import annotations

import streamlit as st

from dashboard import formatting
from dashboard.glossary import TERMS

STALE_STYLE = "<style>.st-key-tune-stale{opacity:.45;filter:grayscale(1)}</style>"


def _quality(metrics: dict) -> tuple[str, float | None]:
    label = metrics.get("label", "accuracy")
    value = metrics.get(label) if metrics.get(label) is not None else metrics.get("agreement")
    return label, value


def _size_pair(report: dict) -> tuple[str, str, str]:
    """(label, help key, field): gzip size when the file itself cannot shrink (zeros only), else the file."""
    plan = report.get("plan") or {}
    shrinks = plan.get("granularity") == "channel" or report["pruned"].get("quantized")
    return ("Size", "size", "onnx_bytes") if shrinks else ("Size (gzip)", "compressed", "compressed_bytes")


def strip_items(report: dict) -> list[tuple[str, str, str]]:
    """(label, 'dense -> pruned' text, help) for accuracy, latency, size and MACs."""
    pruned, dense = report["pruned"], report["baseline"]
    label, quality = _quality(pruned)
    _, dense_quality = _quality(dense)
    latency, dense_latency = pruned["latency_ms"]["p50"], dense["latency_ms"]["p50"]
    size_label, size_help, field = _size_pair(report)
    speed = formatting.speed(dense_latency, latency)
    return [
        (label.capitalize(), f"{formatting.percent(dense_quality)} → {formatting.percent(quality)}", TERMS[label]),
        ("Latency (p50)", f"{formatting.milliseconds(dense_latency)} → {formatting.milliseconds(latency)}"
                          + (f" ({speed})" if speed else ""), TERMS["p50"]),
        (size_label, f"{formatting.size(dense[field])} → {formatting.size(pruned[field])}", TERMS[size_help]),
        ("Work per input", f"{formatting.count(dense['macs'])} → {formatting.count(pruned['macs'])} MACs",
         TERMS["macs"]),
    ]


def strip(report: dict) -> None:
    """One bordered row: 'Dense -> Pruned' for the four figures a stakeholder asks about."""
    with st.container(border=True):
        st.markdown("**Dense → Pruned**", help="left of the arrow: the model as loaded; right: with this plan, "
                                               "both measured the same way on ONNX Runtime")
        for column, (label, text, help_text) in zip(st.columns(4), strip_items(report)):
            column.markdown(f":gray[{label}]", help=help_text)
            column.markdown(f"**{text}**")


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
    label, quality = _quality(pruned)
    latency, dense_latency = pruned["latency_ms"]["p50"], dense["latency_ms"]["p50"]
    speedup = dense_latency / latency if latency else None
    top, bottom = st.columns(4), st.columns(4)
    _card(top[0], label.capitalize(), formatting.percent(quality), formatting.points(quality, dense.get(label)),
          lower_is_better=False, help=f"{TERMS[label]}. {TERMS['pts']}")
    _card(top[1], "p50 latency", formatting.milliseconds(latency), formatting.change(latency, dense_latency),
          help=TERMS["p50"])
    _card(top[2], "Speedup", "–" if speedup is None else f"{speedup:.2f}×", None, help=TERMS["speedup"])
    _card(top[3], "MACs", formatting.count(pruned["macs"]), formatting.change(pruned["macs"], dense["macs"]),
          help=TERMS["macs"])
    _card(bottom[0], "Parameters", formatting.count(pruned["nonzero_params"]),
          formatting.change(pruned["nonzero_params"], dense["nonzero_params"]), help=TERMS["params"])
    _card(bottom[1], "File size", formatting.size(pruned["onnx_bytes"]),
          formatting.change(pruned["onnx_bytes"], dense["onnx_bytes"]), help=TERMS["size"])
    _card(bottom[2], "Compressed", formatting.size(pruned["compressed_bytes"]),
          formatting.change(pruned["compressed_bytes"], dense["compressed_bytes"]), help=TERMS["compressed"])
    _card(bottom[3], "Sparsity", formatting.percent(pruned.get("sparsity")), None, help=TERMS["sparsity"])


def read_out(report: dict, stale: bool = False) -> None:
    """The strip and the cards; faded, under a 'measuring' line, when ``stale``."""
    if stale:
        st.html(STALE_STYLE)
        st.caption(":material/hourglass_top: Measuring the new plan on ONNX Runtime… the figures below are "
                   "the previous plan's.")
    with st.container(key="tune-stale" if stale else "tune-fresh"):
        strip(report)
        cards(report)
