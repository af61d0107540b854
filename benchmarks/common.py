"""Helpers shared by the benchmarks: ORT latency of a module, MACs, test accuracy, table printing."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from core.deploy.export import export_onnx
from core.deploy.measure import create_session, latency, paired_latency
from core.inspect import layer_macs


def ort_p50_ms(module: nn.Module, example: torch.Tensor, threads: int = 2, seconds: float = 1.0) -> float:
    """Median ONNX Runtime latency of ``module`` at the example's batch size."""
    session, _ = create_session(export_onnx(module, example), threads=threads)
    return latency(session, example.numpy(), min_runs=50, min_seconds=seconds)["latency_ms"]["p50"]


def paired_p50_ms(dense: nn.Module, pruned: nn.Module, example: torch.Tensor, threads: int = 2,
                  rounds: int = 200) -> tuple[float, float]:
    """Median ORT latency of two modules timed alternately (``rounds`` runs each), so machine noise hits both alike."""
    sessions = [create_session(export_onnx(module, example), threads=threads)[0] for module in (dense, pruned)]
    dense_latency, pruned_latency = paired_latency(sessions, example.numpy(), min_runs=rounds, min_seconds=0.0)
    return dense_latency["latency_ms"]["p50"], pruned_latency["latency_ms"]["p50"]


def macs(module: nn.Module, example: torch.Tensor) -> int:
    return sum(layer_macs(module, example).values())


@torch.no_grad()
def test_accuracy(module: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    module.eval()
    return float((module(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def print_table(headers: list[str], rows: list[list]) -> None:
    """A Markdown table, so the output pastes straight into RESULTS.md."""
    cells = [[f"{value:.3f}" if isinstance(value, float) else str(value) for value in row] for row in rows]
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in cells:
        print("| " + " | ".join(row) + " |")
