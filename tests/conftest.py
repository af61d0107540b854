"""Shared fixtures: the demo models loaded once per test session, an unseen user architecture."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from core.sources import load_model

ROOT = Path(__file__).resolve().parent.parent
USER_MODELS = ROOT / "tests" / "fixtures" / "user_models.py"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def prunelab_home(tmp_path, monkeypatch):
    """Every test gets its own PRUNELAB_HOME, so no test touches a person's saved runs."""
    home = tmp_path / "prunelab-home"
    monkeypatch.setenv("PRUNELAB_HOME", str(home))
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
