"""Channel pruning: choices match torch's ln_structured, removal equals masking, coupled models export."""
import copy
import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from core.api import coupled_groups
from core.deploy.artifacts import load_pruned, load_state, save_pruned
from core.errors import PrunelabError
from core.prune import channel
from core.prune.engine import apply_plan
from core.prune.plan import Plan


def chain() -> nn.Module:
    """Convolutions and Linear layers with biases and no normalization: zeroed channels stay zero."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 6 * 6, 24), nn.ReLU(), nn.Linear(24, 5)).eval()


EXAMPLE = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def test_single_layer_l2_choice_matches_ln_structured():
    model = chain()
    result = apply_plan(model, Plan(granularity="channel", criterion="l2", sparsity=0.5, ignore=["2", "5", "7"],
                                    round_to=1), example_input=EXAMPLE)  # the choice, not the CPU's rounding
    [group] = result.groups
    oracle = copy.deepcopy(model[0])
    prune.ln_structured(oracle, "weight", amount=0.5, n=2, dim=0)
    removed = [index for index in range(12) if not oracle.weight_mask[index].any()]
    assert group["leader"] == "0" and group["pruned"] == removed
    assert result.module[0].out_channels == 6 and result.module[2].in_channels == 6


@pytest.mark.parametrize("criterion", ["l1", "fpgm", "random"])
def test_physical_removal_equals_zeroing_the_same_channels(criterion):
    model = chain()
    result = apply_plan(model, Plan(granularity="channel", criterion=criterion, sparsity=0.5),
                        example_input=EXAMPLE)
    masked = copy.deepcopy(model)
    layers = dict(masked.named_modules())
    assert {group["leader"] for group in result.groups} == {"0", "2", "5"}  # "7" is the classifier
    with torch.no_grad():
        for group in result.groups:
            layer = layers[group["leader"]]
            layer.weight[group["pruned"]] = 0
            layer.bias[group["pruned"]] = 0
    inputs = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(result.module(inputs), masked(inputs), atol=1e-5)
        assert not torch.allclose(model(inputs), masked(inputs), atol=1e-3)


def onnx_gap(module: nn.Module, inputs: torch.Tensor) -> float:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (inputs,), buffer, dynamo=False, input_names=["x"])
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = module(inputs).numpy()
    return float(np.abs(session.run(None, {"x": inputs.numpy()})[0] - expected).max())


@pytest.mark.parametrize("fixture", [pytest.param("resnet", marks=pytest.mark.slow), "user_model"])
def test_coupled_models_shrink_run_and_export(fixture, request):
    handle = request.getfixturevalue(fixture)
    before = {key: value.clone() for key, value in handle.module.state_dict().items()}
    result = apply_plan(handle, Plan(granularity="channel", sparsity=0.5, prune_width=True))  # the attention's too
    params = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert params(result.module) < 0.45 * params(handle.module)
    assert onnx_gap(result.module, handle.example_input(4)) < 1e-4
    assert all(torch.equal(value, handle.module.state_dict()[key]) for key, value in before.items())
    assert result.masks is None and all(group["leader"] in group["members"] for group in result.groups)


def test_groups_report_coupled_layers(user_model, resnet):
    groups = {group["leader"]: group for group in channel.coupled_groups(
        user_model.module, user_model.example_input(), keep_width=False)}  # the attention's width too
    assert set(groups["depthwise"]["members"]) == {"left", "right", "depthwise"}   # concat + depthwise
    assert set(groups["stem.0"]["members"]) == {"stem.0", "res.conv2"}             # residual
    assert {"attention", "pointwise"} <= set(groups["pointwise"]["members"])       # attention embedding
    assert groups["pointwise"]["blocks"] == 4 and "norm" in groups["pointwise"]["coupled"]
    assert not any("head" in group["members"] for group in groups.values())
    trunk = [group for group in coupled_groups(resnet.module, resnet.example_input())
             if "layer2.shortcut.0" in group["members"]]
    assert set(trunk[0]["members"]) == {"layer2.conv2", "layer2.shortcut.0", "layer3.fuse.0", "layer4.depthwise.0"}


def test_attention_keeps_its_width_unless_asked(user_model):
    result = apply_plan(user_model, Plan(granularity="channel", sparsity=0.4))
    assert result.module.attention.embed_dim == result.module.pointwise.out_channels == 32
    assert result.module.depthwise.out_channels < 32


def test_attention_keeps_whole_heads(user_model):
    result = apply_plan(user_model, Plan(granularity="channel", sparsity=0.4, prune_width=True))
    attention = result.module.attention
    assert attention.embed_dim % attention.num_heads == 0 and attention.embed_dim < 32
    assert attention.head_dim == 8 and attention.num_heads == attention.embed_dim // 8  # whole heads go
    assert attention.in_proj_weight.shape == (3 * attention.embed_dim, attention.embed_dim)


def test_round_to_and_per_layer_targets(cnn):
    result = apply_plan(cnn, Plan(granularity="channel", sparsity=0.3, round_to=8, layers={"fc1": 0.75}))
    kept = {group["leader"]: group["kept"] for group in result.groups}
    assert all(value % 8 == 0 for value in kept.values())
    assert kept["fc1"] == 32 and result.module.fc1.out_features == 32
    assert result.layer_sparsity["fc1"] == pytest.approx(0.75)
    assert not any("rounding to multiples" in note for note in result.notes)  # 22.4 -> 24 of 32 is close


def test_a_layer_rounding_moves_far_from_its_target_is_named(cnn):
    result = apply_plan(cnn, Plan(granularity="channel", sparsity=0.0, round_to=16, layers={"features.0.0": 0.3}))
    assert result.kept["features.0.0"]["kept"] == 16  # 22.4 of 32 channels asked for, rounded to 16
    assert "rounding to multiples of 16 channels (round_to) moved these layers more than 10% of their channels " \
           "from the target: features.0.0 kept 16/32 (target 22)" in result.notes


@pytest.mark.parametrize("criterion, fixture", [pytest.param("bn_scale", "resnet", marks=pytest.mark.slow),
                                                ("taylor", "cnn"), ("activation", "cnn")])
def test_channel_criteria_in_global_scope(criterion, fixture, request):
    handle = request.getfixturevalue(fixture)
    result = apply_plan(handle, Plan(granularity="channel", criterion=criterion, scope="global", sparsity=0.5))
    assert result.module(handle.example_input(2)).shape == (2, 10)
    assert 0.3 < np.mean(list(result.layer_sparsity.values())) < 0.7


class Scaled(nn.Module):
    """A convolution followed by a learned per-channel scale held in a bare parameter."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(1, 8, 1, 1))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head((self.conv(x) * self.scale).mean((2, 3)))


