"""One-shot structured pruning, no training: every channel criterion with and without reconstruction.

minilm (all-MiniLM-L6-v2): 25% and 50% of attention heads, and the plain 50% channel plan (half
the heads and half the feed-forward neurons of every layer); fisher also in global scope, where
its scores share the overall target between layers (heads only: the feed-forward layers at 0), and obs
(fisher's scores, then each layer chooses its heads and neurons by structured OBS and compensates the rest);
embedding cosine to the dense model
on the 240 test sentences (calibration reads minilm's 240 calibration sentences), in ONNX Runtime.
digits-resnet: 30/50/70% of channels, round_to 8; test accuracy (calibration and BatchNorm
re-estimation read the train split). random is the control; seconds are the whole apply_plan.

    python -m benchmarks.oneshot [--quick] [--model minilm] [--criterion fisher]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import print_table, test_accuracy
from benchmarks.minilm_heads import embeddings
from core.deploy.fidelity import embedding_fidelity
from core.inspect import attention_heads, prunable_layers
from core.prune.engine import apply_plan
from core.prune.plan import Plan
from core.sources import load_model

CRITERIA = ("random", "l1", "l2", "taylor", "fisher", "obs")
RESNET_CRITERIA = CRITERIA + ("bn_scale", "fpgm")


def _timed(handle, plan: Plan):
    started = time.perf_counter()
    result = apply_plan(handle, plan)
    return result, time.perf_counter() - started


def _chosen(criteria, quick: bool, only: tuple[str, ...] | None, quick_ones: tuple[str, ...]) -> list[str]:
    """The criteria to run: ``quick_ones`` in quick mode, and only ``only`` when given."""
    return [name for name in criteria if (not quick or name in quick_ones) and (not only or name in only)]


def minilm_rows(quick: bool, only: tuple[str, ...] | None = None) -> list[list]:
    handle = load_model("minilm")
    items = handle.data.x_test[:32 if quick else None]
    example = handle.example_input(1)
    dense = embeddings(handle.module, example, items)
    leaders = [name for name in attention_heads(handle.module, example) if name.endswith(("query", "q_proj"))]
    feed_forward = [layer.name for layer in prunable_layers(handle.module) if layer.name.endswith("intermediate.dense")]
    settings = [("heads 50%", dict(sparsity=0.0, layers=dict.fromkeys(leaders, 0.5)), CRITERIA),
                ("heads 50%, global", dict(sparsity=0.5, scope="global", layers=dict.fromkeys(feed_forward, 0.0)),
                 ("fisher", "obs"))]
    if not quick:
        settings = [("heads 25%", dict(sparsity=0.0, layers=dict.fromkeys(leaders, 0.25)), CRITERIA), *settings,
                    ("channels 50%", dict(sparsity=0.5), CRITERIA),
                    ("channels 50%, global", dict(sparsity=0.5, scope="global"), ("fisher", "obs"))]
    rows = []
    for label, values, criteria in settings:
        for criterion in _chosen(criteria, quick, only, ("random", "obs")):  # obs computes fisher's evidence too
            for reconstruct in (False, True):
                result, seconds = _timed(handle, Plan(granularity="channel", criterion=criterion,
                                                      reconstruct=reconstruct, **values))
                cosine = embedding_fidelity(embeddings(result.module, example, items), dense)["cosine"]
                rows.append(["minilm", label, criterion, "yes" if reconstruct else "no", round(float(cosine), 3),
                             round(seconds, 1)])
                print("| " + " | ".join(map(str, rows[-1])) + " |", flush=True)
    return rows


def resnet_rows(quick: bool, only: tuple[str, ...] | None = None) -> list[list]:
    handle = load_model("digits-resnet")
    data = handle.data
    dense = test_accuracy(handle.module, data.x_test, data.y_test)
    rows = [["digits-resnet", "dense", "-", "-", round(dense, 3), 0.0]]
    for share in (0.5,) if quick else (0.3, 0.5, 0.7):
        for criterion in _chosen(RESNET_CRITERIA, quick, only, ("random", "fisher")):  # obs: fisher's choice here
            for reconstruct in (False, True):
                result, seconds = _timed(handle, Plan(granularity="channel", criterion=criterion, sparsity=share,
                                                      round_to=8, reconstruct=reconstruct))
                accuracy = test_accuracy(result.module, data.x_test, data.y_test)
                rows.append(["digits-resnet", f"channels {share:.0%}", criterion, "yes" if reconstruct else "no",
                             round(accuracy, 3), round(seconds, 1)])
                print("| " + " | ".join(map(str, rows[-1])) + " |", flush=True)
    return rows


def main(quick: bool = False, models: tuple[str, ...] = ("minilm", "digits-resnet"),
         only: tuple[str, ...] | None = None) -> list[list]:
    torch.set_num_threads(2)
    rows = []
    if "minilm" in models:
        rows += minilm_rows(quick, only)
    if "digits-resnet" in models:
        rows += resnet_rows(quick, only)
    print()
    print_table(["model", "plan", "criterion", "reconstruct", "cosine / test accuracy", "s per plan"], rows)
    load = np.round(np.array(__import__("os").getloadavg()), 1).tolist()
    print(f"\nminilm: embedding cosine to dense on {'32' if quick else '240'} test sentences (ONNX Runtime, "
          f"2 threads); digits-resnet: test accuracy (torch). Load average at the end: {load} on "
          f"{__import__('os').cpu_count()} cores")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="50%% only: random and obs on minilm (32 sentences), random and fisher on digits-resnet")
    parser.add_argument("--model", choices=("minilm", "digits-resnet"), action="append",
                        help="only this model (repeatable)")
    parser.add_argument("--criterion", choices=RESNET_CRITERIA, action="append",
                        help="only this criterion (repeatable)")
    args = parser.parse_args()
    main(args.quick, tuple(args.model or ("minilm", "digits-resnet")), tuple(args.criterion or ()) or None)
