"""BatchNorm statistics re-estimated after pruning: only BN buffers move, never on random data."""
from __future__ import annotations

import copy

import torch

from core.prune.engine import apply_plan
from core.prune.plan import Plan


def batchnorm_buffers(module):
    return {key: value for key, value in module.state_dict().items() if "running" in key}


def test_only_batchnorm_statistics_move_and_weights_stay(cnn):
    plan = Plan(scope="global", sparsity=0.8)
    kept, refreshed = apply_plan(cnn, plan.replace(recalibrate=False)), apply_plan(cnn, plan)
    for key, value in kept.module.state_dict().items():
        if "running" in key or "num_batches" in key:
            continue
        assert torch.equal(value, refreshed.module.state_dict()[key]), key
    dense = batchnorm_buffers(cnn.module)
    assert all(torch.equal(dense[key], value) for key, value in batchnorm_buffers(kept.module).items())
    assert any(not torch.equal(dense[key], value) for key, value in batchnorm_buffers(refreshed.module).items())
    assert any("BatchNorm statistics" in note for note in refreshed.notes)


def test_statistics_are_those_of_a_plain_forward_and_the_layout_is_put_back(cnn):
    from core.prune import batchnorm

    inputs = cnn.data.calibration(128)
    fast, plain = copy.deepcopy(cnn.module), copy.deepcopy(cnn.module)
    batchnorm.recalibrate(fast, inputs)
    layers = batchnorm.batchnorm_layers(plain)  # the same estimate, the obvious way: one cumulative pass
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    with torch.no_grad():
        for start in range(0, len(inputs), batchnorm.BATCH_SIZE):
            plain(torch.from_numpy(inputs[start:start + batchnorm.BATCH_SIZE]))
    expected = batchnorm_buffers(plain)
    for key, value in batchnorm_buffers(fast).items():
        assert torch.allclose(value, expected[key], rtol=1e-4, atol=1e-5), key
    assert all(parameter.is_contiguous() for parameter in fast.parameters())  # what export expects
    assert not fast.training


def test_80_percent_global_l1_keeps_accuracy_within_3_points(cnn):
    x, y = torch.from_numpy(cnn.data.x_test), torch.from_numpy(cnn.data.y_test)

    def accuracy(module):
        with torch.no_grad():
            return float((module(x).argmax(1) == y).float().mean())

    pruned = apply_plan(cnn, Plan(scope="global", sparsity=0.8)).module
    assert accuracy(pruned) >= accuracy(cnn.module) - 0.03


def test_random_inputs_never_teach_batchnorm(user_model):
    assert user_model.data.synthetic
    result = apply_plan(user_model, Plan(sparsity=0.5))
    assert not any("BatchNorm statistics" in note for note in result.notes)
    assert all(torch.equal(batchnorm_buffers(user_model.module)[key], value)
               for key, value in batchnorm_buffers(result.module).items())


def test_old_plan_files_default_to_recalibrating(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("granularity: unstructured\nsparsity: 0.5\n")
    assert Plan.load(path).recalibrate is True
