"""The Tune page's read-out: a Dense -> Pruned strip in plain words, then metric cards with deltas.

``strip`` and ``cards`` take a measured report (see core.deploy.evaluate) and draw it; nothing
here measures. A report drawn while a newer plan is measured is shown faded under a "measuring"
line (``stale=True``), so the screen never passes old figures off as new ones.
"""
from __future__ import annotations

import streamlit as st

from dashboard import formatting
from dashboard.glossary import TERMS
from dashboard.session import SPEEDUP_FLOOR

STALE_STYLE = "<style>.st-key-tune-stale{opacity:.45;filter:grayscale(1)}</style>"


def _size_pair(report: dict) -> tuple[str, str, str]:
    """(label, help key, field): gzip size when the file itself cannot shrink (zeros only), else the file."""
    plan = report.get("plan") or {}
    shrinks = plan.get("granularity") == "channel" or report["pruned"].get("quantized")
    return ("Size", "size", "onnx_bytes") if shrinks else ("Size (gzip)", "compressed", "compressed_bytes")


def _speed_words(pruned: dict) -> str:
    """'1.4x faster' when the paired runs show a change, 'no measurable change' when they do not."""
    speedup = pruned.get("speedup")
    if not speedup:
        return ""
    if speedup.get("same_model") or not speedup.get("measurable"):
        return "no measurable change"
    ratio = speedup["p50"]
    return f"{formatting.times(ratio)} faster" if ratio > 1 else f"{formatting.times(1 / ratio)} slower"


