"""The conformance models (tests/test_conformance.py) under a 50% channel plan with no ignore list:
MACs before and after, ONNX Runtime latency at batch 1 (dense and pruned timed alternately), the
time the plan takes, plus a Swin-T-sized model (transformers' default SwinConfig, 224x224).

    python -m benchmarks.conformance [--quick]
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from benchmarks.common import paired_p50_ms, print_table
from core.deploy.measure import total_macs
from core.prune.engine import apply_plan
from core.prune.plan import Plan
from core.sources import load_model

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
MODELS = [("bert", "hf_models.py:bert", "1,16"), ("vit", "hf_models.py:vit", "1,3,32,32"),
          ("swin", "hf_models.py:swin", "1,3,32,32"), ("resnet", "hf_models.py:resnet", "1,3,224,224"),
          ("convnext", "hf_models.py:convnext", "1,3,224,224"),
          ("mobilenet_v2", "hf_models.py:mobilenet_v2", "1,3,224,224"),
          ("efficientnet", "hf_models.py:efficientnet", "1,3,32,32"),
          ("regnet", "hf_models.py:regnet", "1,3,224,224"), ("ghostnet-style", "ghost.py:ghostnet", "1,3,224,224")]
LARGE = [("swin-t (224)", "hf_models.py:swin_tiny", "1,3,224,224")]


def measure(label: str, spec: str, shape: str, rounds: int) -> list:
    handle = load_model(str(FIXTURES / spec), input_shape=shape)
    example = handle.example_input(1)
    started = time.perf_counter()
    result = apply_plan(handle, Plan(granularity="channel", sparsity=0.5))
    seconds = time.perf_counter() - started
    before, after = total_macs(handle.module, example), total_macs(result.module, example)
    dense_ms, pruned_ms = paired_p50_ms(handle.module, result.module, example, threads=1, rounds=rounds)
    heads = sum(row["kept"] for row in result.kept.values() if row["unit"] == "head") // 3 or "-"
    total_heads = sum(row["total"] for row in result.kept.values() if row["unit"] == "head") // 3 or "-"
    return [label, shape, f"{before / 1e6:.2f}", f"{after / 1e6:.2f}", f"{before / after:.2f}x",
            f"{heads}/{total_heads}", round(seconds, 1), round(dense_ms, 3), round(pruned_ms, 3),
            f"{dense_ms / pruned_ms:.2f}x"]


def main(quick: bool = False) -> list[list]:
    rounds = 30 if quick else 200
    rows = [measure(*model, rounds) for model in (MODELS[:2] if quick else MODELS + LARGE)]
    print_table(["model", "input", "MMACs dense", "MMACs pruned", "MAC ratio", "heads kept", "prune s",
                 "ORT p50 ms dense", "ORT p50 ms pruned", "speedup"], rows)
    print(f"\nORT CPU, 1 thread, batch 1; peak resident memory of this process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="two models, fewer timed runs")
    main(parser.parse_args().quick)
