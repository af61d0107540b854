"""Shared fixtures: the demo models loaded once per test session, an unseen user architecture, the
dashboard driven by AppTest, the command line in a child process, Chromium and a dashboard server,
and ``wait_until`` for everything that finishes in the background (no test sleeps a fixed time)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from core.sources import load_model

ROOT = Path(__file__).resolve().parent.parent
USER_MODELS = ROOT / "tests" / "fixtures" / "user_models.py"
APP = ROOT / "dashboard" / "app.py"
PAGES = ROOT / "dashboard" / "pages"
# Variables that choose what the dashboard opens with; every AppTest starts without them.
SOURCE_VARIABLES = ("PRUNELAB_MODEL", "PRUNELAB_WEIGHTS", "PRUNELAB_INPUT_SHAPE", "PRUNELAB_DATA",
                    "PRUNELAB_TRUST", "PRUNELAB_ALLOW_CODE", "PRUNELAB_MODEL_ROOT", "PRUNELAB_METRIC")

# Torch threads per test process: the cores shared out among pytest-xdist's processes (`make test` runs 2 on
# 2 cores). Two processes of 2 threads each on 2 cores spin against each other: the same forward passes of
# digits-resnet took 1.5x the CPU time and 1.5x the wall time with 2 threads as with 1 on a busy machine.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
torch.set_num_threads(THREADS)
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))  # the command line and dashboard processes tests start

# The files that take longest, longest first (per-file times of one-file runs). `make test` hands whole
# files to its processes in collection order (--dist loadfile --no-loadscope-reorder), so the long files
# start first and the short ones fill in at the end, and both processes finish near the same time.
LONGEST_FIRST = ("test_benchmarks_smoke.py", "test_browser_tune.py", "test_allocate.py", "test_spend.py",
                 "test_parallel.py", "test_conformance.py", "test_generation.py", "test_oneshot.py",
                 "test_structured.py", "test_dashboard_app.py", "test_depth.py", "test_ray.py",
                 "test_hostile_models.py", "test_lm.py", "test_browser_export.py", "test_browser.py",
                 "test_profile.py", "test_huggingface.py", "test_sensitivity.py", "test_profile_cost.py",
                 "test_properties.py", "test_downloaded.py", "test_hostile_dashboard.py", "test_quantize.py",
                 "test_hostile_explore.py")


def pytest_collection_modifyitems(items):
    """Run LONGEST_FIRST's files first; every file keeps its own order of tests, the rest their name order."""
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def prunelab_home(tmp_path, monkeypatch):
    """Every test gets its own PRUNELAB_HOME, so no test touches a person's saved runs."""
    home = tmp_path / "prunelab-home"
    monkeypatch.setenv("PRUNELAB_HOME", str(home))
    monkeypatch.setenv("PRUNELAB_LIVE_WAIT", "600")  # AppTest runs the page once: it shows the final figures
    return home


@pytest.fixture(scope="session")
def mlp():
    return load_model("digits-mlp")


@pytest.fixture(scope="session")
def cnn():
    return load_model("digits-cnn")


@pytest.fixture(scope="session")
def resnet():
    return load_model("digits-resnet")


@pytest.fixture(scope="session")
def tinylm():
    """The built-in Llama with its tokenizer and its text in 128-token windows."""
    return load_model("tinylm")


@pytest.fixture(scope="session")
def user_model():
    """The unseen architecture (residual, concat, depthwise, attention) on random 3x16x16 inputs."""
    return load_model(f"{USER_MODELS}:factory", input_shape=(1, 3, 16, 16))


@pytest.fixture(scope="module")
def ray_cluster():
    """A real Ray head on 127.0.0.1 with 2 CPUs, started for the module and stopped whatever happens.

    ``.address`` is where it listens; its processes share one new session, ``.session``, whose
    processes teardown ends. The head gets no PYTHONPATH,
    so prunelab's code must reach its workers through the job itself.
    """
    import shutil
    from types import SimpleNamespace

    from benchmarks.scale import start_ray_head, stop_ray_head

    pytest.importorskip("ray")
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    try:
        head, address, folder = start_ray_head(environment)
    except RuntimeError as error:
        pytest.fail(str(error))
    try:
        yield SimpleNamespace(address=address, session=head.pid)
    finally:
        stop_ray_head(head)
        shutil.rmtree(folder, ignore_errors=True)


