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


def test_statistics_do_not_depend_on_the_thread_count(cnn):
    # a sweep on worker processes with one thread each must equal the serial one point for point:
    # channels-last BatchNorm would be 30% faster here but sums in an order that follows the threads
    from core.prune import batchnorm

    inputs, estimates, threads = cnn.data.calibration(128), [], torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            module = copy.deepcopy(cnn.module)
            batchnorm.recalibrate(module, inputs)
            estimates.append(batchnorm_buffers(module))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(value, estimates[1][key]) for key, value in estimates[0].items())


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
