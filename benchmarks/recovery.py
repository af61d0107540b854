"""Recovery: how much accuracy training wins back after pruning, and what it costs.

1. digits-cnn at 95% global L1 unstructured, fine-tuned 5 epochs with the masks held.
2. digits-resnet with a 50% channel plan, fine-tuned 3 epochs as the smaller model.
3. digits-cnn at 95%: gradual (AGP) and iterative pruning for comparison.
4. Lottery-ticket rewinding on digits-cnn at 98% against a random re-initialization under the same masks.

    .venv/bin/python -m benchmarks.recovery [--quick]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import print_table  # noqa: E402
from core.prune.plan import Plan  # noqa: E402
from core.sources import load_model  # noqa: E402
from core.train import recovery  # noqa: E402
from core.train.phases import Recovery  # noqa: E402

UNSTRUCTURED_95 = Plan(granularity="unstructured", criterion="l1", scope="global", sparsity=0.95)
CHANNEL_50 = Plan(granularity="channel", criterion="l1", sparsity=0.5)
TICKET_98 = Plan(granularity="unstructured", criterion="l1", scope="global", sparsity=0.98)


def timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def row(label: str, result: Recovery, seconds: float) -> list:
    accuracy, summary = result.accuracy, result.summary()
    masked = summary["pruned_layers_sparsity"]
    return [label, accuracy["dense"], accuracy["one_shot"], accuracy["recovered"],
            accuracy["dense"] - accuracy["recovered"], "-" if masked is None else f"{masked:.4f}",
            f"{result.sparsity:.4f}", len(result.history), f"{seconds:.1f}"]


def main(quick: bool = False) -> dict:
    """Run the recoveries, print one table and the lottery-ticket comparison, return the figures."""
    torch.set_num_threads(1)  # small models train faster on one thread than on two shared ones
    cnn = load_model("digits-mlp" if quick else "digits-cnn")
    resnet = load_model("digits-mlp" if quick else "digits-resnet")
    epochs = 1 if quick else 5
    runs = {
        "finetune 95% unstructured": timed(lambda: recovery.finetune(cnn, UNSTRUCTURED_95, epochs)),
        "finetune 50% channel": timed(lambda: recovery.finetune(resnet, CHANNEL_50, 1 if quick else 3)),
        "gradual to 95%": timed(lambda: recovery.gradual_prune(cnn, UNSTRUCTURED_95, 2 if quick else 8)),
        "iterative to 95%": timed(lambda: recovery.iterative_prune(cnn, UNSTRUCTURED_95, 2 if quick else 3,
                                                                   1 if quick else 2)),
    }
    print(f"models: {cnn.name} (unstructured, gradual, iterative), {resnet.name} (channel); "
          f"{len(cnn.data.x_train)} and {len(resnet.data.x_train)} training items; test accuracy; one thread.\n")
    print_table(["run", "dense", "one-shot", "recovered", "dense - recovered", "pruned-layer sparsity",
                 "overall sparsity", "epochs", "seconds"],
                [row(label, result, seconds) for label, (result, seconds) in runs.items()])
    tickets = [timed(lambda seed=seed: recovery.lottery_ticket(
        cnn, TICKET_98, rounds=2 if quick else 3, epochs=2 if quick else 10, rewind_epoch=1, seed=seed))
        for seed in ((0,) if quick else (0, 1))]
    print(f"\nlottery ticket on {cnn.name} at {TICKET_98.sparsity:.0%} global L1 (classifier dense), "
          "iterative magnitude pruning with rewinding to epoch 1, against random re-init with the same masks:\n")
    print_table(["seed", "dense (from scratch)", "ticket", "random re-init", "ticket - random", "overall sparsity",
                 "seconds"],
                [[seed, result.accuracy["dense"], result.accuracy["recovered"], result.accuracy["random_reinit"],
                  result.accuracy["recovered"] - result.accuracy["random_reinit"], f"{result.sparsity:.4f}",
                  f"{seconds:.1f}"] for seed, (result, seconds) in enumerate(tickets)])
    return {label: result.summary() for label, (result, _) in runs.items()} | {
        f"lottery seed {seed}": result.summary() for seed, (result, _) in enumerate(tickets)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits-mlp only, one or two epochs per run")
    main(quick=parser.parse_args().quick)
