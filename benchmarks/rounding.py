"""Channel rounding against measured speed: transformers' MobileNetV2, EfficientNet-B0 and RegNet at 224,
random weights, and the built-in digits-resnet at 32x32 (its small layers), batch 1, a uniform channel
plan cutting about half the MACs, with the default ``round_to: auto`` (core.kernels), with ``auto`` as the
other x86 rule would resolve it (8 with AVX2, 16 with AVX-512), and with the plan's own multiples (1 and 16).

For each model the channel share giving a 2x MAC cut under auto rounding is found by a few secant
steps; every rounding then uses that share. The dense model and every rounding's pruned model are
timed in one alternation, so load falls on all of them alike. On a loaded machine a run's p50 also
holds the time the process waited for a core, more of it the longer the run (a 2 ms run often fits
in one time slice, a 5 ms run seldom does), which exaggerates speedups; so each model is also
profiled (core.deploy.profile) and its per-node medians summed ("ms (nodes)"), which leaves those
waits out. The target: speedup / MAC cut at least 0.8 with the defaults.

    python -m benchmarks.rounding [--quick] [--threads 1] [--rounds 60] [--model mobilenet_v2] [--min-units 4]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time

import torch
from torch import nn

from benchmarks.common import macs, print_table
from core import kernels
from core.deploy.export import export_onnx
from core.deploy.measure import create_session, paired_latency
from core.deploy.profile import profile_models
from core.kernels import channel_multiple
from core.prune.engine import apply_plan
from core.prune.plan import AUTO, Plan

SIZE = 224
MAC_CUT = 2.0
SECANT_STEPS = 3


class Logits(nn.Module):
    """A transformers image classifier as a tensor-in, logits-out module (a plain module passes through)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        output = self.model(pixel_values=pixels) if hasattr(self.model, "config") else self.model(pixels)
        return output if isinstance(output, torch.Tensor) else output.logits


def mobilenet_v2() -> nn.Module:
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification
    return MobileNetV2ForImageClassification(MobileNetV2Config(image_size=SIZE))


def efficientnet_b0() -> nn.Module:
    from transformers import EfficientNetConfig, EfficientNetForImageClassification
    return EfficientNetForImageClassification(EfficientNetConfig(image_size=SIZE, width_coefficient=1.0,
                                                                 depth_coefficient=1.0, hidden_dim=1280,
                                                                 dropout_rate=0.2))


def regnet() -> nn.Module:
    from transformers import RegNetConfig, RegNetForImageClassification
    return RegNetForImageClassification(RegNetConfig())  # the config's default: RegNetY-4GF's widths


def digits_resnet() -> nn.Module:
    from core.sources import load_model
    return load_model("digits-resnet").module


MODELS = {"mobilenet_v2": mobilenet_v2, "efficientnet_b0": efficientnet_b0, "regnet": regnet,
          "digits_resnet": digits_resnet}
SIZES = {"digits_resnet": (1, 32, 32)}  # input (channels, height, width); the others read 3 x SIZE x SIZE


def pruned_at(module: nn.Module, example: torch.Tensor, share: float, round_to) -> nn.Module:
    plan = Plan(granularity="channel", criterion="l1", sparsity=round(share, 4), round_to=round_to)
    return apply_plan(module, plan, example_input=example).module


def share_for_cut(module: nn.Module, example: torch.Tensor, dense_macs: int) -> tuple[float, nn.Module]:
    """The uniform channel share whose auto-rounded plan cuts MACs by about MAC_CUT, and that pruned model."""
    share, pruned = 0.3, None
    for _ in range(SECANT_STEPS):
        pruned = pruned_at(module, example, share, AUTO)
        cut = dense_macs / macs(pruned, example)
        print(f"  share {share:.3f}: MAC cut {cut:.2f}x", flush=True)
        if abs(cut - MAC_CUT) < 0.05:
            break
        share = min(0.8, max(0.05, 1 - (1 - share) * (cut / MAC_CUT) ** 0.5))  # MACs scale with kept share squared
    return share, pruned


