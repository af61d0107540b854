"""Accuracy against unstructured sparsity for each demo model: prunelab global, layer-uniform,
allocated and fine-tuned, against torch.nn.utils.prune global at the same sparsities.
Saves the plot as assets/accuracy_curves.png.

    python -m benchmarks.accuracy_curves [--quick]
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from torch.nn.utils import prune

from benchmarks.common import print_table, test_accuracy
from core.inspect import final_classifier, prunable_layers
from core.prune.engine import apply_plan
from core.prune.plan import Plan
from core.sources import load_model

PLOT = Path(__file__).resolve().parent.parent / "assets" / "accuracy_curves.png"
LEVELS = (0.5, 0.7, 0.8, 0.9, 0.95)


def torch_global(module: torch.nn.Module, sparsity: float, ignored: str | None) -> torch.nn.Module:
    module = copy.deepcopy(module)
    targets = [(layer.module, layer.weight_name) for layer in prunable_layers(module) if layer.name != ignored]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
    for owner, name in targets:
        prune.remove(owner, name)
    return module


def curves(name: str, levels, finetune_epochs: int) -> list[dict]:
    """One row per (method, sparsity) with the test accuracy."""
    from core.search.allocate import allocate
    from core.train.recovery import finetune

    handle = load_model(name)
    x, y = handle.data.x_test, handle.data.y_test
    ignored = final_classifier(handle.module, handle.example_input())
    rows = [{"model": name, "method": "dense", "sparsity": 0.0, "accuracy": test_accuracy(handle.module, x, y)}]
    for sparsity in levels:
        global_plan = Plan(criterion="l1", scope="global", sparsity=sparsity)
        pruned = apply_plan(handle, global_plan)
        methods = {
            "prunelab global": pruned.module,
            "prunelab layer-uniform": apply_plan(handle, Plan(criterion="l1", scope="layer", sparsity=sparsity)).module,
            "prunelab allocated": apply_plan(handle, allocate(handle, target_sparsity=sparsity)).module,
            "torch.nn.utils.prune global": torch_global(handle.module, sparsity, ignored),
        }
        if finetune_epochs:
            recovered = finetune(handle, global_plan, epochs=finetune_epochs, pruned=pruned)
            methods["prunelab global + fine-tune"] = recovered.module
        for method, module in methods.items():
            rows.append({"model": name, "method": method, "sparsity": sparsity,
                         "accuracy": test_accuracy(module, x, y)})
    return rows


def plot(rows: list[dict], path: Path = PLOT) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({row["model"] for row in rows})
    figure, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), sharey=True, squeeze=False)
    for axis, model in zip(axes[0], models):
        dense = next(row["accuracy"] for row in rows if row["model"] == model and row["method"] == "dense")
        axis.axhline(dense, color="grey", linestyle=":", label="dense")
        for method in sorted({row["method"] for row in rows} - {"dense"}):
            points = [(row["sparsity"], row["accuracy"]) for row in rows
                      if row["model"] == model and row["method"] == method]
            if points:
                axis.plot(*zip(*points), marker="o", label=method)
        axis.set(title=model, xlabel="sparsity (share of prunable weights set to zero)", ylabel="test accuracy")
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(quick: bool = False) -> list[dict]:
    names = ("digits-mlp",) if quick else ("digits-mlp", "digits-cnn", "digits-resnet")
    rows = []
    for name in names:
        rows += curves(name, (0.9,) if quick else LEVELS, finetune_epochs=1 if quick else 3)
    print_table(["model", "method", "sparsity", "test accuracy"],
                [[row["model"], row["method"], row["sparsity"], row["accuracy"]] for row in rows])
    if not quick:
        plot(rows)
        print(f"\nplot: {PLOT.relative_to(PLOT.parent.parent)}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args().quick)
