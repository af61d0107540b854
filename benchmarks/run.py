"""Run the benchmarks, print their figures, and write them and the machine into benchmarks/RESULTS.md.

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
    "global_unstructured": "Global unstructured magnitude pruning of an 11M-parameter model "
                           "against torch.nn.utils.prune",
    "channel_speedup": "Channel pruning of digits-resnet: measured ONNX Runtime speedup against MAC reduction "
                       "and Torch-Pruning",
    "live_loop": "The live loop: time from a plan change to all metrics, per demo model",
    "allocation": "Sensitivity sweep times and allocated plans against uniform and global pruning",
    "recovery": "Recovery: fine-tuning, gradual pruning and lottery-ticket rewinding",
    "accuracy_curves": "Accuracy against sparsity for each demo model",
    "conformance": "Conformance models under a 50% channel plan: MACs and ONNX Runtime speedup at batch 1",
    "minilm_heads": "MiniLM with attention heads removed: embedding fidelity against a random-head control",
    "llm_criteria": "Magnitude, Wanda and SparseGPT on the built-in language model, beside the published "
                    "LLaMA-2-7B table; SparseGPT on a 135M-parameter Llama",
    "profile_layers": "Where the time goes: per-layer profiles reconciled with unprofiled latency",
    "oneshot": "One-shot structured pruning: every channel criterion with and without reconstruction",
    "depth": "Depth against width at equal MAC reductions: whole blocks, channels and heads, and both",
    "scale": "Sweeps and plan grids on local worker processes and on a local Ray cluster",
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


def run(names: list[str], quick: bool) -> dict[str, str]:
    """Run the named benchmarks in order; their printed output as RESULTS.md sections, by name."""
    sections = {}
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
        sections[name] = (f"## {BENCHMARKS[name]}\n\n`python -m benchmarks.{name}` ({elapsed:.0f} s, "
                          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n{captured.getvalue().strip()}\n")
    return sections


def earlier_sections(text: str) -> dict[str, str]:
    """The sections of an existing RESULTS.md, by benchmark name (unknown headings are dropped)."""
    names = {title: name for name, title in BENCHMARKS.items()}
    found = {}
    for chunk in text.split("\n## ")[1:]:
        title = chunk.split("\n", 1)[0].strip()
        if title in names:
            found[names[title]] = f"## {chunk.rstrip()}\n"
    return found


def document(sections: dict[str, str], names: list[str]) -> str:
    """RESULTS.md: the machine, then every benchmark's section in BENCHMARKS order."""
    head = (f"# Benchmark results\n\nMachine: {machine()}\n\nWritten by `python -m benchmarks.run` "
            f"(`make bench`); this time {'all of them' if set(names) == set(BENCHMARKS) else ', '.join(names)} "
            f"ran on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, each section says when it ran.\n")
    return "\n".join([head, *(sections[name] for name in BENCHMARKS if name in sections)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"some of: {', '.join(BENCHMARKS)} (their sections of RESULTS.md are replaced, "
                             f"the others kept)")
    parser.add_argument("--quick", action="store_true", help="tiny versions, for a smoke test")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)} (choose from {', '.join(BENCHMARKS)})")
    names = args.names or list(BENCHMARKS)
    sections = run(names, args.quick)
    if not args.quick:
        kept = earlier_sections(RESULTS.read_text()) if RESULTS.exists() and args.names else {}
        RESULTS.write_text(document({**kept, **sections}, names))
        print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