def test_a_parameter_outside_layers_shrinks_with_its_channels():
    model = Scaled().eval()
    result = apply_plan(model, Plan(granularity="channel", ignore=["head"]), example_input=torch.randn(1, 3, 6, 6))
    assert result.module.conv.out_channels == 4 and result.module.scale.shape == (1, 4, 1, 1)
    kept = [index for index in range(8) if index not in result.groups[0]["pruned"]]
    inputs = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        masked = copy.deepcopy(model)
        masked.scale[:, [index for index in range(8) if index not in kept]] = 0
        assert torch.allclose(result.module(inputs), masked(inputs), atol=1e-5)


class PositionBias(nn.Module):
    """A convolution plus a learned bias per channel and pixel: the graph cannot tell which axis is channels."""

    def __init__(self, inputs: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(inputs, 8, 3, padding=1)
        self.bias = nn.Parameter(torch.zeros(1, 8, 6, 6))

    def forward(self, x):
        return self.conv(x) + self.bias


def test_every_conflict_is_listed_in_one_message():
    model = nn.Sequential(PositionBias(), nn.ReLU(), PositionBias(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 2))
    with pytest.raises(PrunelabError) as error:
        apply_plan(model, Plan(granularity="channel"), example_input=torch.randn(1, 3, 6, 6))
    message = str(error.value)
    assert "2 coupling(s)" in message and "'0.bias'" in message and "'2.bias'" in message
    assert "ignore list: 0.conv, 2.conv" in message


def test_a_position_bias_flattened_into_the_classifier_is_left_dense_with_what_happened():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), PositionBias(8), nn.Flatten(),
                          nn.Linear(8 * 36, 2))
    result = apply_plan(model, Plan(granularity="channel"), example_input=torch.randn(1, 3, 6, 6))
    [note] = [note for note in result.notes if "mapped past" in note]
    assert "inputs of '4' through a flatten or reshape" in note and note.endswith("led by 2.conv")
    assert "chunk" not in note and result.module[2].conv.out_channels == 8 and result.module[0].out_channels == 4


def test_saved_artifacts_reload_without_source(tmp_path, cnn):
    result = apply_plan(cnn, Plan(granularity="channel", sparsity=0.5))
    save_pruned(result.module, cnn.example_input(), tmp_path)
    state = load_state(tmp_path)
    assert list(state) == list(cnn.module.state_dict())
    assert state["fc1.weight"].shape == (64, 256)
    inputs = cnn.example_input(3)
    with torch.no_grad():
        assert torch.allclose(load_pruned(tmp_path)(inputs), result.module(inputs), atol=1e-5)


@pytest.mark.slow
def test_targets_on_coupled_layers_are_reported(resnet):
    plan = Plan(granularity="channel", sparsity=0.5, layers={"stem.0": 0.25, "layer1.conv2": 0.75, "fc": 0.5})
    result = apply_plan(resnet, plan)
    group = next(group for group in result.groups if group["leader"] == "stem.0")
    assert group["target"] == 0.25 and group["kept"] == round(0.75 * resnet.module.stem[0].out_channels)
    assert any("different targets" in note for note in result.notes)
    assert any("'fc' not applied" in note for note in result.notes)


def test_the_index_mapping_is_not_redone_before_every_group_search(monkeypatch, resnet):
    """torch-pruning redoes it before every group search; nothing changes between them, so the coupling
    search works it out once (a re-rooted group outside the search may add one more)."""
    from core.prune import tracing
    from core.prune.channel import coupled_groups

    calls = []
    original = tracing.update_index_mapping
    monkeypatch.setattr(tracing, "update_index_mapping", lambda graph: calls.append(graph) or original(graph))
    groups = coupled_groups(resnet.module, resnet.example_input(1))
    assert len(groups) > 3 and len(calls) <= 2 < len(groups)
