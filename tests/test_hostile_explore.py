"""explore bounded in plans and workers, recording each plan as it finishes, and stopped by Ctrl-C in seconds."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.test_hostile import refused

ROOT = Path(__file__).resolve().parent.parent


def test_grid_over_the_plan_limit_is_refused_before_building_plans(cli):
    values = ",".join(f"{index / 1000:.3f}" for index in range(1, 1000))
    grid = f"sparsity={values};criterion=l1,l2,fpgm,taylor;granularity=unstructured,channel;round_to=1,2,4,8"
    assert len(grid) < 10_000
    line = refused(cli("explore", "digits-mlp", "--grid", grid), "31,968 plans", "--max-plans", "PRUNELAB_MAX_PLANS")
    assert "999 sparsity x 4 criterion" in line
    refused(cli("explore", "digits-mlp", "--grid", "sparsity=0.1,0.2,0.3", "--max-plans", "2"), "3 plans", "limit is 2")
    refused(cli("explore", "digits-mlp", "--grid", "sparsity=0.1,0.2", env={"PRUNELAB_MAX_PLANS": "1"}), "2 plans")


def test_a_huge_product_is_counted_not_built(monkeypatch):
    from core.errors import PrunelabError
    from core.search import explore

    def never(grid):
        raise AssertionError("plans were built")

    monkeypatch.setattr(explore, "grid_plans", never)
    grid = {key: [0.5] * 1000 for key in ("sparsity",)} | {"round_to": list(range(1, 1001)),
                                                              "criterion": ["l1"] * 1000}
    started = time.perf_counter()
    with pytest.raises(PrunelabError, match="1,000,000,000 plans"):
        explore.explore(None, grid)
    assert time.perf_counter() - started < 1.0


def test_workers_are_capped_at_the_machines_cores(cli, monkeypatch):
    from core.search.executors import capped_workers, executor_for
    from core.search.parallel import default_workers

    cores = default_workers()
    assert capped_workers(10_000) == cores and capped_workers(None) == cores and capped_workers(1) == 1
    executor = executor_for(10_000)
    assert executor.describe()["workers"] == cores if cores > 1 else executor.describe()["kind"] == "serial"
    result = cli("explore", "digits-mlp", "--workers", "10000", "--grid", "sparsity=0.5,0.6;criterion=l1",
                 "--max-plans", "1")  # refused after the cap is announced, before any worker starts
    assert f"--workers 10000 capped at {cores}" in result["stderr"] or cores >= 10_000
    assert result["code"] == 2 and result["above_mib"] < 1024


def test_each_plan_is_recorded_as_it_finishes(cnn, monkeypatch):
    from core.history.runs import RunStore
    from core.search.explore import explore

    seen = []

    def progress(done, total, text):
        seen.append(len(RunStore().list()))  # the store already holds the plan this call reports

    summary = explore(cnn, "sparsity=0.5,0.8;criterion=l1;granularity=unstructured", workers=1, progress=progress)
    assert seen == [1, 2] and summary["measured"] == 2 and not summary["stopped"]


def run_count(database: Path) -> int:
    if not database.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as connection:
            return connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.Error:  # created but not yet migrated
        return 0


def session_processes(session: int) -> list[int]:
    """Processes still alive in the session ``session`` (the command and every worker it started)."""
    alive = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and int(fields[3]) == session and fields[0] != "Z":
            alive.append(int(entry.name))
    return alive


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_ends_explore_in_seconds_and_keeps_what_was_measured(tmp_path, workers):
    home = tmp_path / "home"
    grid = "sparsity=0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9;criterion=l1,l2;granularity=unstructured"
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "PRUNELAB_HOME": str(home)}
    process = subprocess.Popen([sys.executable, "-m", "core.cli", "explore", "digits-mlp", "--workers", workers,
                                "--grid", grid], env=environment, start_new_session=True, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # (a test process may ignore SIGINT, as pytest-xdist's workers do; the command must start as a terminal's would)
    try:
        wait_until(lambda: run_count(home / "runs.db") >= 1 or process.poll() is not None, 240, "the first run")
        assert process.poll() is None, process.communicate()
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole process group
        stopped = time.monotonic()
        out, err = process.communicate(timeout=30)
        took = time.monotonic() - stopped
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err
    assert took < 15, took
    assert "stopped" in err and "Traceback" not in err, err
    kept = run_count(home / "runs.db")
    assert 1 <= kept < 18
    assert f"measured {kept} of 18 plans" in out
    wait_until(lambda: not session_processes(process.pid), 10, "every worker ending")  # none left behind
