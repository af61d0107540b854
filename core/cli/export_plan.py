"""prunelab export-plan: a plan in the form Torch-Pruning, NNI or SparseML reads."""
from __future__ import annotations

from pathlib import Path

from core.api import PLAN_FORMATS, Plan, export_plan, load_model, plan_layers, write_atomic


def register(subparsers) -> None:
    parser = subparsers.add_parser("export-plan", help="write a plan for Torch-Pruning, NNI or SparseML")
    parser.add_argument("plan", metavar="PLAN", help="a plan file (.yaml or .json)")
    parser.add_argument("--format", required=True, choices=PLAN_FORMATS)
    parser.add_argument("--out", required=True, help="file to write (torch-pruning also writes a .py snippet)")
    parser.add_argument("--model", help="resolve per-layer targets on this model (a built-in name, file.py:factory, "
                                        "...); needed for SparseML recipes with per-layer targets")
    parser.add_argument("--weights", help="state dict for a file.py:factory model")
    parser.add_argument("--input-shape", help="input shape with batch dimension, e.g. 1,3,32,32")
    parser.add_argument("--trust", action="store_true", help="allow unpickling a full module")
    parser.set_defaults(func=run)


def run(args) -> int:
    plan = Plan.load(args.plan)
    layers = None
    if args.model:
        handle = load_model(args.model, input_shape=args.input_shape, weights=args.weights, trust=args.trust)
        handle.require("inspect")
        layers = plan_layers(plan, handle)
    out = Path(args.out)
    files = export_plan(plan, args.format, layers, stem=out.stem)
    for suffix, text in files.items():
        path = out if suffix == out.suffix or len(files) == 1 else out.with_suffix(suffix)
        write_atomic(path, text)
        print(f"wrote {path}")
    return 0