def strip_items(report: dict) -> list[tuple[str, str, str]]:
    """(label, 'dense -> pruned' text, help) for accuracy, latency, size and MACs."""
    pruned, dense = report["pruned"], report["baseline"]
    quality = formatting.quality(pruned, dense)
    dense_quality = formatting.quality(dense)
    latency, dense_latency = pruned["latency_ms"]["p50"], dense["latency_ms"]["p50"]
    size_label, size_help, field = _size_pair(report)
    speed = _speed_words(pruned)
    # Both figures are what was measured; the verdict comes from the paired runs, which alone compare
    # the two models under the same load (the dense p50 is the one dense measurement, taken earlier).
    after = formatting.milliseconds(latency) + (f" ({speed} in paired runs)" if speed else "")
    return [
        (quality["title"], f"{dense_quality['value']} → {quality['value']}", quality["help"]),
        ("Latency (p50)", f"{formatting.milliseconds(dense_latency)} → {after}", TERMS["p50"]),
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


def _card(column, label: str, value: str, delta: str | None, moved: float | None = None,
          lower_is_better: bool = True, help: str | None = None) -> None:
    """A metric card; ``moved`` is the delta as the number shown: zero or None (no change, or noise) is
    grey, a change is coloured by whether it helps."""
    flat = delta is None or not moved
    colour = "off" if flat else ("inverse" if lower_is_better else "normal")
    column.metric(label, value, delta, delta_color=colour, delta_arrow="off" if flat else "auto", border=True,
                  help=help)


def measurable(pruned: dict) -> bool:
    """Whether the paired runs tell the pruned model's latency apart from the dense one's."""
    speedup = pruned.get("speedup") or {}
    return bool(speedup) and not speedup.get("same_model") and bool(speedup.get("measurable"))


def latency_change(pruned: dict) -> float | None:
    """The latency change in whole percents from the paired runs; 0 within noise, None unmeasured."""
    speedup = pruned.get("speedup")
    if not speedup:
        return None
    return formatting.shown_change(1 / speedup["p50"], 1.0) if measurable(pruned) else 0.0


def _delta(new: float | None, old: float | None) -> tuple[str | None, float | None]:
    """(delta text, the change as shown) of a relative change, for ``_card``."""
    return formatting.change(new, old), formatting.shown_change(new, old)


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
    return f"{speedup['p50']:.2f}×", f"{interval} (95%)", f"{latency_change(pruned):+.0f}%"


def _speed_card(column, pruned: dict) -> None:
    """The Speedup card: its interval in green when faster, red when slower, grey when within noise."""
    value, delta, _ = speed_values(pruned)
    slower = measurable(pruned) and pruned["speedup"]["p50"] < 1.0
    measured = measurable(pruned)
    arrow = ("down" if slower else "up") if measured else "off"
    column.metric("Speedup", value, delta, border=True, delta_color="inverse" if slower else
                  ("normal" if measured else "off"), delta_arrow=arrow,
                  help=f"{TERMS['speedup']}: the median over pairs of runs timed in alternation, with its 95% "
                       f"interval; 'no measurable change' when the interval holds 1x or it is within "
                       f"{SPEEDUP_FLOOR:.0%} of 1x")


def cards(report: dict) -> None:
    """Metric cards of the pruned model with deltas against the dense one (the one dense measurement)."""
    pruned, dense = report["pruned"], report["baseline"]
    quality = formatting.quality(pruned, dense)
    _, _, latency_delta = speed_values(pruned)
    top, middle, bottom = st.columns(3), st.columns(3), st.columns(3)
    splits = report.get("settings", {}).get("splits")
    _card(top[0], quality["title"], quality["value"], quality["delta"], quality["moved"],
          lower_is_better=quality.get("lower_is_better", False),
          help=quality["help"] + (f". {splits}" if splits else "") + f". {TERMS['pts']}")
    _card(top[1], "p50 latency", formatting.milliseconds(pruned["latency_ms"]["p50"]), latency_delta,
          latency_change(pruned), help=f"{TERMS['p50']}. Dense: {formatting.milliseconds(dense['latency_ms']['p50'])}; "
                                       "the change comes from runs timed in alternation with the dense model")
    _speed_card(top[2], pruned)
    _card(middle[0], "MACs", formatting.count(pruned["macs"]), *_delta(pruned["macs"], dense["macs"]),
          help=TERMS["macs"])
    _card(middle[1], "Parameters", formatting.count(pruned["nonzero_params"]),
          *_delta(pruned["nonzero_params"], dense["nonzero_params"]), help=TERMS["params"])
    _card(middle[2], "Weights removed", formatting.percent(pruned.get("removed")), None, help=TERMS["removed"])
    _card(bottom[0], "File size", formatting.size(pruned["onnx_bytes"]),
          *_delta(pruned["onnx_bytes"], dense["onnx_bytes"]), help=TERMS["size"])
    _card(bottom[1], "Compressed", formatting.size(pruned["compressed_bytes"]),
          *_delta(pruned["compressed_bytes"], dense["compressed_bytes"]), help=TERMS["compressed"])
    second = formatting.fidelity(pruned)
    if second is not None:
        _card(bottom[2], second[0], second[1], None, help=second[2])
    if pruned.get("generation"):
        generation_cards(pruned["generation"])


def generation_cards(figures: dict) -> None:
    """Decode and prefill speed of a language model, each with its speedup over the dense model, paired."""
    left, right = st.columns(2)
    for column, part, words in ((left, "decode", f"one token at a time after the prompt, "
                                                 f"{figures['new_tokens']} greedy steps"),
                                (right, "prefill", f"the {figures['prompt_tokens']}-token prompt in one call")):
        value, delta = formatting.tokens_per_second(figures, part)
        _card(column, part.capitalize(), value, delta, lower_is_better=False,
              help=f"{part} speed on the KV-cache ONNX graph in ONNX Runtime: {words}; the change is the median "
                   f"speedup over rounds timed in alternation with the dense model, with its 95% interval")


def read_out(report: dict, stale: bool = False) -> None:
    """The strip and the cards; faded, under a 'measuring' line, when ``stale``."""
    if stale:
        st.html(STALE_STYLE)
        st.caption(":material/hourglass_top: Measuring the new plan on ONNX Runtime… the figures below are "
                   "the previous plan's.")
    with st.container(key="tune-stale" if stale else "tune-fresh"):
        strip(report)
        cards(report)
