"""Plain-language notes beside a report's figures: parity, what INT8 did, why latency did (not) move.

The one place the "zeros do not speed up" explanation is written; the CLI and the dashboard show
these notes as they are.
"""
from __future__ import annotations

from core.deploy import fidelity
from core.prune.plan import Plan

# Relative tolerance of the torch vs ONNX Runtime parity check (FP32 artifacts).
PARITY_TOLERANCE = 1e-3


def report_notes(plan: Plan | None, pruned: dict, baseline: dict, quantize: str | None) -> list[str]:
    """Plain-language notes that keep the figures honest: parity, INT8 effect, why latency did (not) move.

    The one place the "zeros do not speed up" explanation is written; the CLI and the dashboard show these.
    """
    notes = _parity_notes(pruned) + fidelity.constant_class_note(baseline) + fidelity.perplexity_note(baseline)
    if pruned.get("quantized"):
        notes += _quantize_notes(pruned, baseline, quantize)
    if plan is not None:
        notes += _latency_notes(plan, pruned, baseline, quantize)
    return notes


def speed_text(pruned: dict) -> str:
    """'faster than dense (1.83x, 95% interval 1.71-1.95x)' or 'no measurable change in latency (...)'."""
    speedup = pruned.get("speedup")
    if not speedup:
        return "latency not compared"
    if speedup.get("same_model"):
        return "the same graph as the dense model"
    if speedup.get("same_kernels"):
        return "no change in latency (1.00x: the dense graph and its kernels run, only weight values differ)"
    interval = f"{speedup['p50']:.2f}x, 95% interval {speedup['low']:.2f}-{speedup['high']:.2f}x"
    if not speedup["measurable"]:
        return f"no measurable change in latency ({interval}: run-to-run noise)"
    return f"{'faster' if speedup['p50'] > 1 else 'slower'} than dense ({interval})"


def _parity_notes(pruned: dict) -> list[str]:
    diff = pruned.get("max_abs_diff")
    if diff is None:
        return []
    if pruned.get("quantized"):
        return [f"INT8 outputs differ from the FP32 torch model by up to {diff:.3g}: quantization error, "
                f"not an export problem"]
    if pruned.get("parity_ok") is False:
        return [f"warning: ONNX Runtime and torch outputs differ by up to {diff:.3g} (tolerance "
                f"{PARITY_TOLERANCE:g} relative); the exported graph may not match the model"]
    return []


def _quantize_notes(pruned: dict, baseline: dict, quantize: str | None) -> list[str]:
    return [f"{quantize} against dense FP32: {speed_text(pruned)}; file {baseline['onnx_bytes']:,} -> "
            f"{pruned['onnx_bytes']:,} bytes"]


def _latency_notes(plan: Plan, pruned: dict, baseline: dict, quantize: str | None) -> list[str]:
    if plan.removes_blocks and plan.sparsity == 0 and not plan.layers:
        if pruned["macs"] is None or baseline["macs"] is None:
            return []
        return [f"whole blocks removed from the graph: MACs {baseline['macs']:,} -> {pruned['macs']:,}; "
                f"{speed_text(pruned)}"]
    if plan.granularity == "channel":
        if pruned["macs"] is None or baseline["macs"] is None or pruned["macs"] >= baseline["macs"]:
            return []
        return [f"channel pruning removed whole filters: MACs {baseline['macs']:,} -> {pruned['macs']:,}; "
                f"{speed_text(pruned)}"]
    if not pruned.get("removed"):
        return []
    compressed = f"{baseline['compressed_bytes']:,} -> {pruned['compressed_bytes']:,} bytes"
    if quantize:
        return [f"{plan.granularity} zeros add no speed of their own: the latency and file size above change "
                f"because of INT8; the zeros only make the file compress better ({compressed} compressed)"]
    return [f"{speed_text(pruned)}: {plan.granularity} zeros stay in the dense ONNX graph and ONNX Runtime's CPU "
            f"kernels multiply them anyway, so they neither speed it up nor shrink the .onnx file, only its "
            f"compressed size ({compressed}); prune whole channels (granularity 'channel') or quantize to "
            f"INT8 for speed"]
