"""Sweeps on local worker processes: equal to the serial sweep, retried when a worker dies, stoppable."""
from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import time

import pytest

from core.cli import main
from core.errors import PrunelabError
from core.search.executors import executor_for
from core.search.parallel import Outcome, PoolExecutor, Work
from core.search.sensitivity import sensitivity
from tests.conftest import wait_until

LEVELS = (0.0, 0.5, 0.9)
ITEMS = 120

pytestmark = pytest.mark.slow  # each test starts Python worker processes that import torch


def points(result: dict) -> list[tuple]:
    return [(layer["name"], point["sparsity"], point["accuracy"], point["loss"])
            for layer in result["layers"] for point in layer["curve"]]


@pytest.fixture(scope="module")
def serial(cnn, tmp_path_factory):
    os.environ["PRUNELAB_HOME"] = str(tmp_path_factory.mktemp("serial-home"))
    try:
        return sensitivity(cnn, levels=LEVELS, max_items=ITEMS, workers=1)
    finally:
        del os.environ["PRUNELAB_HOME"]


def test_two_workers_give_the_serial_curves_point_for_point_and_one_cache_entry(cnn, serial, prunelab_home):
    seen = []
    parallel = sensitivity(cnn, levels=LEVELS, max_items=ITEMS, workers=2,
                           progress=lambda done, total, text: seen.append((done, total)))
    assert points(parallel) == points(serial)
    assert parallel["baseline_accuracy"] == serial["baseline_accuracy"]
    assert parallel["complete"] is True and parallel["missing"] == []
    assert parallel["evaluated_on"]["workers"] == 2 and parallel["evaluated_on"]["executor"] == "processes"
    assert parallel["evaluated_on"]["torch_threads"] == 1  # each of 2 workers gets one of the 2 cores
    assert [done for done, _ in seen] == list(range(1, 10)) and {total for _, total in seen} == {9}
    entries = list((prunelab_home / "cache" / "sensitivity").glob("*"))
    assert len(entries) == 1 and entries[0].suffix == ".json"  # written once by this process, no temporaries
    assert multiprocessing.active_children() == []
    again = sensitivity(cnn, levels=LEVELS, max_items=ITEMS, workers=1)  # the serial path reads the same entry
    assert again == parallel


def test_a_worker_killed_mid_sweep_is_replaced_and_its_points_measured_again(cnn, serial):
    killed = []

    def kill_one_worker(done, total, text):
        children = multiprocessing.active_children()
        if not killed and children:
            os.kill(children[0].pid, signal.SIGKILL)
            killed.append(children[0].pid)

    result = sensitivity(cnn, levels=LEVELS, max_items=ITEMS, workers=2, progress=kill_one_worker)
    assert killed, "no worker process was running to be killed"
    assert result["complete"] is True and result["missing"] == []
    assert points(result) == points(serial)
    assert multiprocessing.active_children() == []


def test_stopping_ends_every_worker_and_caches_nothing(cnn, prunelab_home):
    polls = []

    def should_stop():
        polls.append(time.monotonic())
        return len(polls) > 3

    partial = sensitivity(cnn, levels=LEVELS, max_items=ITEMS, workers=2, should_stop=should_stop)
    assert partial["complete"] is False
    assert multiprocessing.active_children() == []
    assert not list((prunelab_home / "cache").rglob("*.json"))


def test_ctrl_c_ends_every_worker(cnn, prunelab_home):
    def interrupt(done, total, text):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sensitivity(cnn, levels=LEVELS, max_items=ITEMS, workers=2, progress=interrupt)
    assert multiprocessing.active_children() == []
    assert not list((prunelab_home / "cache").rglob("*"))  # no entry, no half-written temporary


# --- the executor on jobs of its own ----------------------------------------------------------

def build_counter(payload: bytes, threads: int) -> dict:
    return {"folder": pickle.loads(payload)}


def square_or_die(state: dict, job: int) -> int:
    """Squares ``job``; job 3 kills its worker process every time, after noting the attempt."""
    if job == 3:
        with open(os.path.join(state["folder"], f"attempt-{time.monotonic_ns()}"), "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    return job * job


def test_a_job_that_kills_its_worker_twice_is_reported_missing(tmp_path):
    work = Work(jobs=list(range(6)), prepare=lambda: build_counter(pickle.dumps(str(tmp_path)), 1),
                pack=lambda: pickle.dumps(str(tmp_path)), build=build_counter, run=square_or_die)
    outcome = PoolExecutor(2).map(work, lambda done, total, text: None, lambda: False)
    assert isinstance(outcome, Outcome)
    assert outcome.missing == [3] and not outcome.complete
    assert outcome.values == {0: 0, 1: 1, 2: 4, 4: 16, 5: 25}
    assert len(list(tmp_path.glob("attempt-*"))) == 2  # tried, then tried once more
    assert multiprocessing.active_children() == []


def test_bad_worker_counts_are_refused(cnn):
    with pytest.raises(PrunelabError, match="workers must be at least 1"):
        executor_for(0)
    assert main(["sensitivity", "digits-cnn", "--workers", "0"]) == 2


def test_explore_records_one_run_per_valid_plan_of_the_grid(cnn):
    from core.api import explore, list_runs

    seen = []
    summary = explore(cnn, "sparsity=0.5,0.8;criterion=l1,fpgm;granularity=unstructured", workers=1,
                      progress=lambda done, total, text: seen.append(text))
    assert summary["plans"] == summary["measured"] == 2 and summary["missing"] == []
    assert len(summary["skipped"]) == 2 and "fpgm" in summary["skipped"][0]  # fpgm ranks channels only
    runs = sorted(list_runs("digits-cnn"), key=lambda run: run.id)
    assert [run.id for run in runs] == summary["runs"]
    assert [run.plan["sparsity"] for run in runs] == [0.5, 0.8]
    assert [run.label for run in runs] == ["explore: unstructured l1 layer 50%", "explore: unstructured l1 layer 80%"]
    assert runs[1].quality < runs[0].quality  # 80% of every layer costs more than 50%
    assert seen == ["unstructured l1 layer 50%", "unstructured l1 layer 80%"]


def test_bad_grids_are_one_line_errors(capsys):
    assert main(["explore", "digits-cnn", "--grid", "sparsity=0.5;colour=red"]) == 2
    assert "colour=red" in capsys.readouterr().err
    assert main(["explore", "digits-cnn", "--grid", "sparsity=half"]) == 2
    assert "float" in capsys.readouterr().err


def test_history_page_measures_a_grid_in_the_background(open_app):
    from core.api import list_runs

    app = open_app(page="history")
    app.text_input(key="w.history.grid").set_value("sparsity=0.4,0.8;criterion=l1;granularity=unstructured").run()
    app.button(key="history-grid").click().run()
    assert not app.exception and not app.error
    def finished():  # the page says so once the job has recorded both runs and ended
        app.run()
        return any("Measured 2 of 2 plans" in message.value for message in app.success)

    wait_until(finished, 120, "the grid job's end")
    assert not app.exception and not app.error
    assert sorted(run.plan["sparsity"] for run in list_runs()) == [0.4, 0.8]


def test_allocation_checks_its_candidates_on_workers_and_picks_the_serial_choice(cnn, serial):
    from core.api import allocate

    one = allocate(cnn, target_sparsity=0.8, sensitivity=serial, workers=1)
    two = allocate(cnn, target_sparsity=0.8, sensitivity=serial, workers=2)
    assert two.layers == one.layers and len(one.layers) == 4  # every included layer has a target
    assert multiprocessing.active_children() == []
