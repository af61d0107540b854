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


def test_dashboard_takes_a_metric_only_with_allow_code_and_opens_with_its_cards(monkeypatch, capsys, open_app,
                                                                                clean_environment):
    metrics = Path(__file__).parent / "fixtures" / "metrics.py"
    monkeypatch.setattr(os, "execve", lambda *args: pytest.fail("the server must not start"))
    assert main(["dashboard", "digits-mlp", "--metric", f"{metrics}:macro_f1"]) == 2
    assert "add --allow-code" in capsys.readouterr().err
    started = {}
    monkeypatch.setattr(os, "execve", lambda path, arguments, env: started.update(env=env))
    monkeypatch.chdir(metrics.parent)
    assert main(["dashboard", "digits-mlp", "--metric", "metrics.py:macro_f1", "--allow-code"]) == 0
    assert started["env"]["PRUNELAB_METRIC"] == f"{metrics}:macro_f1"  # the file's absolute path
    app = open_app("digits-mlp", env={key: started["env"][key] for key in ("PRUNELAB_METRIC", "PRUNELAB_ALLOW_CODE")})
    assert not app.exception and not app.error
    assert "macro F1" in {metric.label for metric in app.metric}  # no tick asked: the server's owner named it


def test_a_detectors_goal_box_speaks_of_the_detections_its_sweep_scores(open_app):
    detector = Path(__file__).parent / "fixtures" / "two_heads.py"
    app = open_app(f"{detector}:detector", env={"PRUNELAB_INPUT_SHAPE": "1,3,16,16"})
    assert not app.exception and not app.error
    goal = app.selectbox(key="w.tune.goal.detections")
    assert "Detections-kept drop at most" in goal.options
