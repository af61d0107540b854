"""The Plan value: validation that names the offender, YAML/JSON round trips, a stable digest."""
import dataclasses

import pytest

from core.errors import PrunelabError
from core.prune.plan import Plan
from core.prune.resolved import validate_for

FULL = Plan(granularity="channel", criterion="fpgm", scope="global", sparsity=0.4,
            layers={"layer2.conv1": 0.25, "stem.0": 0.1}, ignore=["fc", "stem.0"], round_to=8, seed=3)


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_round_trip_through_a_file_is_equal(tmp_path, suffix):
    path = FULL.save(tmp_path / f"plan{suffix}")
    loaded = Plan.load(path)
    assert loaded == FULL
    assert loaded.digest == FULL.digest
    assert loaded.layer_targets == {"layer2.conv1": 0.25, "stem.0": 0.1}


def test_round_trip_through_a_dict_and_the_default_ignore():
    plan = Plan(granularity="2:4", criterion="activation")
    assert Plan.from_dict(plan.to_dict()) == plan
    assert plan.ignore is None and plan.nm == (2, 4)


def test_layers_are_stored_sorted_so_order_does_not_change_the_digest():
    first = Plan(layers={"b": 0.2, "a": 0.1})
    second = Plan(layers=[("a", 0.1), ("b", 0.2)])
    assert first == second and first.digest == second.digest
    assert first.layers == (("a", 0.1), ("b", 0.2))
    assert Plan(sparsity=0.3).digest != Plan(sparsity=0.4).digest


def test_the_plan_is_frozen_and_replace_validates():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FULL.sparsity = 0.9
    assert FULL.replace(sparsity=0.7).sparsity == 0.7
    with pytest.raises(PrunelabError, match="sparsity"):
        FULL.replace(sparsity=1.5)


@pytest.mark.parametrize("fields, words", [
    ({"sparsity": 1.0}, ["sparsity", "1.0"]),
    ({"sparsity": -0.1}, ["sparsity", "-0.1"]),
    ({"layers": {"fc1": 1.2}}, ["fc1", "1.2"]),
    ({"criterion": "magic"}, ["criterion", "magic"]),
    ({"granularity": "block"}, ["granularity", "block"]),
    ({"granularity": "5:4"}, ["5:4"]),
    ({"granularity": "0:4"}, ["0:4"]),
    ({"criterion": "bn_scale"}, ["bn_scale"]),
    ({"scope": "model"}, ["scope", "model"]),
    ({"round_to": 0}, ["round_to", "0"]),
])
def test_invalid_values_are_refused_naming_field_and_value(fields, words):
    with pytest.raises(PrunelabError) as error:
        Plan(**fields)
    for word in words:
        assert word in str(error.value)


def test_unknown_fields_in_a_file_are_refused(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("granularity: unstructured\nsparsty: 0.5\n")
    with pytest.raises(PrunelabError, match="sparsty"):
        Plan.load(path)


def test_an_unknown_layer_is_named(mlp):
    validate_for(Plan(layers={"fc1": 0.5}), mlp.module)
    with pytest.raises(PrunelabError, match="fc9"):
        validate_for(Plan(layers={"fc9": 0.5}), mlp.module)
    with pytest.raises(PrunelabError, match="nope"):
        validate_for(Plan(ignore=["nope"]), mlp.module)


def test_a_resolved_plan_file_reads_back_skipping_its_record(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("granularity: channel\nsparsity: 0.5\neffective_sparsity:\n  fc1: 0.5\n")
    assert Plan.load(path) == Plan(granularity="channel", sparsity=0.5)
