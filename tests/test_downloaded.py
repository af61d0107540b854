"""Conformance on models as people download them (timm, torchvision, Hugging Face GPT-2, Ultralytics
YOLOv8; random weights, nothing fetched): a 50% channel plan with no ignore list prunes them, keeps
the hidden size of every ViT, and the pruned model matches torch in ONNX Runtime.

timm, torchvision and Ultralytics are not dependencies: ``make testdeps`` installs them into
.venv/testdeps, which only these tests put on sys.path; without it they are skipped."""
from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from core.budget import OverBudget, within
from core.deploy.export import export_onnx
from core.deploy.measure import create_session, total_macs
from core.outputs import leaves
from core.prune.engine import apply_plan
from core.prune.plan import Plan
from core.sources.load import load_model

ROOT = Path(__file__).resolve().parent.parent
TESTDEPS = ROOT / ".venv" / "testdeps"
MODELS = ROOT / "tests" / "fixtures" / "downloaded.py"
STUBS = ("torchvision._meta_registrations", "torchvision._autograd_registrations")  # CUDA build: custom ops only

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def downloads():
    """timm, torchvision and Ultralytics importable for the session, or the test skipped saying why."""
    if not (TESTDEPS / "timm").is_dir():
        pytest.skip(f"timm/torchvision/ultralytics are not installed in {TESTDEPS}: run `make testdeps`")
    for name in STUBS:
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.path.insert(0, str(TESTDEPS))
    yield TESTDEPS
    sys.path.remove(str(TESTDEPS))


def ort_gaps(module: torch.nn.Module, inputs: torch.Tensor) -> list[float]:
    """max |torch - ORT| for every output of the exported model."""
    session, _ = create_session(export_onnx(module, inputs), threads=1)
    with torch.no_grad():
        expected = [tensor for _, tensor in leaves(module(inputs))]
    [name] = [value.name for value in session.get_inputs()]
    got = session.run(None, {name: inputs.numpy()})
    assert len(got) == len(expected)
    return [float(np.abs(a - b.numpy()).max()) for a, b in zip(got, expected)]


def pruned(downloads, factory: str, shape: str):
    handle = load_model(f"{MODELS}:{factory}", input_shape=shape)
    inputs = handle.example_input(1)
    before = total_macs(handle.module, inputs)
    result = apply_plan(handle, Plan(granularity="channel", sparsity=0.5))
    return handle, result, inputs, before


@pytest.fixture(scope="session")
def vit_tiny(downloads):
    return pruned(downloads, "vit_tiny_small", "1,3,64,64")


def test_timm_vit_keeps_its_width_and_loses_half_its_heads(vit_tiny):
    handle, result, inputs, before = vit_tiny
    block = result.module.blocks[0]
    assert block.attn.num_heads == 1 and block.attn.attn_dim == 64 and block.attn.qkv.out_features == 3 * 64
    assert block.mlp.fc1.out_features == 384 and result.module.patch_embed.proj.out_channels == 192
    assert max(ort_gaps(result.module, inputs)) < 1e-3
    assert total_macs(result.module, inputs) < 0.6 * before


def test_torchvision_vit_keeps_hidden_dim_and_prunes_its_mlp(downloads):
    handle, result, inputs, before = pruned(downloads, "vit_b_16_small", "1,3,32,32")
    layer = result.module.encoder.layers[0]
    assert result.module.conv_proj.out_channels == result.module.hidden_dim == 64
    assert layer.self_attention.embed_dim == 64 and layer.mlp[0].out_features == 128
    assert any("nn.MultiheadAttention" in note and "self_attention" in note for note in result.notes)
    assert max(ort_gaps(result.module, inputs)) < 1e-3
    assert total_macs(result.module, inputs) < 0.8 * before


def swin_prunes_its_mlps_within_the_budget() -> None:
    """The Swin check itself, run in a process of its own by the test below."""
    for name in STUBS:
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.path.insert(0, str(TESTDEPS))
    started = time.monotonic()
    handle, result, inputs, before = pruned(None, "swin_small", "1,3,64,64")
    assert time.monotonic() - started < 60
    block = result.module.features[1][0]
    assert block.mlp[0].out_features == 64 and block.attn.qkv.out_features == 96  # heads stay: see heads.py
    assert max(ort_gaps(result.module, inputs)) < 1e-3
    assert total_macs(result.module, inputs) < 0.85 * before


