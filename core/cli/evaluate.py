"""prunelab evaluate: every metric of the exported model on ONNX Runtime, dense and (with --plan) pruned."""
from __future__ import annotations

import math
import sys

from core.api import QUANTIZE_MODES, Plan, check_plan, evaluate
from core.cli.options import add_metric_argument, add_model_arguments, model_from, print_json
from core.limits import clip
from core.outputs import TOP_DETECTIONS


def add_measure_arguments(parser) -> None:
    """--batch-size, --threads, --quantize and --json, shared with ``prunelab prune``."""
    parser.add_argument("--batch-size", type=int, default=1, help="items per timed run (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--quantize", choices=QUANTIZE_MODES,
                        help="also quantize to INT8: int8 (static for conv models, else dynamic), "
                             "int8-static or int8-dynamic")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="measure accuracy, latency, size and MACs on ONNX Runtime")
    add_model_arguments(parser)
    add_metric_argument(parser)
    parser.add_argument("--plan", help="a plan file (.yaml or .json) to prune with before measuring")
    add_measure_arguments(parser)
    parser.set_defaults(func=run)


def load_plan(path: str) -> Plan:
    """A plan file, including one written by ``prunelab prune`` (its ``effective_sparsity`` is a record,
    not a setting, and is skipped by Plan.from_dict)."""
    return Plan.load(path)


def run(args) -> int:
    handle = model_from(args)
    plan = load_plan(args.plan) if args.plan else None
    if plan is not None:
        check_plan(handle, plan)
    progress(f"measuring {handle.name} on ONNX Runtime ({args.threads} threads, batch {args.batch_size})"
             + (f", {args.quantize}" if args.quantize else ""))
    report = evaluate(handle, plan, batch_size=args.batch_size, threads=args.threads, quantize=args.quantize)
    if args.json:
        print_json(report)
    else:
        print_report(report)
    return 0


def progress(text: str) -> None:
    print(f"prunelab: {text} ...", file=sys.stderr, flush=True)


ROWS = [  # (label, metric key, format)
    ("accuracy", "accuracy", "percent"), ("perplexity", "perplexity", "float"),
    ("next-token accuracy", "next_token_accuracy", "percent"), ("agreement", "agreement", "percent"),
    ("loss", "loss", "float"),
    ("cosine to dense", "cosine", "float"), ("cosine p5", "cosine_p5", "float"),
    ("nearest-neighbour agr.", "neighbour_agreement", "percent"),
    (f"top-{TOP_DETECTIONS} detections kept", "detections", "percent"),
    ("output error (rel L2)", "output_error", "float"), ("KL to dense", "kl", "float"),
    ("latency p50 (ms)", ("latency_ms", "p50"), "ms"), ("latency p90 (ms)", ("latency_ms", "p90"), "ms"),
    ("latency p99 (ms)", ("latency_ms", "p99"), "ms"), ("throughput (items/s)", "throughput", "int"),
    ("prefill (ms)", ("generation", "prefill_ms"), "ms"),
    ("prefill (tokens/s)", ("generation", "prefill_tokens_per_s"), "int"),
    ("decode (ms/token)", ("generation", "decode_ms_per_token"), "ms"),
    ("decode (tokens/s)", ("generation", "decode_tokens_per_s"), "int"),
    ("session (ms)", "session_ms", "ms"), ("params", "params", "int"), ("nonzero params", "nonzero_params", "int"),
    ("zero weights (prunable)", "sparsity", "percent"), ("weights removed", "removed", "percent"),
    ("MACs", "macs", "int"), ("ONNX bytes", "onnx_bytes", "int"),
    ("compressed bytes", "compressed_bytes", "int"), ("max |torch - ORT|", "max_abs_diff", "float"),
]


def _value(metrics: dict, key):
    if isinstance(key, tuple):
        return metrics[key[0]][key[1]]
    return metrics.get(key)


