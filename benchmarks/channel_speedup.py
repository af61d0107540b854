"""Channel pruning of digits-resnet at 30/50/70%: measured ONNX Runtime speedup against the MAC
reduction, and against Torch-Pruning's own default pruner at the same ratio.

    python -m benchmarks.channel_speedup [--quick]
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch_pruning as tp

from benchmarks.common import macs, ort_p50_ms, print_table, test_accuracy
from core.engine import apply_plan
from core.plan import Plan
from core.sources import load_model


def torch_pruning_default(module: torch.nn.Module, example: torch.Tensor, ratio: float, ignored) -> torch.nn.Module:
    """Torch-Pruning's documented default: MetaPruner with group L2 magnitude importance."""
    module = copy.deepcopy(module)
    pruner = tp.pruner.MetaPruner(module, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=ignored)
    pruner.step()
    return module.eval()


def main(quick: bool = False) -> list[dict]:
    handle = load_model("digits-resnet")
    example = handle.example_input(1)
    seconds = 0.2 if quick else 1.5
    dense_macs, dense_ms = macs(handle.module, example), ort_p50_ms(handle.module, example, seconds=seconds)
    x, y = handle.data.x_test, handle.data.y_test
    rows = []
    for ratio in ((0.5,) if quick else (0.3, 0.5, 0.7)):
        ours = apply_plan(handle, Plan(granularity="channel", criterion="l2", sparsity=ratio)).module
        theirs = torch_pruning_default(handle.module, example, ratio, [handle.module.fc])
        for name, module in (("prunelab", ours), ("torch-pruning", theirs)):
            pruned_ms = ort_p50_ms(module, example, seconds=seconds)
            mac_ratio = dense_macs / macs(module, example)
            speedup = dense_ms / pruned_ms
            rows.append({"pruner": name, "ratio": ratio, "mac_reduction": mac_ratio, "speedup": speedup,
                         "speedup_per_mac_ratio": speedup / mac_ratio, "p50_ms": pruned_ms,
                         "one_shot_accuracy": test_accuracy(module, x, y)})
    print(f"digits-resnet dense: {dense_macs:,} MACs, ONNX Runtime p50 {dense_ms:.3f} ms (batch 1, 2 threads)\n")
    print_table(["pruner", "channel ratio", "MAC reduction", "measured speedup", "speedup / MAC ratio",
                 "p50 ms", "one-shot accuracy"],
                [[row["pruner"], row["ratio"], row["mac_reduction"], row["speedup"], row["speedup_per_mac_ratio"],
                  row["p50_ms"], row["one_shot_accuracy"]] for row in rows])
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args().quick)
