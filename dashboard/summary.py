"""The Tune page's read-out: a Dense -> Pruned strip in plain words, then metric cards with deltas.

``strip`` and ``cards`` take a measured report (see core.deploy.evaluate) and draw it; nothing
here measures. A report drawn while a newer plan is measured is shown faded under a "measuring"
line (``stale=True``), so the screen never passes old figures off as new ones. A report still
being refined (``pruned["progress"]["final"]`` False) says on each figure how far it has got.
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
    return ("File size (.onnx)", "size", "onnx_bytes") if shrinks else ("Compressed (gzip)", "compressed",
                                                                         "compressed_bytes")


def _progress(pruned: dict) -> dict | None:
    """How far a report still being refined has got ({"items", "of", "runs"}), None once it is final."""
    progress = pruned.get("progress") or {}
    return None if progress.get("final", True) else progress


def _speed_words(pruned: dict) -> str:
    """'1.4x faster' when the paired runs show a change, 'no measurable change' when they do not."""
    speedup = pruned.get("speedup")
    if not speedup:
        return ""
    if speedup.get("same_kernels"):
        return "same kernels as dense: no change"
    if speedup.get("same_model") or not speedup.get("measurable"):
        return "no measurable change"
    ratio = speedup["p50"]
    return f"{formatting.times(ratio)} faster" if ratio > 1 else f"{formatting.times(1 / ratio)} slower"


def strip_items(report: dict) -> list[tuple[str, str, str]]:
    """(label, 'dense -> pruned' text, help) for accuracy, latency, size and MACs, and removable blocks when
    the model has any."""
    pruned, dense = report["pruned"], report["baseline"]
    quality = formatting.quality(pruned, dense)
    dense_quality = formatting.quality(dense)
    latency, dense_latency = pruned["latency_ms"]["p50"], dense_p50(report)
    size_label, size_help, field = _size_pair(report)
    speed = _speed_words(pruned)
    # Both figures are what was measured; the verdict comes from the paired runs, which alone compare
    # the two models under the same load.
    paired = "" if (pruned.get("speedup") or {}).get("same_kernels") else " in paired runs"
    after = formatting.milliseconds(latency) + (f" ({speed}{paired})" if speed else "")
    items = [
        (quality["title"], f"{dense_quality['value']} → {quality['value']}", quality["help"]),
        ("Latency (p50)", f"{formatting.milliseconds(dense_latency)} → {after}", TERMS["p50"]),
        (size_label, f"{formatting.size(dense[field])} → {_size(pruned[field])}", TERMS[size_help]),
        ("Work per input", f"{formatting.count(dense['macs'])} → {formatting.count(pruned['macs'])} MACs",
         TERMS["macs"]),
    ]
    blocks = report.get("blocks") or {}
    if blocks.get("dense"):
        left = blocks["dense"] - len(blocks["removed"])
        items.append(("Blocks", f"{blocks['dense']} → {left}", TERMS["blocks"]))
    return items


def dense_p50(report: dict) -> float:
    """The dense p50 to set beside the pruned one: from the runs timed in alternation with the pruned model
    when there were any (the same load), else the one dense measurement taken earlier."""
    speedup = report["pruned"].get("speedup") or {}
    return speedup.get("reference_p50") or report["baseline"]["latency_ms"]["p50"]


def _size(value: int | None) -> str:
    return "compressing…" if value is None else formatting.size(value)


def what_was_pruned(report: dict) -> str:
    """'Unstructured l1, 30.0% of prunable weights removed (every layer 30%)' from the report's plan."""
    plan, pruned = report.get("plan"), report["pruned"]
    if not plan:
        return "Dense: nothing pruned"
    removed = pruned.get("removed") or 0.0
    spread = "per-layer targets" if plan.get("layers") else f"every layer {plan.get('sparsity', 0):.0%}"
    int8 = ", then INT8" if pruned.get("quantized") else ""
    return f"{plan['granularity'].capitalize()} {plan['criterion']}, {removed:.1%} of prunable weights removed " \
           f"({spread}{int8})"


