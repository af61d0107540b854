"""Loading models from every source, and refusing bad input in one clear line."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from core.errors import PrunelabError
from core.sources import load_model, parse_input_shape
from core.zoo.models import DigitsMLP
from tests.conftest import USER_MODELS


def test_builtins_load_with_their_data_and_reach_their_recorded_accuracy(cnn):
    assert cnn.source == "builtin" and cnn.input_shape == (1, 1, 8, 8)
    assert cnn.data.labelled and cnn.data.x_test.shape[1:] == (1, 8, 8)
    with torch.no_grad():
        predictions = cnn.module(torch.from_numpy(cnn.data.x_test)).argmax(1).numpy()
    assert (predictions == cnn.data.y_test).mean() >= 0.97


def test_factory_with_weights_round_trips(tmp_path):
    model = DigitsMLP()
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights)
    handle = load_model("core.zoo.models:DigitsMLP", input_shape="1,1,8,8", weights=weights)
    assert handle.source == "factory"
    assert torch.equal(handle.module.fc1.weight, model.fc1.weight)
    assert not handle.data.labelled  # no data given: random inputs, so agreement, never accuracy


def test_user_file_factory_loads(user_model):
    assert user_model.module is not None and user_model.input_shape == (1, 3, 16, 16)


def test_pt2_loads_without_source(tmp_path, mlp):
    path = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(mlp.module, (mlp.example_input(),)), str(path))
    handle = load_model(str(path))
    assert handle.source == "pt2" and handle.input_shape == (1, 1, 8, 8) and handle.fixed_batch == 1
    sample = mlp.example_input(1)
    assert torch.allclose(handle.module(sample), mlp.module(sample), atol=1e-6)
    with pytest.raises(PrunelabError, match="channels cannot be removed"):
        handle.require("channel")


def test_pickled_module_needs_trust(tmp_path, mlp):
    path = tmp_path / "whole.pt"
    torch.save(mlp.module, path)
    with pytest.raises(PrunelabError, match="--trust"):
        load_model(str(path), input_shape=(1, 1, 8, 8))
    handle = load_model(str(path), input_shape=(1, 1, 8, 8), trust=True)
    assert handle.source == "pickle"


def test_state_dict_passed_as_model_says_what_to_do(tmp_path, mlp):
    path = tmp_path / "state.pt"
    torch.save(mlp.module.state_dict(), path)
    with pytest.raises(PrunelabError, match="holds weights, not a model"):
        load_model(str(path))


def test_onnx_source_reads_shape_and_refuses_channel_pruning(tmp_path, mlp):
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(mlp.module, (mlp.example_input(),), str(path), dynamo=False)
    handle = load_model(str(path))
    assert handle.source == "onnx" and handle.module is None and handle.input_shape == (1, 1, 8, 8)
    with pytest.raises(PrunelabError, match="fixed graph"):
        handle.require("channel")


def test_user_data_is_used_and_checked(tmp_path):
    good = tmp_path / "good.npz"
    rng = np.random.default_rng(0)
    np.savez(good, x=rng.random((20, 1, 8, 8), dtype=np.float32), y=rng.integers(0, 10, 20))
    handle = load_model("digits-mlp", data=good)
    assert handle.data.labelled and len(handle.data.x_test) == 16 and len(handle.data.x_val) == 4
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((5, 3, 4, 4), np.float32))
    with pytest.raises(PrunelabError, match="shape"):
        load_model("digits-mlp", data=wrong)


def _rows(array: np.ndarray) -> set[bytes]:
    return {item.tobytes() for item in array}


def test_user_data_without_val_is_never_tuned_on_its_test_items(tmp_path):
    rng = np.random.default_rng(1)
    x, x_train = rng.random((30, 1, 8, 8), dtype=np.float32), rng.random((50, 1, 8, 8), dtype=np.float32)
    with_train = tmp_path / "with-train.npz"
    np.savez(with_train, x=x, y=rng.integers(0, 10, 30), x_train=x_train, y_train=rng.integers(0, 10, 50))
    data = load_model("digits-mlp", data=with_train).data
    assert len(data.x_test) == 30 and len(data.x_val) == 10 and len(data.x_train) == 40  # val carved from train
    assert not _rows(data.x_val) & _rows(data.x_test) and not _rows(data.x_val) & _rows(data.x_train)
    assert "20% of x_train held out" in data.describe_splits()
    only_test = tmp_path / "only-test.npz"
    np.savez(only_test, x=x, y=rng.integers(0, 10, 30))
    data = load_model("digits-mlp", data=only_test).data
    assert len(data.x_test) + len(data.x_val) == 30 and not _rows(data.x_val) & _rows(data.x_test)
    assert data.calibration(128).shape[0] == len(data.x_val)  # calibration and BatchNorm use val, never test
    assert "held out" in data.describe_splits() and "test: the other 80% of x" in data.describe_splits()
    single = tmp_path / "single.npz"
    np.savez(single, x=x[:1])
    with pytest.raises(PrunelabError, match="add x_val"):
        load_model("digits-mlp", data=single)


def test_a_calibration_split_is_read_by_calibration_alone(tmp_path):
    rng = np.random.default_rng(2)
    x, x_calibration = rng.random((30, 1, 8, 8), dtype=np.float32), rng.random((12, 1, 8, 8), dtype=np.float32)
    path = tmp_path / "calibrated.npz"
    np.savez(path, x=x, y=rng.integers(0, 10, 30), x_train=rng.random((50, 1, 8, 8), dtype=np.float32),
             y_train=rng.integers(0, 10, 50), x_calibration=x_calibration)
    data = load_model("digits-mlp", data=path).data
    assert data.calibration_split == "calibration" and np.array_equal(data.calibration(128), x_calibration)
    assert data.calibration_labels(128) is None and len(data.x_train) == 40  # labels belong to train alone
    assert "calibration: x_calibration (12 items)" in data.describe_splits()
    assert data.head(5).x_calibration is data.x_calibration and data.digest != load_model(
        "digits-mlp", data=_without(path, "x_calibration", tmp_path)).data.digest
    np.savez(path, x=x, y=rng.integers(0, 10, 30), x_calibration=rng.random((4, 1, 4, 4), dtype=np.float32))
    with pytest.raises(PrunelabError, match=r"x_calibration items \(1, 4, 4\) differ from x items \(1, 8, 8\)"):
        load_model("digits-mlp", data=path)


def _without(path, key: str, folder) -> str:
    with np.load(path) as stored:
        arrays = {name: stored[name] for name in stored.files if name != key}
    np.savez(folder / "without.npz", **arrays)
    return str(folder / "without.npz")


def test_a_report_says_which_split_its_numbers_come_from(cnn):
    from core.deploy.evaluate import LiveEvaluator

    settings = LiveEvaluator(cnn).measure(None)["settings"]
    assert "test: the digits test split" in settings["splits"] and "val:" in settings["splits"]
    assert "tuning never uses it" in settings["measured_on"]


@pytest.mark.parametrize("spec, kwargs, message", [
    ("no-such-model", {}, "not found"),
    ("missing.pt2", {}, "not found"),
    (f"{USER_MODELS}:broken", {"input_shape": (1, 3, 16, 16)}, "raised RuntimeError"),
    (f"{USER_MODELS}:not_a_module", {"input_shape": (1, 3, 16, 16)}, "not a torch.nn.Module"),
    (f"{USER_MODELS}:nothing_here", {}, "no callable"),
    (f"{USER_MODELS}:factory", {}, "--input-shape"),
    (f"{USER_MODELS}:factory", {"input_shape": (1, 5, 16, 16)}, "cannot take input"),
    ("digits-cnn", {"input_shape": "1,x,8"}, "integers"),
])
def test_bad_specs_raise_one_clear_line(spec, kwargs, message):
    with pytest.raises(PrunelabError, match=message) as raised:
        load_model(spec, **kwargs)
    assert "\n" not in str(raised.value)


def test_corrupt_and_truncated_files(tmp_path, mlp):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file at all")
    with pytest.raises(PrunelabError, match="pickled module|cannot"):
        load_model(str(corrupt))
    onnx_path = tmp_path / "full.onnx"
    torch.onnx.export(mlp.module, (mlp.example_input(),), str(onnx_path), dynamo=False)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_path.read_bytes()[:200])
    with pytest.raises(PrunelabError, match="not a valid ONNX model"):
        load_model(str(truncated))
    bad_weights = tmp_path / "weights.pt"
    bad_weights.write_bytes(pickle.dumps({"a": 1})[:5])
    with pytest.raises(PrunelabError, match="cannot read weights"):
        load_model("core.zoo.models:DigitsMLP", input_shape=(1, 1, 8, 8), weights=bad_weights)


def test_parse_input_shape():
    assert parse_input_shape("1,3,32,32") == (1, 3, 32, 32)
    assert parse_input_shape(None) is None
    with pytest.raises(PrunelabError):
        parse_input_shape("0,3")


def test_pt2_program_of_fixed_batch_is_measured_item_by_item(tmp_path, mlp):
    from core.api import evaluate
    from core.prune.plan import Plan

    path = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(mlp.module, (mlp.example_input(),)), str(path))
    report = evaluate(load_model(str(path)), Plan(sparsity=0.5))
    assert report["pruned"]["max_abs_diff"] < 1e-4 and report["pruned"]["accuracy"] is None
    assert 0.0 <= report["pruned"]["agreement"] <= 1.0
