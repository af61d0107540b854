"""The run store: schema and migration, round trips, crash safety, concurrent writers, compare, Pareto."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from core.errors import PrunelabError
from core.history.compare import compare_runs, pareto_front, pareto_indices
from core.history.runs import MIGRATIONS, SCHEMA_VERSION, Run, RunStore, delete_run, get_run, list_runs, record_run

ROOT = Path(__file__).resolve().parent.parent


def make_report(accuracy=0.9, p50=1.0, compressed=1000, sparsity=0.5, model="digits-mlp") -> dict:
    """A report shaped like core.deploy.evaluate.evaluate's."""
    metrics = {"accuracy": accuracy, "loss": 0.3, "agreement": 0.95, "label": "accuracy",
               "latency_ms": {"mean": p50 * 1.1, "p50": p50, "p90": p50 * 1.5, "p99": p50 * 2},
               "throughput": 1000 / p50, "session_ms": 5.0, "params": 10_000, "nonzero_params": 5_000,
               "sparsity": sparsity, "macs": 20_000, "onnx_bytes": 40_000, "compressed_bytes": compressed,
               "max_abs_diff": 0.01}
    baseline = dict(metrics, accuracy=0.97, sparsity=0.0, compressed_bytes=36_000)
    plan = {"granularity": "unstructured", "criterion": "l1", "scope": "layer", "sparsity": sparsity,
            "layers": {"fc1": sparsity + 0.1}, "ignore": None, "round_to": 1, "seed": 0}
    return {"model": model, "plan": plan, "pruned": metrics, "baseline": baseline, "notes": []}


