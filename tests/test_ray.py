"""Sweeps as tasks on a real local Ray cluster (127.0.0.1): equal to serial, retried, failing fast."""
from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from benchmarks.scale import session_processes
from core.cli import main
from core.search.sensitivity import sensitivity

pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a Ray head starts once for the module

LEVELS = (0.0, 0.5, 0.9)
ITEMS = 120


def points(result: dict, keys=("accuracy", "loss")) -> list[tuple]:
    """(layer, sparsity, *values) of every point; floats to 6 significant digits: a Ray worker and this process may
    run torch on different thread counts, which sums the same products in another order (the loss's last bits)."""
    return [(layer["name"], point["sparsity"], *(float(f"{value:.6g}") if isinstance(value, float) else value
                                                 for value in (point[key] for key in keys)))
            for layer in result["layers"] for point in layer["curve"]]


def task_workers(session: int) -> list[int]:
    """Process ids of the cluster's task workers (Ray titles them ``ray::IDLE`` or by task; not its agents)."""
    found = []
    for pid in session_processes(session):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(b"ray::") and b"Agent" not in title:
            found.append(pid)
    return found


def test_a_sweep_through_ray_equals_the_serial_sweep(cnn, ray_cluster):
    serial = sensitivity(cnn, levels=LEVELS, max_items=ITEMS, workers=1)
    os.environ["PRUNELAB_HOME"] = os.environ["PRUNELAB_HOME"] + "-ray"  # a cache of its own
    through_ray = sensitivity(cnn, levels=LEVELS, max_items=ITEMS, ray_address=ray_cluster.address)
    assert points(through_ray) == points(serial)
    assert through_ray["complete"] is True and through_ray["evaluated_on"]["executor"] == "ray"
    assert through_ray["evaluated_on"]["workers"] == 2  # one job per CPU of the cluster, not one at a time


def test_channel_points_name_the_node_that_timed_them(cnn, ray_cluster):
    serial = sensitivity(cnn, granularity="channel", levels=(0.0, 0.5), max_items=ITEMS, workers=1)
    os.environ["PRUNELAB_HOME"] = os.environ["PRUNELAB_HOME"] + "-ray"
    through_ray = sensitivity(cnn, granularity="channel", levels=(0.0, 0.5), max_items=ITEMS,
                              ray_address=ray_cluster.address)
    keys = ("accuracy", "loss", "params", "macs")
    assert points(through_ray, keys) == points(serial, keys)
    nodes = {point["measured_on"] for layer in through_ray["layers"] for point in layer["curve"]}
    assert len(nodes) == 1 and re.fullmatch(r"\S+ \([0-9a-f]{8}\)", next(iter(nodes)))  # "address (node id)"
    assert through_ray["evaluated_on"]["latency"]["nodes"] == sorted(nodes)
    assert "comparable" not in through_ray["evaluated_on"]["latency"]  # one machine: nothing to warn about


def test_a_ray_worker_killed_mid_sweep_is_retried(cnn, ray_cluster):
    killed = []

    def kill_workers(done, total, text):
        # as the first point comes back the second job is still running: kill every worker
        workers = task_workers(ray_cluster.session)
        if not killed and workers:
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            killed.extend(workers)

    serial = sensitivity(cnn, levels=LEVELS, max_items=ITEMS, workers=1)
    os.environ["PRUNELAB_HOME"] = os.environ["PRUNELAB_HOME"] + "-ray"
    result = sensitivity(cnn, levels=LEVELS, max_items=ITEMS, ray_address=ray_cluster.address, progress=kill_workers)
    assert killed, "no Ray worker was running when the first point came back"
    assert result["complete"] is True and result["missing"] == []
    assert points(result) == points(serial)


def test_an_unreachable_address_fails_fast_in_one_line(capsys):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    assert main(["sensitivity", "digits-cnn", "--ray-address", address]) == 2
    assert time.monotonic() - started < 10
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"prunelab: error: no Ray cluster answers at {address}") and "\n" not in error


def test_the_address_can_come_from_the_environment(capsys, monkeypatch):
    monkeypatch.setenv("PRUNELAB_RAY_ADDRESS", "127.0.0.1:1")
    assert main(["sensitivity", "digits-cnn"]) == 2
    assert "no Ray cluster answers at 127.0.0.1:1" in capsys.readouterr().err