def _format(value, kind: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return {"percent": f"{value:.2%}", "float": f"{value:.4g}", "ms": f"{value:.3f}",
            "int": f"{int(round(value)):,}"}[kind]


def print_report(report: dict) -> None:
    """A baseline / pruned table with the change as a ratio, then the notes."""
    settings = report["settings"]
    plan = report["plan"]
    title = ("dense" if plan is None
             else f"{plan['granularity']} {plan['criterion']} {plan['scope']} {plan['sparsity']:g}")
    print(f"{report['model']}: {title}{' + ' + settings['quantize'] if settings['quantize'] else ''} on "
          f"{settings['data']}, ONNX Runtime CPU, {settings['threads']} threads, batch {settings['batch_size']}")
    if report["baseline"].get("context"):
        print(f"language model: next-token figures over windows of {report['baseline']['context']} tokens, "
              f"stride {report['baseline']['stride']}, on {settings['splits'].split(';')[0]}")
    measured = "pruned" if plan is not None else (settings["quantize"] or "measured")
    print(f"{'metric':<22} {'baseline':>14} {measured:>14} {'ratio':>8}")
    embedding = report["baseline"].get("label") == "cosine"
    for label, key, kind in ROWS:
        if key == "accuracy" and report["baseline"]["accuracy"] is None:
            continue
        source = report["pruned"] if key == "removed" else report["baseline"]  # the dense model removes nothing
        missing = (key[0] if isinstance(key, tuple) else key) not in source  # older reports lack new rows
        if missing or (key in ("agreement", "loss") and embedding):
            continue  # an embedding's agreement is its nearest-neighbour row
        before, after = _value(report["baseline"], key), _value(report["pruned"], key)
        before = 0.0 if key == "removed" else before
        if key == "loss" and before is None and after is None:
            continue  # no labels, no loss
        ratio = f"{after / before:.2f}x" if isinstance(before, (int, float)) and before and after is not None else ""
        ratio = "" if key in ("output_error", "kl") else ratio
        if isinstance(key, tuple) and key[0] == "generation":
            before, ratio = _paired(report, key[1], before)
        elif key == ("latency_ms", "p50") and report["pruned"].get("speedup"):
            speedup = report["pruned"]["speedup"]  # the dense p50 and the ratio of the paired runs
            before, ratio = speedup.get("reference_p50", before), f"{1.0 / speedup['p50']:.2f}x"
        print(f"{label:<22} {_format(before, kind):>14} {_format(after, kind):>14} {ratio:>8}")
        _print_interval(report["pruned"], key, kind)
    _print_generation(report["pruned"].get("generation"))
    _print_outputs(report["pruned"])
    _print_metrics(report)
    for note in report["notes"]:
        print(f"note: {note}")


def _print_interval(pruned: dict, key, kind: str) -> None:
    """Under the headline row, its 95% interval over the items scored, where the report has one."""
    interval = pruned.get("quality_interval")
    if not interval or key != pruned.get("label"):
        return
    bounds = f"{_format(interval['low'], kind)}-{_format(interval['high'], kind)}"
    method = f", {interval['method']}" if interval.get("method") else ""
    print(f"{'  95% interval':<22} {'':>14} {bounds:>14}   ({interval['items']} items{method})")


def _paired(report: dict, key: str, before):
    """(dense figure, ratio) of a prefill or decode row: both from the rounds timed in alternation with the
    pruned model, so the ratio is the paired speedup printed below the table (its inverse for times)."""
    figures = report["pruned"].get("generation") or {}
    speedup = (figures.get("speedup") or {}).get(key.split("_")[0])
    if not speedup:
        return before, ""
    before = (figures.get("dense") or {}).get(key, before)
    ratio = speedup["p50"] if key.endswith("tokens_per_s") else 1.0 / speedup["p50"]
    return before, f"{ratio:.2f}x"


def _print_metrics(report: dict) -> None:
    """The user's own metric (--metric), dense and pruned."""
    dense, pruned = report["baseline"].get("metrics") or {}, report["pruned"].get("metrics") or {}
    for name, before in dense.items():
        after = pruned.get(name)
        ratio = f"{after / before:.2f}x" if before and after is not None else ""
        print(f"{clip(name, 22):<22} {_format(before, 'float'):>14} {_format(after, 'float'):>14} {ratio:>8}")


def _print_outputs(pruned: dict) -> None:
    """One line per output of a model returning several tensors: its error, agreement and parity."""
    parity = pruned.get("parity_outputs") or {}
    for name, row in (pruned.get("outputs") or {}).items():
        agreement = "" if row["agreement"] is None else f", agreement {row['agreement']:.2%}"
        gap = f", max |torch - ORT| {parity[name]:.3g}" if name in parity else ""
        print(f"output {name} {tuple(row['shape'])}: error (rel L2) {row['error']:.4g}{agreement}{gap}")


def _print_generation(figures: dict | None) -> None:
    """What the prefill and decode rows measured, and their paired speedups."""
    if not figures:
        return
    graph = f"{figures['quantized']} KV-cache ONNX graph" if figures.get("quantized") else "KV-cache ONNX graph"
    print(f"generation: {graph}, prefill of {figures['prompt_tokens']} prompt tokens, then "
          f"{figures['new_tokens']} greedy decode steps, batch {figures['batch']}, medians of {figures['rounds']} "
          f"rounds timed in alternation with the dense FP32 model (the baseline of these rows; their ratio is the "
          f"median of the per-round ratios, which uneven load can set apart from the ratio of the two medians)")
    for part, speedup in figures.get("speedup", {}).items():
        if speedup.get("same_kernels"):
            print(f"{part} speedup: 1.00x (the dense graph's kernels)")
        else:
            print(f"{part} speedup: {speedup['p50']:.2f}x (95% interval {speedup['low']:.2f}-{speedup['high']:.2f}x"
                  f"{'' if speedup['measurable'] else ', within noise'})")
