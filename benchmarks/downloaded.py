"""Models as people download them (tests/fixtures/downloaded.py: timm, torchvision, GPT-2, YOLOv8;
random weights) under a 50% channel plan with no ignore list: MACs before and after, the time the
plan takes, torch-vs-ORT parity per output, ORT latency at batch 1 (dense and pruned timed
alternately) and the peak resident memory of the process that pruned it (one process per model).

Needs ``make testdeps`` (timm, torchvision and Ultralytics in .venv/testdeps).

    python -m benchmarks.downloaded [--rounds N] [--only NAME ...]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTDEPS = ROOT / ".venv" / "testdeps"
MODELS = {"vit_tiny": "1,3,224,224", "vit_b_16": "1,3,224,224", "swin_t": "1,3,224,224", "gpt2": "1,64",
          "yolov8n": "1,3,640,640"}


def measure(name: str, rounds: int) -> dict:
    """One model's row; run in a process of its own so its peak memory is its own."""
    for stub in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules.setdefault(stub, types.ModuleType(stub))
    sys.path.insert(0, str(TESTDEPS))
    import numpy as np
    import torch

    from benchmarks.common import paired_p50_ms
    from core.deploy.export import export_onnx
    from core.deploy.measure import create_session, total_macs
    from core.outputs import leaves
    from core.prune.engine import apply_plan
    from core.prune.plan import Plan
    from core.sources import load_model

    handle = load_model(f"{ROOT / 'tests' / 'fixtures' / 'downloaded.py'}:{name}", input_shape=MODELS[name])
    example = handle.example_input(1)
    started = time.perf_counter()
    result = apply_plan(handle, Plan(granularity="channel", sparsity=0.5))
    seconds = time.perf_counter() - started
    session, _ = create_session(export_onnx(result.module, example), threads=1)
    with torch.no_grad():
        expected = [tensor.numpy() for _, tensor in leaves(result.module(example))]
    got = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    parity = max(float(np.abs(a - b).max()) for a, b in zip(got, expected))
    dense_ms, pruned_ms = paired_p50_ms(handle.module, result.module, example, threads=1, rounds=rounds)
    return {"model": name, "input": MODELS[name], "macs_dense": total_macs(handle.module, example),
            "macs_pruned": total_macs(result.module, example), "prune_s": round(seconds, 1),
            "outputs": len(got), "parity": parity, "dense_ms": dense_ms, "pruned_ms": pruned_ms,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "dense_notes": [note for note in result.notes if note.startswith("left dense")]}


def main(rounds: int, only: list[str] | None) -> list[dict]:
    rows = []
    for name in only or MODELS:
        environment = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-m", "benchmarks.downloaded", "--one", name, "--rounds", str(rounds)],
                              capture_output=True, text=True, env=environment, cwd=ROOT)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if not lines:
            print(f"{name}: failed: {done.stderr.strip().splitlines()[-1:] }")
            continue
        row = json.loads(lines[-1])
        rows.append(row)
        print(f"| {name} | {row['input']} | {row['macs_dense'] / 1e9:.3f} G -> {row['macs_pruned'] / 1e9:.3f} G "
              f"({row['macs_dense'] / row['macs_pruned']:.2f}x) | {row['prune_s']} s | {row['outputs']} | "
              f"{row['parity']:.2g} | {row['dense_ms']:.2f} -> {row['pruned_ms']:.2f} ms "
              f"({row['dense_ms'] / row['pruned_ms']:.2f}x) | {row['peak_mb']} MB |", flush=True)
    print("\nORT CPU, 1 thread, batch 1, paired p50; parity = max |torch - ORT| over every output of the pruned model")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=50, help="timed runs per model and variant")
    parser.add_argument("--only", nargs="*", help="some of: " + ", ".join(MODELS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.one:
        print(json.dumps(measure(arguments.one, arguments.rounds)))
    else:
        main(arguments.rounds, arguments.only)
