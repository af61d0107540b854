"""prunelab runs: the run history (list, show, compare, delete, log to MLflow)."""
from __future__ import annotations

import argparse

from core.api import RunStore, compare_runs, delete_run, get_run, list_runs, log_runs
from core.cli.options import print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser("runs", help="list, show, compare or delete recorded runs")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--model", help="only this model's runs")
    parser.set_defaults(func=run_list)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    show = actions.add_parser("show", help="every detail of one run")
    show.add_argument("id", type=int)
    show.set_defaults(func=run_show)
    compare = actions.add_parser("compare", help="per-layer sparsity and metric differences of two runs")
    compare.add_argument("ids", type=int, nargs=2, metavar="ID")
    compare.set_defaults(func=run_compare)
    delete = actions.add_parser("delete", help="forget a run and the files the store kept for it")
    delete.add_argument("id", type=int)
    delete.set_defaults(func=run_delete)
    check = actions.add_parser("check", help="the store's schema version, PRAGMA integrity_check and every artifact "
                                                     "against its recorded sha256")
    check.add_argument("--clean", action="store_true",
                       help="remove artifact directories of runs that never committed (older than an hour)")
    check.set_defaults(func=run_check)
    mlflow = actions.add_parser("mlflow", help="log runs to MLflow: params, metrics and artifacts")
    mlflow.add_argument("ids", type=int, nargs="+", metavar="ID")
    mlflow.add_argument("--mlflow-uri", required=True, help="tracking URI, e.g. file:///tmp/mlruns")
    mlflow.add_argument("--experiment", default="prunelab", help="experiment name (default prunelab)")
    mlflow.set_defaults(func=run_mlflow)
    for sub in (show, compare, delete, check, mlflow):
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")


def _number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def run_list(args) -> int:
    runs = list_runs(args.model)
    if args.json:
        print_json([run.to_dict() for run in runs])
        return 0
    if not runs:
        print(f"no runs yet in {RunStore().path}")
        return 0
    print(f"{'id':>5} {'created':<25} {'model':<16} {'granularity':<12} {'sparsity':>8} {'quality':>8} "
          f"{'p50 ms':>8} {'compressed':>11}  label")
    for run in runs:
        print(f"{run.id:>5} {run.created:<25} {run.model[:16]:<16} {str(run.plan.get('granularity', '-')):<12} "
              f"{_number(run.plan.get('sparsity'), '.0%'):>8} {_number(run.quality, '.2%'):>8} "
              f"{_number(run.latency_p50, '.3f'):>8} {_number(run.compressed_bytes, ','):>11}  {run.label}")
    return 0


def run_show(args) -> int:
    run = get_run(args.id)
    if args.json:
        print_json(run.to_dict())
        return 0
    print(f"run {run.id}  {run.created}  {run.model} ({run.model_digest or 'no digest'})  {run.label}")
    if run.notes:
        print(f"notes: {run.notes}")
    print("plan: " + ", ".join(f"{key}={value}" for key, value in run.plan.items()))
    for key, value in run.pruned.items():
        print(f"  {key:<16} {value}")
    for name, path in run.artifacts.items():
        print(f"  artifact {name}: {path}")
    return 0


def run_compare(args) -> int:
    diff = compare_runs(*args.ids)
    if args.json:
        print_json(diff)
        return 0
    first, second = diff["runs"]
    for title, key in (("layer", "layers"), ("metric", "metrics")):
        print(f"{title:<28} {'#' + str(first):>14} {'#' + str(second):>14} {'delta':>14}")
        for row in diff[key]:
            print(f"{row[title]:<28} {_number(row['a'], '.6g'):>14} {_number(row['b'], '.6g'):>14} "
                  f"{_number(row['delta'], '+.6g'):>14}")
        print()
    return 0


def run_delete(args) -> int:
    delete_run(args.id)
    print(f"deleted run {args.id}")
    return 0


def run_check(args) -> int:
    store = RunStore()
    orphans = store.remove_orphans() if args.clean else store.orphans()
    artifacts = store.check_artifacts()
    result = {"path": str(store.path), "schema_version": store.version(), "integrity": store.integrity(),
              "runs": len(store.list()), "artifacts": artifacts,
              "orphaned_artifact_dirs": [str(path) for path in orphans], "removed": bool(args.clean)}
    if args.json:
        print_json(result)
    else:
        print(f"{result['path']}: schema version {result['schema_version']}, {result['runs']} runs, "
              f"integrity {result['integrity']}, {len(orphans)} orphaned artifact dir(s)"
              + (" removed" if args.clean and orphans else ""))
        print(f"artifacts: {artifacts['checked']} match their recorded sha256, {len(artifacts['changed'])} changed, "
              f"{len(artifacts['missing'])} missing, {artifacts['unverified']} recorded without a digest")
        for kind in ("changed", "missing"):
            for where in artifacts[kind]:
                print(f"  {kind}: {where}")
    sound = result["integrity"] == "ok" and not artifacts["changed"] and not artifacts["missing"]
    return 0 if sound else 1


def run_mlflow(args) -> int:
    logged = log_runs([get_run(run_id) for run_id in args.ids], args.mlflow_uri, args.experiment)
    if args.json:
        print_json(logged)
    else:
        for run_id, mlflow_id in logged.items():
            print(f"run {run_id} -> MLflow run {mlflow_id}")
    return 0