def quality_verdict(report: dict, accepted: tuple[float, str] | None) -> str:
    """'cosine 0.934, 0.066 below dense: more than the 0.010 the Goal box accepts' (so far, while refined)."""
    pruned, dense = report["pruned"], report["baseline"]
    label = pruned.get("label", "accuracy")
    value, reference = pruned.get(label), dense.get(label)
    if value is None or reference is None:
        return ""
    shown = formatting.quality(pruned, dense)["value"]
    drop = reference - value
    words = f"{drop:.3f}" if label == "cosine" else f"{100 * drop:.1f} pts"
    text = f"{label} {shown}, {words} below dense" if drop > 0 else f"{label} {shown}, no lower than dense"
    if accepted is not None and drop > 0:
        verdict = "within" if drop <= accepted[0] else "more than"
        text += f": {verdict} the {accepted[1]} the Goal box accepts"
    progress = _progress(pruned)
    return text + (f" (so far: {progress['items']} of {progress['of']} items)" if progress else "")


def speed_verdict(report: dict) -> str:
    """Why the pruned model is (not) faster, in one sentence."""
    pruned, dense = report["pruned"], report["baseline"]
    speedup = pruned.get("speedup") or {}
    if speedup.get("same_model"):
        return "the same graph as dense"
    if speedup.get("same_kernels"):
        return ("not faster: the zeros stay in the dense graph and ONNX Runtime's CPU kernels multiply them "
                "anyway (prune channels or quantize to INT8 for speed)")
    fewer = formatting.change(pruned.get("macs"), dense.get("macs")) or "no change in"
    if not speedup.get("measurable"):
        return f"no measurable change in latency ({fewer} MACs)"
    return f"{_speed_words(pruned)} in paired runs ({fewer} MACs)"


def headline(report: dict, accepted: tuple[float, str] | None = None) -> None:
    """What was pruned, whether the quality is acceptable and why it is (not) faster: the first lines a
    stakeholder reads."""
    parts = [part for part in (quality_verdict(report, accepted), speed_verdict(report)) if part]
    text = "; ".join(parts)
    st.markdown(f"**{what_was_pruned(report)}**. {text[:1].upper() + text[1:]}.")


def strip(report: dict) -> None:
    """One bordered row: 'Dense -> Pruned' for the four figures a stakeholder asks about."""
    with st.container(border=True):
        st.markdown("**Dense → Pruned**", help="left of the arrow: the model as loaded; right: with this plan, "
                                               "both measured the same way on ONNX Runtime")
        items = strip_items(report)
        for column, (label, text, help_text) in zip(st.columns(len(items)), items):
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
    if speedup.get("same_kernels"):
        return "1.00×", "same kernels", "no measurable change"
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
    column.metric("Speedup", value, _runs(delta, pruned), border=True, delta_color="inverse" if slower else
                  ("normal" if measured else "off"), delta_arrow=arrow,
                  help=f"{TERMS['speedup']}: the median over pairs of runs timed in alternation, with its 95% "
                       f"interval; 'no measurable change' when the interval holds 1x or it is within "
                       f"{SPEEDUP_FLOOR:.0%} of 1x")


def _runs(delta: str | None, pruned: dict) -> str | None:
    """``delta`` with ' · 8 runs' while a timed figure is refined (as is once final, or for the dense kernels)."""
    progress = _progress(pruned)
    if progress is None or (pruned.get("speedup") or {}).get("same_kernels"):
        return delta
    return f"{delta or '…'} · {progress['runs']} runs"


def _quality_card(column, report: dict) -> None:
    """The headline quality; while refined, its delta names the items scored and the 95% interval."""
    pruned, dense = report["pruned"], report["baseline"]
    quality = formatting.quality(pruned, dense)
    splits = report.get("settings", {}).get("splits")
    delta, moved, progress = quality["delta"], quality["moved"], _progress(pruned)
    interval = pruned.get("quality_interval")
    if progress is not None:
        delta, moved = f"{progress['items']}/{progress['of']} items", None
        if interval:
            delta += f", 95%: {formatting.quality({**pruned, pruned['label']: interval['low']})['value']}–" \
                     f"{formatting.quality({**pruned, pruned['label']: interval['high']})['value']}"
    _card(column, quality["title"], quality["value"], delta, moved,
          lower_is_better=quality.get("lower_is_better", False),
          help=quality["help"] + (f". {splits}" if splits else "") + f". {TERMS['pts']}")


