"""prunelab allocate: per-layer sparsities from the sensitivity curves, written as a plan file."""
from __future__ import annotations

from pathlib import Path

from core.api import (
    MAX_SPARSITY,
    SPENDS,
    SWEPT_GRANULARITIES,
    allocate,
    check_request,
    has_perplexity,
    rise_in_points,
    sensitivity,
    spend_budget,
    writable_folder,
    writable_home,
)
from core.cli.options import add_metric_argument, add_model_arguments, model_from
from core.cli.sensitivity import ProgressBar, add_parallel_arguments, check_parallel
from core.errors import PrunelabError
from core.prune.plan import AUTO
from core.search.allocate import LATENCY_COSTS, check_latency_cost
from core.search.sweep_points import LOWER_IS_BETTER


def round_to_value(text: str) -> int | str:
    """--round-to: 'auto' or a whole number of at least 1; PrunelabError in one line otherwise."""
    if text == AUTO:
        return AUTO
    if not text.isdigit() or int(text) < 1:
        raise PrunelabError(f"--round-to must be 'auto' or a whole number of at least 1, got {text!r}")
    return int(text)


def rise_value(text: str) -> tuple[float, bool]:
    """--max-perplexity-rise: ``(value, in percent)`` from '5' (perplexity points) or '5%' (of dense)."""
    percent = text.endswith("%")
    try:
        value = float(text[:-1] if percent else text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise PrunelabError(f"--max-perplexity-rise must be a number of perplexity points (5) or a percent of the "
                            f"dense perplexity (5%), at least 0, got {text!r}")
    return value, percent


def register(subparsers) -> None:
    parser = subparsers.add_parser("allocate", help="choose per-layer sparsities that reach a target")
    add_model_arguments(parser)
    add_metric_argument(parser)
    parser.add_argument("--target-sparsity", type=float, help="overall fraction of weights removed, e.g. 0.9")
    parser.add_argument("--target-latency-ms", type=float, help="ONNX Runtime p50 at batch 1 (channel plans)")
    parser.add_argument("--latency-cost", choices=LATENCY_COSTS, default="sweep",
                        help="how --target-latency-ms is priced: sweep (each candidate plan timed whole, the default) "
                             "or profile (the dense model's measured ms per layer, from one ORT profile)")
    parser.add_argument("--target-mac-reduction", type=float, help="dense MACs / pruned MACs, e.g. 2 (channel plans)")
    parser.add_argument("--max-accuracy-drop", type=float,
                        help="largest predicted drop as a fraction (0.01 = one point); alone it sets the target")
    parser.add_argument("--quality", metavar="NAME",
                        help="the figure --max-accuracy-drop and the damage are read in: a number your --metric "
                             "returns (e.g. mAP; higher is better, drop in its own units); default accuracy")
    parser.add_argument("--max-perplexity-rise", metavar="RISE",
                        help="language models: largest predicted rise in test perplexity (lower is better), in "
                             "perplexity points (5) or percent of the dense perplexity (5%%); alone it sets the target")
    parser.add_argument("--granularity", choices=SWEPT_GRANULARITIES, default="unstructured")
    parser.add_argument("--criterion", default="l1", help="how weights or channels are ranked (default l1)")
    parser.add_argument("--min-sparsity", type=float, default=0.0, help="lowest sparsity of any layer")
    parser.add_argument("--max-sparsity", type=float, default=MAX_SPARSITY,
                        help=f"highest sparsity of any layer (default {MAX_SPARSITY})")
    parser.add_argument("--round-to", default=AUTO,
                        help="channel plans: kept channels rounded to a multiple, or 'auto' (the default: the "
                             "multiple this CPU's convolution kernels want)")
    parser.add_argument("--spend", choices=SPENDS, default="width",
                        help="spend a MAC or latency target on channels (width, the default), on whole blocks "
                             "(depth), on both, or on whichever of the three keeps the most quality (best); "
                             "every choice but width sweeps channels and prints the options it compared; depth "
                             "removes the cheapest blocks first, by block influence (with --criterion fisher: "
                             "by the Fisher score of a gate on each block's residual branch), as a depth: plan does")
    add_parallel_arguments(parser)
    parser.add_argument("--out", required=True, help="plan file to write (.yaml, .yml or .json)")
    parser.set_defaults(func=run)


def run(args) -> int:
    if not str(args.out).endswith((".yaml", ".yml", ".json")):  # checked before a long sweep
        raise PrunelabError(f"plan file {args.out}: use a .yaml, .yml or .json name")
    args.round_to = round_to_value(str(args.round_to))
    rise = _perplexity_goal(args)
    if args.spend != "width":
        if args.target_mac_reduction is None and args.target_latency_ms is None:
            raise PrunelabError(f"--spend {args.spend} needs --target-mac-reduction or --target-latency-ms")
        args.granularity = "channel"
    check_request(args.target_sparsity, args.target_latency_ms, args.target_mac_reduction, args.max_accuracy_drop,
                  args.granularity, (args.min_sparsity, args.max_sparsity), args.quality)
    if args.quality and args.quality not in LOWER_IS_BETTER and not args.metric:
        raise PrunelabError(f"--quality {args.quality} names a number of your own metric: "
                            f"pass --metric file.py:function")
    check_latency_cost(args.latency_cost, "latency_ms" if args.target_latency_ms is not None else "other")
    check_parallel(args)  # a bad count or address fails before the model loads
    writable_home()  # the sweep is cached there, and the plan written to --out: both checked before the sweep
    writable_folder(Path(args.out).resolve().parent, "the folder of --out")
    handle = model_from(args)
    if args.quality in LOWER_IS_BETTER and not has_perplexity(handle):  # refused before the sweep
        raise PrunelabError(f"{handle.name} has no {args.quality}: it needs a causal language model with text "
                            "data (random token ids have none)")
    curves = sensitivity(handle, granularity=args.granularity, criterion=args.criterion, progress=ProgressBar(),
                         workers=args.workers, ray_address=args.ray_address)
    if args.spend != "width":
        return _spend(args, handle, curves)
    if rise is not None and rise[1]:
        args.max_accuracy_drop = rise_in_points(curves, "perplexity", rise[0])
        print(f"largest perplexity rise: {rise[0]:g}% of the dense {curves['baseline_perplexity']:.2f} "
              f"= {args.max_accuracy_drop:.2f}")
    plan = allocate(handle, target_sparsity=args.target_sparsity, target_latency_ms=args.target_latency_ms,
                    target_mac_reduction=args.target_mac_reduction, granularity=args.granularity,
                    criterion=args.criterion, max_accuracy_drop=args.max_accuracy_drop,
                    min_sparsity=args.min_sparsity, max_sparsity=args.max_sparsity, sensitivity=curves,
                    round_to=args.round_to, workers=args.workers, ray_address=args.ray_address, quality=args.quality,
                    latency_cost=args.latency_cost)
    plan.save(args.out)
    print(f"wrote {args.out}")
    for name, value in plan.layers:
        print(f"  {name:<28} {value:>6.1%}")
    return 0


def _perplexity_goal(args) -> tuple[float, bool] | None:
    """Read --max-perplexity-rise into --quality perplexity and a drop in points (a percent is converted once
    the sweep gives the dense perplexity); ``(value, in percent)`` or None without it."""
    if args.max_perplexity_rise is None:
        return None
    if args.max_accuracy_drop is not None or args.quality is not None or args.spend != "width":
        raise PrunelabError("--max-perplexity-rise goes without --max-accuracy-drop, --quality and --spend")
    value, percent = rise_value(args.max_perplexity_rise)
    args.quality, args.max_accuracy_drop = "perplexity", value
    return value, percent


def _spend(args, handle, curves: dict) -> int:
    """Depth, width or both: write the chosen plan and print every option compared."""
    spending = spend_budget(handle, args.spend, target_mac_reduction=args.target_mac_reduction,
                            target_latency_ms=args.target_latency_ms, criterion=args.criterion, sensitivity=curves,
                            bounds=(args.min_sparsity, args.max_sparsity), round_to=args.round_to,
                            max_accuracy_drop=args.max_accuracy_drop, quality=args.quality)
    spending.plan.save(args.out)
    print(f"wrote {args.out}")
    for line in spending.lines():
        print(line)
    return 0
