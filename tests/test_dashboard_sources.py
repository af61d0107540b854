"""`prunelab dashboard MODEL` with source options, and the dashboard on a Hugging Face text model."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from core.cli import main
from tests.fixtures.hf_models import TINY_BERT


def test_dashboard_takes_the_same_source_options(monkeypatch, tmp_path, clean_environment):
    started = {}
    monkeypatch.setattr(os, "execve", lambda path, arguments, env: started.update(env=env))
    data = tmp_path / "data.npz"
    assert main(["dashboard", "models.py:resnet18", "--input-shape", "1,3,224,224", "--data", str(data),
                 "--weights", "w.pt", "--trust"]) == 0
    env = started["env"]
    assert env["PRUNELAB_MODEL"] == "models.py:resnet18" and env["PRUNELAB_INPUT_SHAPE"] == "1,3,224,224"
    assert env["PRUNELAB_DATA"] == str(data.resolve()) and env["PRUNELAB_WEIGHTS"] == str(Path("w.pt").resolve())
    assert env["PRUNELAB_TRUST"] == "1"


def test_source_options_without_a_model_are_refused(monkeypatch, capsys, clean_environment):
    monkeypatch.setattr(os, "execve", lambda *args: pytest.fail("the server must not start"))
    assert main(["dashboard", "--input-shape", "1,8"]) == 2
    assert "name the model too" in capsys.readouterr().err


def test_dashboard_opens_a_hugging_face_directory_with_embedding_fidelity(tmp_path, open_app):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    directory = tmp_path / "tiny-bert"
    transformers.BertModel(transformers.BertConfig(**TINY_BERT)).save_pretrained(directory)
    ids = np.random.default_rng(0).integers(1, 100, size=(40, 8))
    np.savez(tmp_path / "tokens.npz", input_ids=ids)
    app = open_app(str(directory), timeout=180,
                   env={"PRUNELAB_INPUT_SHAPE": "1,8", "PRUNELAB_DATA": str(tmp_path / "tokens.npz")})
    assert not app.exception and not app.error
    cards = {metric.label: metric.value for metric in app.metric}
    assert cards["Cosine to dense"] == "1.000" and cards["Neighbours kept"] == "100.0%"
    assert "Accuracy" not in cards


def test_a_transformer_channel_plan_can_prune_the_residual_stream_from_the_page(tmp_path, open_app):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    directory = tmp_path / "tiny-bert"
    transformers.BertForSequenceClassification(transformers.BertConfig(**TINY_BERT)).save_pretrained(directory)
    app = open_app(str(directory), timeout=180, env={"PRUNELAB_INPUT_SHAPE": "1,8"})
    assert app.toggle(key="w.recalibrate").proto.disabled  # no BatchNorm in BERT
    assert not [toggle for toggle in app.toggle if toggle.key == "w.prune_width"]  # channel plans only
    app.selectbox(key="w.granularity").set_value("channel").run()
    app.slider(key="w.global").set_value(50).run()
    kept = app.session_state["prunelab.report"]
    notes = " ".join(caption.value for caption in app.caption)
    assert "turn on 'Prune the residual stream too'" in notes and "prune_width" not in notes
    app.toggle(key="w.prune_width").set_value(True).run()
    assert not app.exception and not app.error
    narrowed = app.session_state["prunelab.report"]
    assert narrowed["plan"]["prune_width"] is True and kept["plan"].get("prune_width", False) is False
    assert narrowed["pruned"]["macs"] < kept["pruned"]["macs"]