def cards(report: dict) -> None:
    """Metric cards of the pruned model with deltas against the dense one (the one dense measurement)."""
    pruned, dense = report["pruned"], report["baseline"]
    _, _, latency_delta = speed_values(pruned)
    top, middle, bottom = st.columns(3), st.columns(3), st.columns(3)
    _quality_card(top[0], report)
    _card(top[1], "p50 latency", formatting.milliseconds(pruned["latency_ms"]["p50"]),
          _runs(latency_delta, pruned), latency_change(pruned),
          help=f"{TERMS['p50']}. Dense: {formatting.milliseconds(dense_p50(report))}; "
               "the change comes from runs timed in alternation with the dense model")
    _speed_card(top[2], pruned)
    _card(middle[0], "MACs", formatting.count(pruned["macs"]), *_delta(pruned["macs"], dense["macs"]),
          help=TERMS["macs"])
    _card(middle[1], "Parameters", formatting.count(pruned["nonzero_params"]),
          *_delta(pruned["nonzero_params"], dense["nonzero_params"]), help=TERMS["params"])
    _card(middle[2], "Weights removed", formatting.percent(pruned.get("removed")), None, help=TERMS["removed"])
    _card(bottom[0], "File size (.onnx)", formatting.size(pruned["onnx_bytes"]),
          *_delta(pruned["onnx_bytes"], dense["onnx_bytes"]), help=TERMS["size"])
    _card(bottom[1], "Compressed (gzip)", _size(pruned["compressed_bytes"]),
          *_delta(pruned["compressed_bytes"], dense["compressed_bytes"]), help=TERMS["compressed"])
    second = formatting.fidelity(pruned)
    if second is not None:
        _card(bottom[2], second[0], second[1], None, help=second[2])
    own_metric_cards(pruned, dense)
    if pruned.get("generation"):
        generation_cards(pruned["generation"])


def own_metric_cards(pruned: dict, dense: dict | None = None) -> None:
    """One card per number the model's own metric (file.py:function) returned, with its change from dense."""
    numbers, before = pruned.get("metrics") or {}, (dense or {}).get("metrics") or {}
    for column, (name, value) in zip(st.columns(max(3, len(numbers))), numbers.items()):
        old = before.get(name) if dense is not None else None
        moved = None if old is None else round(value - old, 4)
        _card(column, name, f"{value:.4g}", None if not moved else f"{moved:+.4g}", moved, lower_is_better=False,
              help="your own metric, on the same test items as the other figures"
                   + ("" if old is None else f"; dense {old:.4g}"))


def generation_cards(figures: dict) -> None:
    """Decode and prefill speed of a language model, each with its speedup over the dense model, paired."""
    left, right = st.columns(2)
    for column, part, words in ((left, "decode", f"one token at a time after the prompt, "
                                                 f"{figures['new_tokens']} greedy steps"),
                                (right, "prefill", f"the {figures['prompt_tokens']}-token prompt in one call")):
        value, delta = formatting.tokens_per_second(figures, part)
        graph = f"{figures['quantized']} KV-cache ONNX graph" if figures.get("quantized") else "KV-cache ONNX graph"
        paired = figures.get("dense")  # the dense model in the same rounds, the figure the change compares with
        dense = f" (dense {paired[f'{part}_tokens_per_s']:,.0f} tok/s in those rounds)" if paired else ""
        _card(column, f"{part.capitalize()}{' (INT8)' if figures.get('quantized') else ''}", value, delta,
              lower_is_better=False,
              help=f"{part} speed on the {graph} in ONNX Runtime: {words}; the change is the median speedup over "
                   f"rounds timed in alternation with the dense FP32 model{dense}, with its 95% interval")


def read_out(report: dict, stale: bool = False, accepted: tuple[float, str] | None = None) -> None:
    """The strip and the cards; faded, under a 'measuring' line, when ``stale``."""
    if stale:
        st.html(STALE_STYLE)
        st.caption(":material/hourglass_top: Measuring the new plan on ONNX Runtime… the figures below are "
                   "the previous plan's.")
    progress = None if stale else _progress(report["pruned"])
    if progress is not None:
        st.progress(progress["items"] / max(1, progress["of"]), text=progress_text(report["pruned"]))
    with st.container(key="tune-stale" if stale else "tune-fresh" if progress is None else "tune-live"):
        headline(report, accepted)
        strip(report)
        cards(report)


def progress_text(pruned: dict) -> str:
    """'Refining: quality on 56 of 240 test items, latency from 8 paired runs; ...' for a report in stages."""
    progress = _progress(pruned)
    timed = "the dense kernels' latency" if (pruned.get("speedup") or {}).get("same_kernels") else \
        f"latency from {progress['runs']} paired runs"
    return (f":material/progress_activity: Refining: quality on {progress['items']} of {progress['of']} test "
            f"items, {timed}; the figures settle once every item is scored and the full timing is done.")