def test_torchvision_swin_prunes_its_mlps_within_the_budget(downloads):
    """In a fresh process capped at 8 GB: after many other tests in one process, the coupling search of
    torchvision's Swin once grew past its budget to 22 GB (open; alone it passes in seconds)."""
    import os
    import resource
    import subprocess

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, 8 * 2**30))

    code = "from tests.test_downloaded import swin_prunes_its_mlps_within_the_budget as check; check()"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300, preexec_fn=cap_memory)
    assert run.returncode == 0, run.stderr[-3000:]


def test_a_search_that_never_ends_is_stopped_in_time_and_memory():
    started = time.monotonic()
    with pytest.raises(OverBudget), within(0.3, 2**40) as spent:
        while True:
            pass
    assert spent == ["0.3 s"] and time.monotonic() - started < 2
    hoard = []
    with pytest.raises(OverBudget), within(30, 64 * 2**20) as spent:
        while True:
            hoard.append(bytearray(2**20))
    assert "GB of memory" in spent[0] and len(hoard) < 2048


@pytest.fixture(scope="session")
def gpt2():
    pytest.importorskip("transformers")
    return pruned(None, "gpt2_small", "1,16")


def test_gpt2_conv1d_layers_lose_heads_and_neurons_and_stay_conv1d(gpt2):
    handle, result, inputs, before = gpt2
    block = result.module.model.transformer.h[0]
    assert type(block.attn.c_attn).__name__ == type(block.mlp.c_fc).__name__ == "Conv1D"
    assert block.attn.num_heads == 2 and block.attn.split_size == 32 and block.attn.c_attn.weight.shape == (64, 96)
    assert block.attn.c_proj.weight.shape == (32, 64) and block.mlp.c_fc.nf == 128  # width 64 stays
    assert max(ort_gaps(result.module, inputs)) < 1e-3
    assert total_macs(result.module, inputs) < 0.7 * before


def test_pruned_gpt2_reloads_into_a_fresh_gpt2(gpt2):
    from core.prune.resize import fit_to
    handle, result, inputs, _ = gpt2
    state = result.module.state_dict()
    rebuilt = fit_to(load_model(f"{MODELS}:gpt2_small", input_shape="1,16").module, state, inputs)
    rebuilt.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(inputs), result.module(inputs), atol=1e-5)


@pytest.mark.parametrize("granularity, criterion", [("unstructured", "wanda"), ("2:4", "sparsegpt")])
def test_gpt2_conv1d_layers_take_unstructured_and_nm_plans(granularity, criterion):
    """GPT-2's Conv1D layers are in the layer table (weights stored (in, out)): half of each goes."""
    pytest.importorskip("transformers")
    from core.deploy.measure import weight_counts
    from core.inspect import prunable_layers

    handle = load_model(f"{MODELS}:gpt2_small", input_shape="1,16")
    names = [layer.name for layer in prunable_layers(handle.module)]
    assert "model.transformer.h.0.attn.c_attn" in names and "model.transformer.h.1.mlp.c_proj" in names
    result = apply_plan(handle, Plan(granularity=granularity, criterion=criterion, sparsity=0.5))
    conv1d = [layer for layer in prunable_layers(result.module) if layer.transposed]
    assert len(conv1d) == 8 and all(result.layer_sparsity[layer.name] == 0.5 for layer in conv1d)
    stored = result.module.state_dict()["model.transformer.h.0.mlp.c_fc.weight"]  # (in, out)
    if granularity == "2:4":  # groups of 4 consecutive inputs, each with at least 2 zeros
        assert bool(((stored.t().reshape(-1, 4) == 0).sum(1) >= 2).all())
    lm_head = result.module.model.lm_head.weight.numel()  # left dense: the final classifier
    counts = weight_counts(result.module)
    removed = counts["prunable_params"] - counts["nonzero_prunable_params"]
    assert removed == (counts["prunable_params"] - lm_head) // 2
    assert max(ort_gaps(result.module, handle.example_input(1))) < 1e-3


def test_yolov8_prunes_keeps_its_outputs_and_leaves_c2f_chunks_dense(downloads):
    handle, result, inputs, before = pruned(downloads, "yolov8n", "1,3,64,64")
    assert handle.output_kind == "outputs" and len(handle.outputs) >= 2
    gaps = ort_gaps(result.module, inputs)
    assert len(gaps) == len(handle.outputs) and max(gaps) < 1e-3
    assert total_macs(result.module, inputs) < 0.6 * before
    assert any("chunk or split" in note and "m.0.cv2" in note for note in result.notes)
    assert result.module.model[22].cv3[0][2].out_channels == 80  # the class scores stay
