"""Layer inspection: names, counts, MACs and histograms checked against hand computation."""
from __future__ import annotations

import torch

from core.api import histogram, layer_table
from core.inspect import prunable_layers


def test_cnn_table_matches_named_modules_and_hand_macs(cnn):
    report = layer_table(cnn)
    rows = {row["name"]: row for row in report["layers"]}
    assert list(rows) == ["features.0.0", "features.1.0", "features.3.0", "fc1", "fc2"]
    conv = rows["features.1.0"]
    assert conv["shape"] == [64, 32, 3, 3] and conv["params"] == 64 * 32 * 9
    assert conv["macs"] == 8 * 8 * 64 * 32 * 9  # output pixels * out channels * fan-in
    assert rows["fc1"]["macs"] == 512 * 128
    assert report["totals"]["macs"] == sum(row["macs"] for row in rows.values())
    assert report["totals"]["params"] == sum(p.numel() for p in cnn.module.parameters())
    assert report["totals"]["batchnorm_layers"] == 3  # one after each convolution


def test_sparsity_and_stats_follow_the_weights(cnn):
    module = cnn.module
    original = module.fc1.weight.detach().clone()
    try:
        with torch.no_grad():
            module.fc1.weight[:, :300] = 0
        row = next(r for r in layer_table(cnn)["layers"] if r["name"] == "fc1")
        assert row["nonzero"] == 128 * 212 and abs(row["sparsity"] - 300 / 512) < 1e-9
        assert row["stats"]["abs_p50"] == 0.0
    finally:
        with torch.no_grad():
            module.fc1.weight.copy_(original)


def test_unseen_architecture_lists_every_kind(user_model):
    report = layer_table(user_model)
    kinds = {row["name"]: row["kind"] for row in report["layers"]}
    assert kinds["attention"] == "attention" and kinds["attention.out_proj"] == "linear"
    assert kinds["depthwise"] == "conv2d" and kinds["head"] == "linear"
    tokens = 16 * 16
    assert next(r for r in report["layers"] if r["name"] == "attention.out_proj")["macs"] == tokens * 32 * 32


def test_histogram_counts_every_weight(mlp):
    data = histogram(mlp, "fc2", bins=30)
    assert sum(data["counts"]) == 300 * 100 and len(data["edges"]) == 31
    assert data["edges"][0] >= 0  # |w|
    signed = histogram(mlp, "fc2", bins=30, absolute=False)
    assert signed["edges"][0] < 0


def test_fallback_layers_for_modules_without_structure(mlp, tmp_path):
    program = torch.export.export(mlp.module, (mlp.example_input(),))
    names = [layer.name for layer in prunable_layers(program.module())]
    assert names == ["fc1", "fc2", "fc3"]
