"""prunelab prune: apply a plan, measure the result, and write the deployable files to --out.

DIR/model.onnx (one self-contained file, INT8 with --quantize), DIR/state_dict.pt (same keys as
the original model), DIR/model.pt2 (the pruned model without its source), DIR/plan.yaml (the plan
as applied, with the effective sparsity of every layer) and DIR/report.json (evaluate's report).
All files are written into a staging folder beside DIR that is renamed to DIR at the end, so DIR
holds one whole run or nothing; a DIR that already holds files is refused, never overwritten.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from core.api import (
    LiveEvaluator,
    RunStore,
    check_plan,
    log_runs,
    profile_plan,
    profile_summary,
    record_run,
    resolve_plan,
    run_folder,
    save_pruned,
    sha256_file,
    write_atomic,
)
from core.cli.evaluate import add_measure_arguments, load_plan, print_report, progress
from core.cli.options import add_metric_argument, add_model_arguments, model_from, print_json
from core.cli.recover import add_finetune_arguments, finetuned

FILES = ("model.onnx", "state_dict.pt", "model.pt2", "plan.yaml", "report.json")


def register(subparsers) -> None:
    parser = subparsers.add_parser("prune", help="prune a model with a plan and write ONNX, weights, plan and report")
    add_model_arguments(parser)
    add_metric_argument(parser)
    parser.add_argument("--plan", required=True, help="the plan file (.yaml or .json)")
    parser.add_argument("--out", required=True, help="directory for the pruned model and its report")
    add_measure_arguments(parser)
    parser.add_argument("--mlflow-uri", help="also log the run to MLflow at this tracking URI (the mlflow extra)")
    parser.add_argument("--label", default="", help="a label for the recorded run (see prunelab runs)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile dense and pruned layer by layer (see prunelab profile); the run and "
                             "its HTML report keep the per-layer times")
    add_finetune_arguments(parser)  # recovery (core/cli/recover.py)
    parser.set_defaults(func=run)


def run(args) -> int:
    out = Path(args.out)
    run_folder.claim(out)
    RunStore().require_writable()  # a corrupt or read-only store is refused before the work, not after
    handle = model_from(args)
    plan = load_plan(args.plan)
    if handle.module is not None:
        from core.prune.shrink import check_structure
        check_plan(handle, plan)
        check_structure(handle.module, plan, handle.example_input(1))  # every conflict, before any export
    progress(f"pruning {handle.name} ({plan.granularity}, {plan.criterion}, {plan.scope} {plan.sparsity:g}) "
             f"and measuring on ONNX Runtime")
    evaluator = LiveEvaluator(handle, threads=args.threads, batch_size=args.batch_size, quantize=args.quantize,
                              live=False)
    report, artifact, result = evaluator.measure_artifact(plan)
    report = dict(report)  # the cached report stays as measured; this copy also lists the files
    if args.finetune:  # recovery (core/cli/recover.py): the report and files become the fine-tuned model's
        report, artifact = finetuned(handle, plan, result, report, args)
    if args.profile and handle.module is not None:
        progress("profiling dense and pruned layer by layer")
        report["profile"] = profile_summary(profile_plan(handle, plan, batch_size=args.batch_size,
                                                         threads=args.threads))
    progress(f"writing {', '.join(FILES)} to {out}")
    paths, digests = write_outputs(out, handle, plan, report, artifact)
    record_run_hook(report, handle, plan, result, paths, label=args.label, mlflow_uri=args.mlflow_uri,
                    digests=digests)
    if args.json:
        print_json(report)
    else:
        print_report(report)
        print(f"wrote {', '.join(str(path) for path in paths.values())}")
    return 0


def write_outputs(out: Path, handle, plan, report: dict, artifact) -> tuple[dict[str, Path], dict[str, str]]:
    """Write model.onnx, state_dict.pt, model.pt2, plan.yaml and report.json into a staging folder, then
    publish them to ``out`` (core.run_folder): ``out`` gets all of this run's files or none, replacing nothing.

    Sets ``report["files"]``; returns the final paths and the sha256 of each file as written.
    """
    staging = run_folder.staging(out)
    try:
        write_atomic(staging / "model.onnx", artifact.model_bytes)
        if artifact.module is not None:
            save_pruned(artifact.module, handle.example_input(1), staging)
        write_atomic(staging / "plan.yaml", resolved_plan_yaml(plan, report, handle).encode())
        names = [name for name in FILES if name == "report.json" or (staging / name).is_file()]
        report["files"] = {name: str(out / name) for name in names}
        write_atomic(staging / "report.json", (json.dumps(report, indent=2, default=str) + "\n").encode())
        digests = {name: sha256_file(staging / name) for name in names}
        run_folder.publish(staging, out, names)
    finally:
        run_folder.discard(staging)
    return {name: out / name for name in names}, digests


def resolved_plan_yaml(plan, report: dict, handle) -> str:
    """The plan as applied (the default ``ignore`` and the removed blocks spelled out) plus the effective
    sparsity per layer."""
    values = resolve_plan(handle, plan).to_dict() if handle.module is not None else plan.to_dict()
    removed = (report.get("blocks") or {}).get("removed")
    if removed:  # the blocks a depth share chose, by name: the file reproduces this very model
        values = {**{key: value for key, value in values.items() if key != "depth"}, "drop": list(removed)}
    sparsity = report.get("layer_sparsity") or {}
    text = yaml.safe_dump(values, sort_keys=False)
    text += ("# effective_sparsity: the share of zero weights (or of removed channels) in every layer, measured\n"
             "# after pruning; prunelab reads this file back as a plan and skips this key.\n")
    text += yaml.safe_dump({"effective_sparsity": {name: round(float(value), 6)
                                                   for name, value in sparsity.items()}}, sort_keys=False)
    kept = report.get("kept") or {}
    if not kept:
        return text
    text += ("# kept: channel plans: what every layer kept against its target (heads for attention layers);\n"
             "# a record, skipped when this file is read back as a plan.\n")
    return text + yaml.safe_dump({"kept": {name: f"{row['kept']} of {row['total']} {row['unit']}s "
                                                 f"({row.get('dense') or 'target ' + str(row['target_kept'])})"
                                           for name, row in kept.items()}}, sort_keys=False, width=1000)


def record_run_hook(report: dict, handle, plan, result, paths: dict[str, Path], label: str = "",
                    mlflow_uri: str | None = None, digests: dict[str, str] | None = None) -> None:
    """The hook where the run store keeps this prune run (core.history.runs.record_run), with the written files.

    With ``mlflow_uri`` the recorded run is also logged to MLflow (params, metrics, the files).
    """
    run = record_run(report, model=handle, plan=plan,
                     layer_sparsity=None if result is None else dict(result.layer_sparsity),
                     artifacts={name: str(path) for name, path in paths.items()}, label=label, digests=digests)
    progress(f"recorded run {run.id} (prunelab runs show {run.id})")
    if mlflow_uri:
        progress(f"logged to MLflow as run {log_runs([run], mlflow_uri)[run.id]}")
