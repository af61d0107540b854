"""prunelab prune: apply a plan, measure the result, and write the deployable files to --out.

DIR/model.onnx (one self-contained file, INT8 with --quantize), DIR/state_dict.pt (same keys as
the original model), DIR/model.pt2 (the pruned model without its source), DIR/plan.yaml (the plan
as applied, with the effective sparsity of every layer) and DIR/report.json (evaluate's report).
Every file is written to a temporary name first and moved into place.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
import yaml

from core.cli.evaluate import add_measure_arguments, load_plan, print_report, progress
from core.cli.options import add_model_arguments, model_from, print_json
from core.cli.recover import add_finetune_arguments, finetuned
from core.errors import PrunelabError
from core.deploy.evaluate import LiveEvaluator
from core.deploy.export import write_atomic

FILES = ("model.onnx", "state_dict.pt", "model.pt2", "plan.yaml", "report.json")


def register(subparsers) -> None:
    parser = subparsers.add_parser("prune", help="prune a model with a plan and write ONNX, weights, plan and report")
    add_model_arguments(parser)
    parser.add_argument("--plan", required=True, help="the plan file (.yaml or .json)")
    parser.add_argument("--out", required=True, help="directory for the pruned model and its report")
    add_measure_arguments(parser)
    parser.add_argument("--mlflow-uri", help="also log the run to MLflow at this tracking URI (the mlflow extra)")
    parser.add_argument("--label", default="", help="a label for the recorded run (see prunelab runs)")
    add_finetune_arguments(parser)  # recovery (core/cli/recover.py)
    parser.set_defaults(func=run)


def run(args) -> int:
    handle = model_from(args)
    plan = load_plan(args.plan)
    if handle.module is not None:
        from core.prune.shrink import check_structure
        plan.validate_for(handle.module)
        check_structure(handle.module, plan, handle.example_input(1))  # every conflict, before any export
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise PrunelabError(f"--out {out} exists and is not a directory")
    progress(f"pruning {handle.name} ({plan.granularity}, {plan.criterion}, {plan.scope} {plan.sparsity:g}) "
             f"and measuring on ONNX Runtime")
    evaluator = LiveEvaluator(handle, threads=args.threads, batch_size=args.batch_size, quantize=args.quantize,
                              live=False)
    report, artifact, result = evaluator.measure_artifact(plan)
    report = dict(report)  # the cached report stays as measured; this copy also lists the files
    if args.finetune:  # recovery (core/cli/recover.py): the report and files become the fine-tuned model's
        report, artifact = finetuned(handle, plan, result, report, args)
    progress(f"writing {', '.join(FILES)} to {out}")
    paths = write_outputs(out, handle, plan, report, artifact)
    report["files"] = {name: str(path) for name, path in paths.items()}
    write_atomic(out / "report.json", (json.dumps(report, indent=2, default=str) + "\n").encode())
    record_run_hook(report, handle, plan, result, paths, label=args.label, mlflow_uri=args.mlflow_uri)
    if args.json:
        print_json(report)
    else:
        print_report(report)
        print(f"wrote {', '.join(str(path) for path in paths.values())}")
    return 0


def write_outputs(out: Path, handle, plan, report: dict, artifact) -> dict[str, Path]:
    """Write model.onnx, state_dict.pt, model.pt2 and plan.yaml (report.json is written by the caller)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"model.onnx": out / "model.onnx"}
    write_atomic(paths["model.onnx"], artifact.model_bytes)
    if artifact.module is not None:
        paths.update(save_module_files(artifact.module, handle.example_input(1), out))
    paths["plan.yaml"] = out / "plan.yaml"
    write_atomic(paths["plan.yaml"], resolved_plan_yaml(plan, report, handle).encode())
    paths["report.json"] = out / "report.json"
    return paths


def save_module_files(module: torch.nn.Module, example: torch.Tensor, out: Path) -> dict[str, Path]:
    """state_dict.pt and model.pt2 via core.deploy.artifacts.save_pruned, written in a temporary directory
    inside ``out`` and then moved into place, so no half-written file is ever visible."""
    from core.deploy.artifacts import save_pruned

    paths = {}
    with tempfile.TemporaryDirectory(dir=out, prefix=".prune-") as staging:
        for written in save_pruned(module, example, staging).values():
            paths[written.name] = out / written.name
            os.replace(written, paths[written.name])
    return paths


def resolved_plan_yaml(plan, report: dict, handle) -> str:
    """The plan as applied (the default ``ignore`` spelled out) plus the effective sparsity per layer."""
    values = plan.to_dict()
    sparsity = report.get("layer_sparsity") or {}
    if values["ignore"] is None and handle.module is not None:
        from core.inspect import final_classifier
        classifier = final_classifier(handle.module, handle.example_input(1))
        values["ignore"] = [] if classifier is None else [classifier]
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
                                                 f"(target {row['target_kept']})" for name, row in kept.items()}},
                                 sort_keys=False)


def record_run_hook(report: dict, handle, plan, result, paths: dict[str, Path], label: str = "",
                    mlflow_uri: str | None = None) -> None:
    """The hook where the run store keeps this prune run (core.history.runs.record_run), with the written files.

    With ``mlflow_uri`` the recorded run is also logged to MLflow (params, metrics, the files).
    """
    from core.history.runs import record_run

    run = record_run(report, model=handle, plan=plan,
                     layer_sparsity=None if result is None else dict(result.layer_sparsity),
                     artifacts={name: str(path) for name, path in paths.items()}, label=label)
    progress(f"recorded run {run.id} (prunelab runs show {run.id})")
    if mlflow_uri:
        from core.history.mlflow_log import log_runs
        progress(f"logged to MLflow as run {log_runs([run], mlflow_uri)[run.id]}")
