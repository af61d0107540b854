"""prunelab explore: measure a grid of plans and keep each as a run (the History page's Pareto chart)."""
from __future__ import annotations

import sys

from core.api import DEFAULT_GRID, explore, writable_home
from core.cli.options import add_model_arguments, model_from, print_json
from core.cli.sensitivity import ProgressBar, add_parallel_arguments, check_parallel
from core.limits import DEFAULT_PLANS, PLANS_VARIABLE


def register(subparsers) -> None:
    parser = subparsers.add_parser("explore", help="measure a grid of plans and record each as a run")
    add_model_arguments(parser)
    parser.add_argument("--grid", default=DEFAULT_GRID, metavar="KEY=V1,V2;...",
                        help="plans to measure, the product of every key's values; keys: sparsity, criterion, "
                             f"granularity, scope, round_to (default {DEFAULT_GRID!r})")
    parser.add_argument("--label", default="explore", help="label prefix of the recorded runs")
    parser.add_argument("--max-plans", type=int, default=None, metavar="N",
                        help=f"refuse a grid of more than N plans (default ${PLANS_VARIABLE} or {DEFAULT_PLANS})")
    add_parallel_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    writable_home()  # the runs are kept there: a read-only home should fail now, not after the grid
    check_parallel(args)  # a bad count or address fails before the model loads
    summary = explore(model_from(args), grid=args.grid, workers=args.workers, ray_address=args.ray_address,
                      progress=ProgressBar(), label=args.label, max_plans=args.max_plans)
    if args.json:
        print_json(summary)
        return 130 if summary["stopped"] else 0
    print(f"measured {summary['measured']} of {summary['plans']} plans in {summary['seconds']:.1f} s; "
          f"recorded as runs {_span(summary['runs'])} (prunelab runs, or the History page)")
    for line in summary["skipped"]:
        print(f"  skipped {line}")
    if summary["missing"]:
        print(f"  missing (lost with a worker twice): {', '.join(summary['missing'])}")
    if len(summary["nodes"]) > 1:
        print(f"  note: latencies were measured on {len(summary['nodes'])} machines ({', '.join(summary['nodes'])}): "
              "compare runs measured on the same machine")
    if summary["stopped"]:
        print("prunelab: stopped; the plans measured before the stop are kept", file=sys.stderr)
        return 130
    return 0


def _span(ids: list[int]) -> str:
    if not ids:
        return "(none)"
    return f"{ids[0]}" if len(ids) == 1 else f"{min(ids)}..{max(ids)}"