class CliRunner:
    """``prunelab`` commands through tests/fixtures/cli_runner.py: one import, one forked process per command."""

    def __init__(self):
        import subprocess
        import sys

        environment = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fixtures" / "cli_runner.py")],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment)

    def __call__(self, *argv, env: dict | None = None, cwd=None) -> dict:
        """Run ``prunelab ARGV``; returns code, stdout, stderr, peak_mib, baseline_mib and ``above_mib``."""
        import json

        request = {"argv": [str(part) for part in argv], "env": {"PRUNELAB_HOME": os.environ["PRUNELAB_HOME"],
                                                                 **(env or {})},
                   "cwd": str(cwd) if cwd else None}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        answer["above_mib"] = answer["peak_mib"] - answer["baseline_mib"]
        return answer

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="session")
def cli():
    """Run the command line in a child process and read its exit code, output and peak memory."""
    runner = CliRunner()
    yield runner
    runner.close()


# ---------------------------------------------------------------- browser tests (tests/test_browser*.py)

@pytest.fixture(scope="module")
def browser():
    """The system Chromium, launched once per test module."""
    from playwright.sync_api import sync_playwright

    from tests.test_browser import launch

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A dashboard server with no model named, its own PRUNELAB_HOME, stopped after the module."""
    from tests.test_browser import start_server, stop_server

    process, url = start_server(None, tmp_path_factory.mktemp("prunelab-home"))
    yield url
    stop_server(process)


# ---------------------------------------------------------------- the dashboard through AppTest

@pytest.fixture
def open_app(monkeypatch):
    """``open_app(model=None, page=None, timeout=120, run=True)``: the dashboard as a new visitor sees it.

    ``model`` is what ``prunelab dashboard MODEL`` would open (None: the default, digits-cnn);
    ``page`` a file name under dashboard/pages ("history") to switch to; ``run=False`` hands the
    app back before its first run (to set query parameters first); ``env`` sets more PRUNELAB_*
    variables (the dashboard's source options).
    """
    from streamlit.testing.v1 import AppTest

    def open_(model: str | None = None, page: str | None = None, timeout: float = 120, run: bool = True,
              env: dict[str, str] | None = None):
        for name in SOURCE_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in {**({"PRUNELAB_MODEL": model} if model else {}), **(env or {})}.items():
            monkeypatch.setenv(name, value)
        app = AppTest.from_file(str(APP), default_timeout=timeout)
        if not run:
            return app
        app.run()
        return app.switch_page(f"pages/{page}.py").run() if page else app

    return open_


@pytest.fixture
def open_page(monkeypatch):
    """``open_page(name, model=None, timeout=60)``: one page file of dashboard/pages, alone, not yet run
    (its session state can be filled first)."""
    from streamlit.testing.v1 import AppTest

    def open_(name: str, model: str | None = None, timeout: float = 60):
        for variable in SOURCE_VARIABLES:
            monkeypatch.delenv(variable, raising=False)
        if model:
            monkeypatch.setenv("PRUNELAB_MODEL", model)
        return AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=timeout)

    return open_


@pytest.fixture
def clean_environment(monkeypatch):
    """No PRUNELAB_* source variable set (as a person starting ``prunelab dashboard`` plainly)."""
    for name in SOURCE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def app(open_app):
    """The dashboard as a fresh visitor sees it (digits-cnn on the Tune page)."""
    return open_app()


def wait_until(condition, seconds: float = 120, what: str = "the condition", poll: float = 0.05):
    """Call ``condition`` until it returns something true, and return that; AssertionError naming
    ``what`` after ``seconds``. Polls quickly: a test waits as long as the work takes, no longer."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds:g} s")
        time.sleep(poll)
