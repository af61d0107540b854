"""Numbers in people's units: sizes in KB/MB, times in µs/ms, shares in %, counts in k/M/G.

Used by the HTML report (core.history.report) and the dashboard, so both speak the same way.
Every function takes None and returns '–' for it.
"""
from __future__ import annotations

import re

MISSING = "–"


def short(value: float) -> str:
    """Three significant digits at most: 629.9 -> '630', 15.26 -> '15.3', 1.234 -> '1.23'."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def count(value: float | None) -> str:
    """12_345_678 -> '12.3 M'."""
    if value is None:
        return MISSING
    for limit, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= limit:
            return f"{short(value / limit)}{suffix}"
    return f"{value:.0f}"


def size(value: float | None) -> str:
    """Bytes -> '1.4 MB' (powers of 1024)."""
    if value is None:
        return MISSING
    for limit, suffix in ((2**30, "GB"), (2**20, "MB"), (2**10, "KB")):
        if value >= limit:
            return f"{short(value / limit)} {suffix}"
    return f"{value:.0f} B"


def milliseconds(value: float | None) -> str:
    """A time given in ms: 0.0604 -> '60.4 µs', 2.65 -> '2.65 ms', 1234 -> '1.23 s'."""
    if value is None:
        return MISSING
    if value >= 1000:
        return f"{short(value / 1000)} s"
    return f"{short(1000 * value)} µs" if value < 1 else f"{short(value)} ms"


def percent(value: float | None) -> str:
    """0.1234 -> '12.3%'; below 1% two decimals, so a small nonzero share does not read as zero."""
    if value is None:
        return MISSING
    return f"{100 * value:.2f}%" if 0 < abs(value) < 0.01 else f"{100 * value:.1f}%"


def times(ratio: float | None) -> str:
    """1.43 -> '1.4x'."""
    return MISSING if ratio is None else f"{ratio:.1f}x" if ratio < 10 else f"{ratio:.0f}x"


# Metric names as stored in a report (flattened), with a label and the function that formats them.
METRICS = {
    "accuracy": ("Accuracy", percent), "agreement": ("Agreement with the dense model", percent),
    "perplexity": ("Perplexity on the test text", lambda value: MISSING if value is None else f"{value:.2f}"),
    "next_token_accuracy": ("Next-token accuracy", percent),
    "kl": ("KL divergence to the dense model", lambda value: MISSING if value is None else f"{value:.3g}"),
    "generation.prefill_tokens_per_s": ("Prefill (tokens/s)", lambda value: MISSING if value is None
                                        else f"{value:,.0f}"),
    "generation.decode_tokens_per_s": ("Decode (tokens/s)", lambda value: MISSING if value is None
                                       else f"{value:,.0f}"),
    "loss": ("Loss (cross-entropy)", lambda value: MISSING if value is None else f"{value:.3f}"),
    "latency_ms.p50": ("Latency, median (p50)", milliseconds),
    "latency_ms.p90": ("Latency, p90", milliseconds), "latency_ms.p99": ("Latency, p99", milliseconds),
    "latency_ms.mean": ("Latency, mean", milliseconds),
    "throughput": ("Throughput (items/s)", lambda value: MISSING if value is None else f"{value:,.0f}"),
    "sparsity": ("Sparsity (zero share of prunable weights)", percent),
    "removed": ("Weights removed (zero or gone)", percent),
    "params": ("Parameters", count), "nonzero_params": ("Nonzero parameters", count),
    "macs": ("MACs per item (multiply-accumulates)", count),
    "onnx_bytes": ("File size (.onnx)", size), "compressed_bytes": ("Compressed size (gzip)", size),
    "max_abs_diff": ("Largest ONNX Runtime vs torch difference",
                     lambda value: MISSING if value is None else f"{value:.1e}"),
}


def metric(name: str, value) -> str:
    """A stored metric's value in people's units ('latency_ms.p50', 0.043 -> '43.0 µs')."""
    formatter = METRICS.get(name, (name, None))[1]
    if formatter is not None:
        return formatter(value)
    return MISSING if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def metric_label(name: str) -> str:
    return METRICS.get(name, (name.replace("_", " "), None))[0]


_BYTES = re.compile(r"(\d[\d,]*) -> (\d[\d,]*) bytes")
_MS = re.compile(r"(\d+\.\d+) -> (\d+\.\d+) ms")


def readable(note: str) -> str:
    """A measurement note with bytes and milliseconds in people's units ('193,515 bytes' -> '189 KB')."""
    note = _BYTES.sub(lambda found: f"{size(int(found[1].replace(',', '')))} -> "
                                    f"{size(int(found[2].replace(',', '')))}", note)
    return _MS.sub(lambda found: f"{milliseconds(float(found[1]))} -> {milliseconds(float(found[2]))}", note)
