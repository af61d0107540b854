"""prunelab sensitivity: prune one layer (or channel group) at a time and show what each level costs."""
from __future__ import annotations

import os
import sys

from core.api import (
    DEFAULT_LEVELS,
    SWEPT_GRANULARITIES,
    executor_for,
    headline,
    parse_levels,
    sensitivity,
    writable_home,
)
from core.cli.options import add_metric_argument, add_model_arguments, model_from, print_json
from core.search.executors import capped_workers
from core.search.parallel import ADDRESS_VARIABLE

SHADES = " .:-=+*#%@"  # no drop ... a drop of 50 points or more


def register(subparsers) -> None:
    parser = subparsers.add_parser("sensitivity", help="per-layer accuracy and loss against sparsity")
    add_model_arguments(parser)
    add_metric_argument(parser)
    parser.add_argument("--granularity", choices=SWEPT_GRANULARITIES, default="unstructured")
    parser.add_argument("--criterion", default="l1", help="how weights or channels are ranked (default l1)")
    default_levels = ",".join(f"{level:g}" for level in DEFAULT_LEVELS)
    parser.add_argument("--levels", help=f"sparsities to try (default {default_levels})")
    parser.add_argument("--max-items", default="auto", metavar="N|all|auto",
                        help="score the first N items of the val split, all of them, or auto (default: all, "
                             "unless the model is large enough that a subset keeps the sweep to minutes)")
    add_parallel_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def add_parallel_arguments(parser) -> None:
    """--workers and --ray-address, shared by the commands that measure many independent points."""
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="local processes measuring points at once (default: one per core; 1 runs in this "
                             "process); with --ray-address, at most N tasks at once when N is above 1 (default: "
                             "one per CPU of the cluster)")
    parser.add_argument("--ray-address", default=None, metavar="ADDRESS",
                        help="run the points as tasks on this Ray cluster, e.g. 10.0.0.5:6379 "
                             "(default: $PRUNELAB_RAY_ADDRESS; needs the ray extra)")


def check_parallel(args) -> None:
    """Fail on a bad --workers or --ray-address before the model loads; say when --workers is capped."""
    executor_for(args.workers, args.ray_address)
    if args.workers and args.workers > 1 and not (args.ray_address or os.environ.get(ADDRESS_VARIABLE)):
        capped = capped_workers(args.workers)
        if capped < args.workers:
            print(f"prunelab: note: --workers {args.workers} capped at {capped}, the machine's cores",
                  file=sys.stderr)


class ProgressBar:
    """A one-line progress bar on stderr (only drawn on a terminal, plus a final line otherwise)."""

    def __init__(self, stream=None, width: int = 30):
        self.stream, self.width = stream or sys.stderr, width
        self.live = self.stream.isatty()

    def __call__(self, done: int, total: int, text: str) -> None:
        if not self.live and done < total:
            return
        filled = int(self.width * done / max(total, 1))
        end = "\n" if done >= total else ""
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} {text:<40}{end}")
        self.stream.flush()


def run(args) -> int:
    levels = parse_levels(args.levels) if args.levels else DEFAULT_LEVELS
    writable_home()  # the sweep is cached there: a read-only home should fail now, not after the sweep
    check_parallel(args)  # a bad count or address fails before the model loads
    result = sensitivity(model_from(args), granularity=args.granularity, criterion=args.criterion, levels=levels,
                         progress=ProgressBar(), max_items=args.max_items, workers=args.workers,
                         ray_address=args.ray_address)
    if args.json:
        print_json(result)
    else:
        print_table(result)
    return 0


def print_table(result: dict) -> None:
    """Damage per layer and level (a drop in points, or a rise in perplexity for a language model on text) with a
    shade per cell, agreement beside a perplexity, and latency for channel sweeps."""
    if result["baseline_accuracy"] is None:
        print(f"{result['model']}: the dense model's point was lost with its worker twice; nothing to compare")
        return
    shown_as, levels = headline(result), result["levels"]
    print(f"{result['model']}: {result['granularity']} sensitivity, criterion {result['criterion']}, "
          f"{shown_as.describe()} on {describe(result['evaluated_on'])}")
    unit = " (points)" if shown_as.unit == "pts" else ""
    print(f"{shown_as.word} in {shown_as.name}{unit} when only that layer is pruned; "
          f"shade {SHADES[1:]!r} = more damage:")
    width = max([26] + [len(layer["name"]) + 1 for layer in result["layers"]])  # whole names: LM layers differ late
    print(f"{'layer':<{width}}" + "".join(f"{level:>7.0%}" for level in levels))
    for layer in result["layers"]:
        measured = {point["sparsity"]: point for point in layer["curve"]}
        shown = levels if result.get("missing") else [point["sparsity"] for point in layer["curve"]]
        print(f"{layer['name']:<{width}}" + "".join(_cell(shown_as, measured.get(level)) for level in shown))
        if shown_as.secondary:
            print(f"{'  ' + shown_as.secondary + ' %':<{width}}"
                  + "".join(f"{100 * measured[level]['accuracy']:>7.1f}" if level in measured else f"{'?':>7}"
                            for level in shown))
        if layer["curve"] and "latency_ms" in layer["curve"][0]:
            print(f"{'  p50 ms':<{width}}" + "".join(f"{point['latency_ms']:>7.3f}" for point in layer["curve"]))
    _print_blocks(result, shown_as, width)
    if result.get("missing"):
        print(f"missing (lost with a worker twice): {', '.join(result['missing'])}")
    elif not result["complete"]:
        print("(stopped early: partial result)")
    if result["evaluated_on"].get("latency", {}).get("comparable"):
        print(f"note: {result['evaluated_on']['latency']['comparable']}")
    print(f"{result['seconds']:.1f} s to compute")


def _cell(headline, point: dict | None) -> str:
    """One table cell: the damage and its shade (one step per 5.5 points, or per 5.5% of the dense perplexity)."""
    if point is None:
        return f"{'?':>7}"
    shade = SHADES[min(len(SHADES) - 1, max(0, int(headline.relative(point) / 5.5)))]
    return f"{headline.damage(point):>6.1f}{shade}"


def describe(evaluated_on: dict) -> str:
    text = f"{evaluated_on['items']} {evaluated_on['split']} items"
    if (evaluated_on.get("workers") or 1) > 1 or evaluated_on.get("executor") == "ray":
        where = "Ray tasks" if evaluated_on.get("executor") == "ray" else "processes"
        text += f" by {evaluated_on.get('workers') or 'all'} {where}"
    if evaluated_on.get("subset"):
        text += f" ({evaluated_on['subset']})"
    if evaluated_on.get("batchnorm_items"):
        text += f"; BatchNorm re-estimated on {evaluated_on['batchnorm_items']} training items per point"
    return text


def _print_blocks(result: dict, headline, width: int) -> None:
    """One line per removable block: the damage without it (and agreement beside a perplexity), its MACs and its
    measured latency saving."""
    blocks = result.get("blocks") or []
    if not blocks:
        return
    unit = " (points)" if headline.unit == "pts" else ""
    beside = f", {headline.secondary} %" if headline.secondary else ""
    print(f"\nwithout one whole block (its skip path in its place): {headline.word} in {headline.name}{unit}{beside}, "
          "MACs, measured p50 saving")
    for block in blocks:
        saving = "-" if block.get("latency_saving_ms") is None else f"{block['latency_saving_ms']:.3f} ms"
        second = f"{100 * block['accuracy']:>7.1f}" if headline.secondary else ""
        print(f"{block['name']:<{width}}{headline.damage(block):>7.1f}{second} {block['macs']:>14,} {saving:>12}")
