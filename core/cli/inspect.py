"""prunelab inspect: one row per prunable layer, with weight statistics and MACs."""
from __future__ import annotations

from core.api import layer_table
from core.cli.options import add_model_arguments, model_from, print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser("inspect", help="show every prunable layer of a model")
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    report = layer_table(model_from(args))
    if args.json:
        print_json(report)
        return 0
    print(f"{'layer':<28} {'kind':<9} {'shape':<18} {'params':>9} {'sparsity':>8} {'MACs':>12} {'|w| p50':>8}")
    for row in report["layers"]:
        shape = "x".join(str(size) for size in row["shape"])
        macs = "-" if row["macs"] is None else f"{row['macs']:,}"
        print(f"{row['name']:<28} {row['kind']:<9} {shape:<18} {row['params']:>9,} {row['sparsity']:>8.1%} "
              f"{macs:>12} {row['stats']['abs_p50']:>8.4f}")
    totals = report["totals"]
    print(f"{totals['layers']} layers, {totals['params']:,} parameters ({totals['prunable_params']:,} prunable, "
          f"{totals['sparsity']:.1%} zero), {'-' if totals['macs'] is None else format(totals['macs'], ',')} "
          "MACs per item")
    return 0
