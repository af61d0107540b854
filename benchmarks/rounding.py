"""Channel rounding against measured speed: transformers' MobileNetV2, EfficientNet-B0 and RegNet at 224,
random weights, batch 1, a uniform channel plan cutting about half the MACs, with the default
``round_to: auto`` (core.kernels) and with the plan's own multiples (1 and 16).

For each model the channel share giving a 2x MAC cut under auto rounding is found by a few secant
steps; every rounding then uses that share. Dense and pruned ONNX Runtime sessions are timed in
alternation. The target: speedup / MAC cut at least 0.8 with the defaults.

    python -m benchmarks.rounding [--quick] [--threads 1] [--rounds 60] [--model mobilenet_v2]
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

from benchmarks.common import macs, paired_p50_ms, print_table
from core.kernels import channel_multiple
from core.prune.engine import apply_plan
from core.prune.plan import AUTO, Plan

SIZE = 224
MAC_CUT = 2.0
SECANT_STEPS = 3


class Logits(nn.Module):
    """A transformers image classifier as a tensor-in, logits-out module."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).logits


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


MODELS = {"mobilenet_v2": mobilenet_v2, "efficientnet_b0": efficientnet_b0, "regnet": regnet}


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


def measure(name: str, threads: int, rounds: int) -> list[list]:
    torch.manual_seed(0)
    module = Logits(MODELS[name]()).eval()
    example = torch.randn(1, 3, SIZE, SIZE)
    dense_macs = macs(module, example)
    print(f"{name}: {dense_macs / 1e9:.3f} G MACs dense", flush=True)
    share, auto_model = share_for_cut(module, example, dense_macs)
    rows = []
    for label, round_to in ((f"auto ({channel_multiple()[0]})", AUTO), ("1", 1), ("16", 16)):
        pruned = auto_model if round_to == AUTO else pruned_at(module, example, share, round_to)
        cut = dense_macs / macs(pruned, example)
        dense_ms, pruned_ms = paired_p50_ms(module, pruned, example, threads=threads, rounds=rounds)
        speedup = dense_ms / pruned_ms
        rows.append([name, f"{share:.1%}", label, f"{cut:.2f}x", f"{dense_ms:.2f}", f"{pruned_ms:.2f}",
                     f"{speedup:.2f}x", f"{speedup / cut:.2f}", f"{os.getloadavg()[0]:.1f}"])
        print("  " + " | ".join(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), action="append", help="one model (repeatable); default all")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument("--rounds", type=int, default=60, help="timed runs of each session, alternating")
    parser.add_argument("--quick", action="store_true", help="MobileNetV2 only, 15 rounds")
    args = parser.parse_args()
    names = ["mobilenet_v2"] if args.quick else (args.model or list(MODELS))
    rounds = 15 if args.quick else args.rounds
    started, rows = time.perf_counter(), []
    for name in names:
        rows += measure(name, args.threads, rounds)
    print(f"\nORT {args.threads} thread(s), batch 1, {rounds} alternating rounds, medians; rounding multiple "
          f"{channel_multiple()[0]} ({channel_multiple()[1]}); {time.perf_counter() - started:.0f} s\n")
    print_table(["model", "channel share", "round_to", "MAC cut", "dense ms", "pruned ms", "speedup",
                 "speedup / MAC cut", "load"], rows)


if __name__ == "__main__":
    main()