def test_new_store_has_current_schema_and_wal(prunelab_home):
    store = RunStore()
    assert store.version() == SCHEMA_VERSION == len(MIGRATIONS)
    assert store.path == prunelab_home / "runs.db"
    with sqlite3.connect(store.path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_version_one_store_is_migrated_and_keeps_its_runs(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as connection:  # a store as the first prunelab wrote it
        connection.executescript(MIGRATIONS[0])
        connection.execute("INSERT INTO runs (created, model, model_digest, plan, metrics, artifacts) "
                           "VALUES ('2026-01-01T00:00:00+00:00', 'digits-cnn', 'abc', ?, ?, '{}')",
                           (json.dumps({"sparsity": 0.3}), json.dumps(make_report(0.8))))
        connection.execute("PRAGMA user_version = 1")
    store = RunStore(path)
    [run] = store.list()
    assert store.version() == SCHEMA_VERSION
    assert (run.model, run.model_digest, run.plan, run.label, run.layer_sparsity) == (
        "digits-cnn", "abc", {"sparsity": 0.3}, "", {})
    assert run.quality == 0.8
    assert store.record(make_report(), label="after upgrade").label == "after upgrade"


def test_store_from_a_newer_prunelab_is_refused(tmp_path):
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(PrunelabError, match="newer"):
        RunStore(path).list()


def test_record_list_show_delete_round_trip(prunelab_home):
    report = make_report(accuracy=0.91, p50=1.25)
    first = record_run(report, model="digits-mlp", layer_sparsity={"fc1": 0.6, "fc2": 0.5},
                       artifacts={"report": prunelab_home / "elsewhere.json"},
                       files={"plan.yaml": b"sparsity: 0.5\n", "report.json": json.dumps(report)},
                       label="half", notes="first try")
    second = record_run(make_report(accuracy=0.85), model="digits-cnn")
    assert [run.id for run in list_runs()] == [second.id, first.id]
    assert [run.id for run in list_runs(model="digits-mlp")] == [first.id]
    shown = get_run(first.id)
    assert shown == first
    assert shown.metrics == json.loads(json.dumps(report))
    assert (shown.label, shown.notes, shown.quality, shown.latency_p50) == ("half", "first try", 0.91, 1.25)
    assert Path(shown.artifacts["plan.yaml"]).read_bytes() == b"sparsity: 0.5\n"
    assert json.loads(Path(shown.artifacts["report.json"]).read_text()) == json.loads(json.dumps(report))
    owned = Path(shown.artifacts["plan.yaml"]).parent
    assert owned.parent == prunelab_home / "artifacts"
    delete_run(first.id)
    assert [run.id for run in list_runs()] == [second.id]
    assert not owned.exists()
    with pytest.raises(PrunelabError, match=f"no run with id {first.id}"):
        get_run(first.id)
    with pytest.raises(PrunelabError, match="no run"):
        delete_run(first.id)


def test_plan_object_and_handle_like_model_are_accepted():
    class Handle:
        name, digest = "digits-resnet", "0123456789abcdef"

    class PlanLike:
        def to_dict(self):
            return {"sparsity": 0.25}

    run = record_run(make_report(), model=Handle(), plan=PlanLike())
    assert (run.model, run.model_digest, run.plan) == ("digits-resnet", "0123456789abcdef", {"sparsity": 0.25})


def test_nan_metrics_are_stored_as_null():
    report = make_report()
    report["pruned"]["max_abs_diff"] = float("nan")
    run = record_run(report)
    assert run.pruned["max_abs_diff"] is None


# A child process records two runs, then is killed inside the third: in the open transaction
# (row inserted, not committed) or halfway through writing an artifact.
CHILD = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {root!r})
    import core.history.runs as runs
    report = json.loads({report!r})
    for index in range(2):
        runs.record_run(report, files={{"report.json": json.dumps(report)}}, label=f"kept {{index}}")
    stage = sys.argv[1]
    if stage == "transaction":
        original = runs._insert_run
        def stalled(connection, row):
            run_id = original(connection, row)
            print("inside", flush=True)
            time.sleep(120)
            return run_id
        runs._insert_run = stalled
    else:
        real_fdopen = os.fdopen
        class Stalling:
            def __init__(self, stream): self.stream = stream
            def __enter__(self): return self
            def __exit__(self, *exc): return self.stream.__exit__(*exc)
            def write(self, data):
                self.stream.write(data[: len(data) // 2]); self.stream.flush()
                print("inside", flush=True)
                time.sleep(120)
            def __getattr__(self, name): return getattr(self.stream, name)
        os.fdopen = lambda *args, **kwargs: Stalling(real_fdopen(*args, **kwargs))
    runs.record_run(report, files={{"big.bin": b"x" * 4_000_000}}, label="killed")
""")


@pytest.mark.parametrize("stage", ["transaction", "artifact"])
def test_killed_writer_loses_only_its_own_run(stage, prunelab_home):
    script = CHILD.format(root=str(ROOT), report=json.dumps(make_report()))
    child = subprocess.Popen([sys.executable, "-c", script, stage], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PRUNELAB_HOME": str(prunelab_home)})
    try:
        assert child.stdout.readline().strip() == "inside"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    runs = list_runs()
    assert [run.label for run in runs] == ["kept 1", "kept 0"]
    assert RunStore().integrity() == "ok"
    for run in runs:
        assert json.loads(Path(run.artifacts["report.json"]).read_text())["pruned"]["accuracy"] == 0.9
    store = RunStore()
    [orphan] = store.orphans(min_age_seconds=0)  # the killed run's files, which no row points at
    assert store.orphans() == []  # too young to be sure its writer is gone
    assert store.remove_orphans(min_age_seconds=0) == [orphan] and not orphan.exists()
    after = record_run(make_report(), label="after the crash")
    assert [run.label for run in list_runs()] == ["after the crash", "kept 1", "kept 0"]
    assert after.id > runs[0].id


def test_concurrent_writers_all_land():
    errors = []

    def write(worker: int):
        try:
            for index in range(5):
                record_run(make_report(accuracy=0.5 + worker / 10), label=f"{worker}-{index}")
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    labels = sorted(run.label for run in list_runs())
    assert labels == sorted(f"{worker}-{index}" for worker in range(4) for index in range(5))
    assert RunStore().integrity() == "ok"


def test_label_and_notes_can_be_changed():
    run = record_run(make_report())
    changed = RunStore().update(run.id, label="best", notes="ship it")
    assert (changed.label, changed.notes, changed.metrics) == ("best", "ship it", run.metrics)


def test_compare_gives_layer_and_metric_differences():
    first = record_run(make_report(accuracy=0.9, p50=2.0, sparsity=0.5), layer_sparsity={"fc1": 0.5, "fc2": 0.5})
    second = record_run(make_report(accuracy=0.8, p50=1.5, sparsity=0.7))  # only plan targets known
    diff = compare_runs(first.id, second.id)
    assert diff["runs"] == [first.id, second.id]
    layers = {row["layer"]: row for row in diff["layers"]}
    assert layers["fc1"]["a"] == 0.5 and layers["fc1"]["b"] == pytest.approx(0.8)
    assert layers["fc1"]["delta"] == pytest.approx(0.3)
    assert layers["fc2"] == {"layer": "fc2", "a": 0.5, "b": 0.7, "delta": pytest.approx(0.2)}
    metrics = {row["metric"]: row for row in diff["metrics"]}
    assert metrics["accuracy"]["delta"] == pytest.approx(-0.1)
    assert metrics["latency_ms.p50"] == {"metric": "latency_ms.p50", "a": 2.0, "b": 1.5, "delta": -0.5}
    assert "label" not in metrics  # not numeric
    assert {"field": "sparsity", "a": 0.5, "b": 0.7} in diff["plan"]


def test_pareto_indices_on_hand_made_points():
    points = [
        (0.90, 3.0),   # 0 front: most accurate
        (0.85, 2.0),   # 1 front
        (0.80, 2.5),   # 2 dominated by 1
        (0.70, 1.0),   # 3 front: fastest
        (0.85, 2.0),   # 4 ties 1: neither dominates the other
        (0.70, 1.5),   # 5 dominated by 3
        (None, 0.5),   # 6 no accuracy
        (0.99, float("nan")),  # 7 no latency
        (0.60, 1.0),   # 8 same latency as 3, less accurate
    ]
    assert pareto_indices(points) == [3, 1, 4, 0]
    assert pareto_indices([]) == []
    assert pareto_indices([(0.5, 1.0)]) == [0]


def test_pareto_front_of_runs_uses_agreement_when_unlabelled():
    def run(run_id, accuracy, agreement, p50):
        report = make_report(accuracy=accuracy, p50=p50)
        report["pruned"]["agreement"] = agreement
        return Run(id=run_id, created="", model="m", model_digest=None, plan={}, metrics=report)

    runs = [run(1, None, 0.99, 2.0), run(2, None, 0.95, 1.0), run(3, None, 0.94, 1.5), run(4, 0.5, 1.0, 5.0)]
    assert runs[3].quality == 0.5  # accuracy wins over agreement when the data is labelled
    assert [item.id for item in pareto_front(runs)] == [2, 1]


def test_cli_lists_shows_compares_and_deletes(capsys):
    from core.cli import main

    first = record_run(make_report(accuracy=0.9), label="one", layer_sparsity={"fc1": 0.5})
    second = record_run(make_report(accuracy=0.8, sparsity=0.7), label="two")
    assert main(["runs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(run["id"], run["label"], run["metrics"]["pruned"]["accuracy"]) for run in listed] == [
        (second.id, "two", 0.8), (first.id, "one", 0.9)]
    assert main(["runs"]) == 0
    assert "two" in capsys.readouterr().out
    assert main(["runs", "show", str(first.id), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["sparsity"] == 0.5
    assert main(["runs", "compare", str(first.id), str(second.id), "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert {row["metric"]: row["delta"] for row in diff["metrics"]}["accuracy"] == pytest.approx(-0.1)
    assert main(["runs", "check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["integrity"] == "ok"
    assert main(["runs", "delete", str(first.id)]) == 0
    capsys.readouterr()
    assert main(["runs", "show", str(first.id)]) == 2
    assert f"no run with id {first.id}" in capsys.readouterr().err


def test_runs_are_logged_to_an_mlflow_file_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from core.history.mlflow_log import log_runs

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx bytes")
    run = record_run(make_report(accuracy=0.875), artifacts={"model.onnx": onnx}, label="logged")
    uri = (tmp_path / "mlruns").as_uri()
    [(prunelab_id, mlflow_id)] = log_runs([run], uri).items()
    client = mlflow.MlflowClient(tracking_uri=uri)
    logged = client.get_run(mlflow_id)
    assert prunelab_id == run.id and logged.data.tags["prunelab.run_id"] == str(run.id)
    assert logged.data.metrics["accuracy"] == 0.875 and logged.data.metrics["latency_ms.p50"] == 1.0
    assert logged.data.metrics["baseline.accuracy"] == 0.97
    assert logged.data.params["sparsity"] == "0.5" and logged.data.params["layers.fc1"] == "0.6"
    assert [item.path for item in client.list_artifacts(mlflow_id, "prunelab")] == ["prunelab/model.onnx"]
