"""Global unstructured L1 pruning of an ~11M-parameter model: prunelab vs torch.nn.utils.prune.

Both sides end with a usable model: prunelab returns a plain copy with zeroed weights; torch's
global_unstructured is followed by prune.remove on every layer (and both start from a deep copy,
so neither mutates the input). Prints the best-of-N times and their ratio.

    .venv/bin/python benchmarks/global_unstructured.py [--quick]
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.prune.engine import apply_plan  # noqa: E402
from core.prune.plan import Plan  # noqa: E402


def build_model(width: int = 1024, depth: int = 10, channels: int = 256) -> nn.Sequential:
    """Convolutions then Linear layers: depth * width^2 + 2 * 9 * channels^2 parameters (~11M by default)."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
              nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, width)]
    for _ in range(depth):
        layers += [nn.ReLU(), nn.Linear(width, width)]
    layers += [nn.ReLU(), nn.Linear(width, 10)]
    return nn.Sequential(*layers)


def prunelab_global(model: nn.Module, sparsity: float) -> nn.Module:
    return apply_plan(model, Plan(criterion="l1", scope="global", sparsity=sparsity, ignore=())).module


def torch_global(model: nn.Module, sparsity: float) -> nn.Module:
    pruned = copy.deepcopy(model)
    parameters = [(child, "weight") for child in pruned.modules() if isinstance(child, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(parameters, pruning_method=prune.L1Unstructured, amount=sparsity)
    for child, name in parameters:
        prune.remove(child, name)
    return pruned


def best_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main(quick: bool = False) -> dict:
    """Time both, print the figures and return them (``quick``: a tiny model, one repeat)."""
    torch.set_num_threads(2)
    model = build_model(width=64, depth=2, channels=8) if quick else build_model()
    params = sum(child.weight.numel() for child in model.modules() if isinstance(child, (nn.Conv2d, nn.Linear)))
    repeats, sparsity = (1, 0.5) if quick else (5, 0.5)
    ours = best_time(lambda: prunelab_global(model, sparsity), repeats)
    theirs = best_time(lambda: torch_global(model, sparsity), repeats)
    result = {"params": params, "prunelab_s": ours, "torch_s": theirs, "ratio": theirs / ours}
    print(f"global unstructured L1 at {sparsity:.0%} over {params / 1e6:.1f}M weights, best of {repeats}: "
          f"prunelab {ours * 1000:.0f} ms, torch.nn.utils.prune {theirs * 1000:.0f} ms, "
          f"ratio {result['ratio']:.2f}x")
    return result


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
