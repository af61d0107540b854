"""Run every benchmark, print its figures, and rewrite benchmarks/RESULTS.md with them and the machine.

    python -m benchmarks.run [--quick] [NAME ...]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

# Module name -> what it measures; run in this order.
BENCHMARKS = {
    "memory": "Resident memory across 200 plan changes",  # first: a fresh process
    "global_unstructured": "Global unstructured magnitude pruning of an 11M-parameter model against torch.nn.utils.prune",
    "channel_speedup": "Channel pruning of digits-resnet: measured ONNX Runtime speedup against MAC reduction and Torch-Pruning",
    "live_loop": "The live loop: time from a plan change to all metrics, per demo model",
    "allocation": "Sensitivity sweep times and allocated plans against uniform and global pruning",
    "recovery": "Recovery: fine-tuning, gradual pruning and lottery-ticket rewinding",
    "accuracy_curves": "Accuracy against sparsity for each demo model",
}


class Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for stream in self.streams:
            stream.write(text)
        return len(text)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in
                         ("torch", "torch-pruning", "onnx", "onnxruntime", "numpy"))
    return f"{cpu}; {os.cpu_count()} cores; Python {platform.python_version()}; {versions}"


def run(names: list[str], quick: bool) -> str:
    sections = [f"# Benchmark results\n\nMachine: {machine()}\n\nRun: `python -m benchmarks.run"
                f"{' --quick' if quick else ''}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n"]
    for name in names:
        print(f"\n## {BENCHMARKS[name]}\n", flush=True)
        captured = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(Tee(sys.stdout, captured)):
            try:
                importlib.import_module(f"benchmarks.{name}").main(quick=quick)
            except Exception as error:  # one broken benchmark must not hide the others
                print(f"FAILED: {error.__class__.__name__}: {error}")
        elapsed = time.perf_counter() - started
        sections.append(f"## {BENCHMARKS[name]}\n\n`python -m benchmarks.{name}` ({elapsed:.0f} s)\n\n"
                        f"{captured.getvalue().strip()}\n")
    return "\n".join(sections)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"some of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="tiny versions, for a smoke test")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)} (choose from {', '.join(BENCHMARKS)})")
    text = run(args.names or list(BENCHMARKS), args.quick)
    if not args.quick:
        RESULTS.write_text(text)
        print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
