"""ONNX export: parity with torch, one self-contained file, layer names kept, and the weight fast path."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch.nn.utils import prune

from core.deploy.export import changed_tensors, export_onnx, initializer_layers, strip_reparametrizations, with_weights
from core.deploy.measure import create_session, run_batched, torch_outputs
from core.inspect import prunable_layers
from core.prune.engine import apply_plan
from core.prune.plan import Plan


def ort_outputs(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    session, _ = create_session(model_bytes, threads=1)
    return run_batched(session, x)


@pytest.mark.parametrize("fixture", ["mlp", "cnn", "resnet", "user_model"])
def test_onnx_runtime_agrees_with_torch(fixture, request):
    handle = request.getfixturevalue(fixture)
    x = handle.data.x_test[:16]
    model_bytes = export_onnx(handle.module, handle.example_input(1))
    np.testing.assert_allclose(ort_outputs(model_bytes, x), torch_outputs(handle.module, x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fixture", ["cnn", "resnet", "user_model"])
def test_every_layer_weight_is_an_initializer_named_after_the_layer(fixture, request):
    handle = request.getfixturevalue(fixture)
    model = onnx.load_from_string(export_onnx(handle.module, handle.example_input(1)))
    found = initializer_layers(model, handle.module)
    assert sorted(found.values()) == sorted(layer.name for layer in prunable_layers(handle.module))


def test_export_writes_one_self_contained_file(cnn, tmp_path):
    path = tmp_path / "model.onnx"
    model_bytes = export_onnx(cnn.module, cnn.example_input(1), path)
    assert [item.name for item in tmp_path.iterdir()] == ["model.onnx"]
    assert path.read_bytes() == model_bytes
    model = onnx.load(str(path))
    assert all(tensor.data_location != onnx.TensorProto.EXTERNAL for tensor in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_pruning_reparametrizations_are_baked_in(mlp):
    module = strip_reparametrizations(mlp.module)
    prune.l1_unstructured(module.fc1, "weight", amount=0.5)
    model_bytes = export_onnx(module, mlp.example_input(1))
    names = {tensor.name: tensor for tensor in onnx.load_from_string(model_bytes).graph.initializer}
    assert not any("orig" in name or "mask" in name for name in names)
    weight = onnx.numpy_helper.to_array(names["fc1.weight"])
    assert (weight == 0).sum() == weight.size // 2
    assert hasattr(module.fc1, "weight_mask")  # the export did not touch its input


@pytest.mark.parametrize("fixture", ["cnn", "user_model"])
def test_fast_path_matches_a_full_export(fixture, request):
    handle = request.getfixturevalue(fixture)
    template = onnx.load_from_string(export_onnx(handle.module, handle.example_input(1)))
    pruned = apply_plan(handle, Plan(scope="global", sparsity=0.7), data=handle.data).module
    fast = with_weights(template, changed_tensors(handle.module.state_dict(), pruned.state_dict()))
    full = export_onnx(pruned, handle.example_input(1))
    x = handle.data.x_test[:32]
    np.testing.assert_array_equal(ort_outputs(fast, x), ort_outputs(full, x))
    fast_weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load_from_string(fast).graph.initializer}
    for layer in prunable_layers(pruned):
        key = f"{layer.name}.{layer.weight_name}"
        np.testing.assert_array_equal(fast_weights[key], layer.weight.detach().numpy())


def test_fast_path_refuses_a_changed_shape(cnn):
    template = onnx.load_from_string(export_onnx(cnn.module, cnn.example_input(1)))
    assert with_weights(template, {"fc1.weight": torch.zeros(3, 3)}) is None
    assert with_weights(template, {"not.a.weight": torch.zeros(3)}) is None
