"""Property tests: random plans round-trip or fail cleanly; masks are exact; exports agree with torch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.deploy.export import export_onnx
from core.deploy.measure import create_session, run_batched
from core.errors import PrunelabError
from core.inspect import prunable_layers
from core.prune.engine import apply_plan
from core.prune.plan import Plan

CNN_LAYERS = ["features.0.0", "features.1.0", "features.3.0", "fc1"]
FIELD_VALUES = {
    "granularity": st.sampled_from(["unstructured", "channel", "2:4", "1:4", "4:2", "0:4", "blocks", "", 3]),
    "criterion": st.sampled_from(["l1", "l2", "random", "bn_scale", "fpgm", "magnitude", None]),
    "scope": st.sampled_from(["layer", "global", "everything"]),
    "sparsity": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 2), st.text(max_size=3)),
    "layers": st.dictionaries(st.sampled_from(CNN_LAYERS + [""]), st.floats(-0.5, 1.5), max_size=3),
    "ignore": st.one_of(st.none(), st.lists(st.sampled_from(CNN_LAYERS), max_size=2), st.just("fc2")),
    "round_to": st.one_of(st.integers(-1, 16), st.just(True)),
    "seed": st.integers(0, 2**31),
    "colour": st.just("blue"),
}
settings.register_profile("prunelab", deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile("prunelab")


@given(st.fixed_dictionaries({}, optional=FIELD_VALUES))
@settings(max_examples=300)
def test_random_plans_round_trip_or_fail_with_one_line(tmp_path_factory, fields):
    try:
        plan = Plan.from_dict(fields)
    except PrunelabError as error:
        assert str(error) and "\n" not in str(error)
        return
    folder = tmp_path_factory.mktemp("plans")
    for suffix in (".yaml", ".json"):
        assert Plan.load(plan.save(folder / f"plan{suffix}")) == plan
    assert Plan.from_dict(plan.to_dict()).digest == plan.digest


@pytest.mark.slow
@given(layer=st.sampled_from(CNN_LAYERS), sparsity=st.floats(0.0, 0.99),
       criterion=st.sampled_from(["l1", "l2", "random"]))
@settings(max_examples=25)
def test_masks_have_exact_counts_and_keep_survivors(cnn, layer, sparsity, criterion):
    plan = Plan(criterion=criterion, sparsity=0.0, layers={layer: sparsity})
    result = apply_plan(cnn, plan)
    before = dict(cnn.module.named_parameters())[f"{layer}.weight"].detach()
    after = dict(result.module.named_parameters())[f"{layer}.weight"].detach()
    mask = result.masks[layer]
    assert int((~mask).sum()) == round(sparsity * before.numel())
    assert int((after == 0).sum()) == round(sparsity * before.numel())
    assert torch.equal(after[mask], before[mask])


@pytest.mark.slow
@given(sparsity=st.floats(0.0, 0.9), granularity=st.sampled_from(["unstructured", "channel", "2:4"]),
       scope=st.sampled_from(["layer", "global"]))
@settings(max_examples=10)
def test_plan_apply_export_agrees_with_onnx_runtime(cnn, sparsity, granularity, scope):
    if granularity != "unstructured" and scope == "global":
        scope = "layer"
    result = apply_plan(cnn, Plan(granularity=granularity, scope=scope, sparsity=sparsity))
    x = cnn.data.x_test[:64]
    session, _ = create_session(export_onnx(result.module, torch.from_numpy(x[:1])), threads=1)
    with torch.no_grad():
        expected = result.module(torch.from_numpy(x)).numpy()
    assert np.abs(run_batched(session, x) - expected).max() < 1e-4


def test_property_layers_exist(cnn):
    assert set(CNN_LAYERS) <= {layer.name for layer in prunable_layers(cnn.module)}