@contextlib.contextmanager
def cpu_rule(multiple: int | None):
    """``round_to: auto`` resolved as if this CPU's rule gave ``multiple`` (None: the CPU's own rule)."""
    if multiple is None:
        yield
        return
    own = kernels.channel_multiple
    kernels.channel_multiple = lambda: (multiple, f"the rule for {multiple}")
    try:
        yield
    finally:
        kernels.channel_multiple = own


def roundings() -> list[tuple[str, object, int | None]]:
    """(label, round_to, CPU rule) per row: auto under this CPU's rule and under AVX2's 8, then fixed multiples."""
    own = channel_multiple()[0]
    rows = [(f"auto ({own})", AUTO, None)]
    rows += [(f"auto as with {multiple}", AUTO, multiple) for multiple in (8, 16) if multiple != own]
    return rows + [("1", 1, None), ("16", 16, None)]


def measure(name: str, threads: int, rounds: int) -> list[list]:
    """Dense and every rounding's pruned model of ``name``, all timed in one alternation."""
    torch.manual_seed(0)
    module = Logits(MODELS[name]()).eval()
    example = torch.randn(1, *SIZES.get(name, (3, SIZE, SIZE)))
    dense_macs = macs(module, example)
    print(f"{name}: {dense_macs / 1e9:.3f} G MACs dense", flush=True)
    share, auto_model = share_for_cut(module, example, dense_macs)
    labels, models = [], [module]
    for label, round_to, rule in roundings():
        with cpu_rule(rule):
            models.append(auto_model if label.startswith("auto (") else pruned_at(module, example, share, round_to))
        labels.append(label)
    exported = [export_onnx(model, example) for model in models]
    sessions = [create_session(model, threads=threads)[0] for model in exported]
    timed = paired_latency(sessions, example.numpy(), min_runs=rounds, min_seconds=0.0)
    profiles = profile_models(exported, example.numpy(), [[] for _ in exported], threads=threads)
    node_ms = [profile["other_ms"] for profile in profiles]  # no layers named: every node's median counts here
    dense_ms = timed[0]["latency_ms"]["p50"]
    rows = []
    for label, pruned, measured, nodes in zip(labels, models[1:], timed[1:], node_ms[1:]):
        cut = dense_macs / macs(pruned, example)
        pruned_ms = measured["latency_ms"]["p50"]
        speedup, by_nodes = dense_ms / pruned_ms, node_ms[0] / nodes
        rows.append([name, f"{share:.1%}", label, f"{cut:.2f}x", f"{dense_ms:.2f}", f"{pruned_ms:.2f}",
                     f"{speedup:.2f}x", f"{speedup / cut:.2f}", f"{node_ms[0]:.2f}", f"{nodes:.2f}",
                     f"{by_nodes:.2f}x", f"{by_nodes / cut:.2f}", f"{os.getloadavg()[0]:.1f}"])
        print("  " + " | ".join(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), action="append", help="one model (repeatable); default all")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument("--rounds", type=int, default=60, help="timed runs of each session, alternating")
    parser.add_argument("--quick", action="store_true", help="MobileNetV2 only, 15 rounds")
    parser.add_argument("--min-units", type=int, default=kernels.MIN_UNITS,
                        help=f"auto rounds a group only when it holds this many multiples (default "
                             f"{kernels.MIN_UNITS}, core.kernels.MIN_UNITS)")
    args = parser.parse_args()
    kernels.MIN_UNITS = args.min_units
    names = ["mobilenet_v2"] if args.quick else (args.model or list(MODELS))
    rounds = 15 if args.quick else args.rounds
    started, rows = time.perf_counter(), []
    for name in names:
        rows += measure(name, args.threads, rounds)
    print(f"\nORT {args.threads} thread(s), batch 1, {rounds} alternating rounds, medians; rounding multiple "
          f"{channel_multiple()[0]} ({channel_multiple()[1]}); {time.perf_counter() - started:.0f} s\n")
    print_table(["model", "channel share", "round_to", "MAC cut", "dense ms", "pruned ms", "speedup",
                 "speedup / MAC cut", "dense ms (nodes)", "pruned ms (nodes)", "speedup (nodes)",
                 "speedup (nodes) / MAC cut", "load"], rows)


if __name__ == "__main__":
    main()
