"""prunelab export-plan: a plan in the form Torch-Pruning, NNI or SparseML reads."""
from __future__ import annotations

from pathlib import Path

from core.api import PLAN_FORMATS, Plan, export_plan, load_model, plan_layers, write_atomic
from core.errors import PrunelabError
from core.history.plan_formats import SNIPPET_FIRST_LINE


def register(subparsers) -> None:
    parser = subparsers.add_parser("export-plan", help="write a plan for Torch-Pruning, NNI or SparseML")
    parser.add_argument("plan", metavar="PLAN", help="a plan file (.yaml or .json)")
    parser.add_argument("--format", required=True, choices=PLAN_FORMATS)
    parser.add_argument("--out", required=True, help="file to write (torch-pruning: the .json; its .py snippet goes "
                                                     "beside it, never over a file prunelab did not write)")
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
    targets = {out if suffix == out.suffix or len(files) == 1 else out.with_suffix(suffix): text
               for suffix, text in files.items()}
    check_targets(targets, out, Path(args.plan), args.format)  # every file checked before the first is written
    for path, text in targets.items():
        write_atomic(path, text)
        print(f"wrote {path}")
    return 0


def check_targets(targets: dict, out: Path, plan: Path, format: str) -> None:
    """Refuse to replace the input plan, or any existing file but ``out`` that prunelab did not write itself.

    A format that writes several files (torch-pruning: the .json and a .py snippet reading it) takes
    ``--out`` ending in one of their suffixes, so every file written is the one named or its sibling.
    """
    if out not in targets:
        suffixes = " or ".join(sorted(path.suffix for path in targets))
        raise PrunelabError(f"--out {out} must end in {suffixes} for {format} (it writes "
                            f"{' and '.join(path.name for path in targets)} beside each other)")
    for path in targets:
        if path.exists() and plan.exists() and path.resolve() == plan.resolve():
            raise PrunelabError(f"export-plan would replace its input plan {plan}: choose another --out")
        if path != out and path.exists() and not _written_by_prunelab(path):
            raise PrunelabError(f"export-plan also writes {path} and a file of that name already exists "
                                f"(not one prunelab wrote): move it or choose another --out")


def _written_by_prunelab(path: Path) -> bool:
    """True for a Torch-Pruning snippet an earlier export-plan wrote (its first line says so)."""
    try:
        with open(path, encoding="utf-8") as stream:
            return stream.readline().rstrip("\n") == SNIPPET_FIRST_LINE
    except (OSError, UnicodeDecodeError):
        return False
