"""prunelab profile: measured time per layer on ONNX Runtime, dense and (with --plan) pruned side by side."""
from __future__ import annotations

import sys

from core.api import Plan, check_plan, profile_plan
from core.cli.options import add_model_arguments, model_from, print_json
from core.deploy.profile import PROFILE_RUNS
from core.errors import PrunelabError


def register(subparsers) -> None:
    parser = subparsers.add_parser("profile", help="measured ONNX Runtime time per layer, dense and pruned")
    add_model_arguments(parser)
    parser.add_argument("--plan", help="a plan file (.yaml or .json): profile the pruned model beside the dense one")
    parser.add_argument("--batch-size", type=int, default=1, help="items per profiled run (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--runs", type=int, default=PROFILE_RUNS,
                        help=f"at most this many profiled runs per model after a warm-up, fewer once the "
                             f"medians are stable (default {PROFILE_RUNS})")
    parser.add_argument("--top", type=int, default=0, help="print only the N layers that take longest (default all)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON: layers [{name, ms, ...}], other_ms, overhead_ms, p50_ms, profiled_p50_ms, "
                             "node_cost_us, profiler_ms, dense, pruned")
    parser.set_defaults(func=run)


def run(args) -> int:
    for name in ("batch_size", "threads", "runs"):
        if not 1 <= getattr(args, name) <= 10_000:
            raise PrunelabError(f"--{name.replace('_', '-')} must be between 1 and 10000, got {getattr(args, name)}")
    handle = model_from(args)
    plan = Plan.load(args.plan) if args.plan else None
    if plan is not None:
        check_plan(handle, plan)
    print(f"prunelab: profiling {handle.name} on ONNX Runtime (up to {args.runs} runs"
          f"{' each, dense and pruned in turn' if plan else ''}) ...", file=sys.stderr, flush=True)
    report = profile_plan(handle, plan, batch_size=args.batch_size, threads=args.threads, runs=args.runs)
    if args.json:
        print_json(as_json(report))
    else:
        print_table(report, args.top)
    return 0


def as_json(report: dict) -> dict:
    """The report with the profiled model's figures on top: the pruned model's with a plan, else the dense one's."""
    measured = report["pruned"] or report["dense"]
    layers = [{"name": row["name"], "ms": row["ms_pruned"] if report["pruned"] else row["ms_dense"], **row}
              for row in report["rows"]]
    return {"model": report["model"], "plan": report["plan"], "settings": report["settings"], "layers": layers,
            "other_ms": measured["other_ms"], "other": measured["other"], "overhead_ms": measured["overhead_ms"],
            "p50_ms": measured["p50_ms"], "profiled_p50_ms": measured["profiled_p50_ms"],
            "node_cost_us": measured["node_cost_us"], "profiler_ms": measured["profiler_ms"],
            "dense": report["dense"], "pruned": report["pruned"]}


def _ms(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_table(report: dict, top: int = 0) -> None:
    """Per-layer rows (longest first with --top), then what lies outside layers and the reconciliation."""
    dense, pruned = report["dense"], report["pruned"]
    rows = report["rows"]
    if top:
        rows = sorted(rows, key=lambda row: -row["ms_dense"])[:top]
    width = max([len("layer")] + [len(row["name"]) for row in rows])
    if pruned:
        print(f"{'layer':<{width}} {'ms dense':>9} {'ms pruned':>9} {'ms saved':>9} {'share':>6} {'time/MAC':>8}")
    else:
        print(f"{'layer':<{width}} {'ms':>9} {'share':>6} {'us/MMAC':>8}")
    for row in rows:
        share = row["ms_dense"] / dense["p50_ms"] if dense["p50_ms"] else 0.0
        if pruned:
            per_mac = "-" if row["ms_per_mac"] is None else f"{row['ms_per_mac']:.2f}x"
            print(f"{row['name']:<{width}} {_ms(row['ms_dense']):>9} {_ms(row['ms_pruned']):>9} "
                  f"{_ms(row['ms_saved']):>9} {share:>6.1%} {per_mac:>8}")
        else:
            per_mac = "-" if row["us_per_mmac_dense"] is None else f"{row['us_per_mmac_dense']:.2f}"
            print(f"{row['name']:<{width}} {_ms(row['ms_dense']):>9} {share:>6.1%} {per_mac:>8}")
    for label, profile in (("dense", dense), ("pruned", pruned)):
        if profile is None:
            continue
        layers = sum(layer["ms"] for layer in profile["layers"])
        others = ", ".join(f"{op} {ms:.3f}" for op, ms in list(profile["other"].items())[:5])
        print(f"{label}: layers {layers:.3f} ms + outside layers {profile['other_ms']:.3f} ms ({others or 'none'}) "
              f"+ rest {profile['overhead_ms']:.3f} ms = p50 {profile['p50_ms']:.3f} ms over {profile['timed_runs']} "
              f"plain runs; {profile['runs']} profiled runs took {profile['profiler_ms']:+.3f} ms more, "
              f"{profile['node_cost_us']:.1f} us of it inside each node, left out of the times above")
    if pruned:
        print("time/MAC: the pruned layer's time per MAC against the dense layer's (above 1: the cut bought "
              "less time than it removed work)")
