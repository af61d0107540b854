"""prunelab inspect: one row per prunable layer, with weight statistics and MACs."""
from __future__ import annotations

from core.api import block_table, layer_table
from core.cli.options import add_model_arguments, model_from, print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser("inspect", help="show every prunable layer of a model")
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    handle = model_from(args)
    report = layer_table(handle)
    report["blocks"] = block_table(handle)
    if args.json:
        print_json(report)
        return 0
    rows = report["layers"]
    shapes = ["x".join(str(size) for size in row["shape"]) for row in rows]
    macs = ["-" if row["macs"] is None else f"{row['macs']:,}" for row in rows]
    # columns as wide as their longest entry, so long layer names keep the table aligned
    name_width = max([len("layer"), *(len(row["name"]) for row in rows)])
    shape_width = max([len("shape"), *(len(shape) for shape in shapes)])
    macs_width = max([12, *(len(value) for value in macs)])
    units = [f"{row['heads']} heads" if row.get("unit") == "head" else "channels" for row in rows]
    print(f"{'layer':<{name_width}} {'kind':<9} {'unit':<9} {'shape':<{shape_width}} {'params':>11} {'sparsity':>8} "
          f"{'MACs':>{macs_width}} {'|w| p50':>8}")
    for row, unit, shape, count in zip(rows, units, shapes, macs):
        print(f"{row['name']:<{name_width}} {row['kind']:<9} {unit:<9} {shape:<{shape_width}} {row['params']:>11,} "
              f"{row['sparsity']:>8.1%} {count:>{macs_width}} {row['stats']['abs_p50']:>8.4f}")
    totals = report["totals"]
    other = totals.get("other_macs") or 0
    outside = f" ({other:,} outside the layers above: attention matmuls and the like)" if other else ""
    print(f"{totals['layers']} layers, {totals['params']:,} parameters ({totals['prunable_params']:,} prunable, "
          f"{totals['sparsity']:.1%} of prunable weights zero), "
          f"{'-' if totals['macs'] is None else format(totals['macs'], ',')} "
          f"MACs per item{outside}")
    _print_blocks(report["blocks"])
    return 0


def _print_blocks(blocks: list[dict]) -> None:
    """Blocks a plan's ``drop:`` can name (with their block influence), then those it cannot, with why."""
    removable = [block for block in blocks if block["removable"]]
    if not blocks:
        print("no removable blocks (no module joins its input to its output by a skip connection)")
        return
    width = max(len("block"), *(len(block["name"]) for block in blocks))
    print(f"\n{len(removable)} removable blocks (drop: [...] or depth: 0.25 in a plan; influence = 1 - cosine "
          f"between a block's input and output, low goes first; under criterion fisher a depth share goes by "
          f"each block's Fisher score instead)")
    print(f"{'block':<{width}} {'kind':<28} {'layers':>6} {'params':>11} {'MACs':>14} {'influence':>9}")
    for block in removable:
        print(f"{block['name']:<{width}} {block['kind'][:28]:<28} {len(block['layers']):>6} {block['params']:>11,} "
              f"{block['macs']:>14,} {block['influence']:>9.4f}")
    for block in blocks:
        if not block["removable"]:
            print(f"{block['name']:<{width}} cannot be removed: {block['reason']}")
