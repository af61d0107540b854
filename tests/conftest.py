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
def user_model():
    """The unseen architecture (residual, concat, depthwise, attention) on random 3x16x16 inputs."""
    return load_model(f"{USER_MODELS}:factory", input_shape=(1, 3, 16, 16))
