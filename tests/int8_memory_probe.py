"""Run in a fresh process by test_quantize: static INT8 of one model, printing the memory it took as JSON.

The peak is this process's own high-water mark (VmHWM), not ``getrusage().ru_maxrss``: Linux carries
the launching process's peak into ru_maxrss across exec, so a probe started from a pytest worker that
had reached 2.7 GB reported 2.7 GB for a run whose own peak was 1.5 GB.

``--phases`` also prints, to stderr, the peak resident memory of each phase of the run (export,
plan, pre-processing, the calibration session, collecting, computing ranges, quantizing), sampled
every 2 ms from a thread.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import json
import sys
import threading
import time

import onnx

from core.deploy.calibration import plan_calibration
from core.deploy.export import export_onnx
from core.deploy.measure import total_macs
from core.deploy.quantize import quantize_model
from core.sources import load_model


def status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))


class Phases:
    """Peak resident memory per named phase, sampled from a thread; phases nest (the innermost counts)."""

    def __init__(self, sampling: bool):
        self.stack, self.peaks, self.high_water, self.running = ["outside the phases"], {}, {}, sampling
        if sampling:
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while self.running:
            label, value = self.stack[-1], status_bytes("VmRSS")
            self.peaks[label] = max(self.peaks.get(label, 0), value)
            time.sleep(0.002)

    @contextlib.contextmanager
    def phase(self, name: str):
        self.stack.append(name)
        try:
            yield
        finally:
            time.sleep(0.004)  # let the sampler see the phase's last state
            self.high_water[name] = status_bytes("VmHWM")  # catches peaks between two samples
            self.stack.pop()

    def wrap(self, module: str, owner: str | None, attribute: str, name: str) -> None:
        """Count calls of module[.owner].attribute as phase ``name``."""
        target = importlib.import_module(module)
        target = getattr(target, owner) if owner else target
        original = getattr(target, attribute)

        @functools.wraps(original)
        def wrapped(*args, **kwargs):
            with self.phase(name):
                return original(*args, **kwargs)
        setattr(target, attribute, wrapped)

    def report(self) -> str:
        self.running = False
        rows = [f"{'phase':22s} {'sampled peak':>12s} {'VmHWM at its end':>16s}"]
        rows += [f"{name:22s} {peak / 2**20:8.0f} MiB {self.high_water.get(name, 0) / 2**20:12.0f} MiB"
                 for name, peak in self.peaks.items()]
        return "\n".join(rows)


def watch_quantization(phases: Phases) -> None:
    calibrate, quantizer = "onnxruntime.quantization.calibrate", "onnxruntime.quantization.qdq_quantizer"
    phases.wrap("core.deploy.quantize", None, "quant_pre_process", "pre-process")
    phases.wrap(calibrate, "MinMaxCalibrater", "augment_graph", "augment graph")
    phases.wrap(calibrate, "CalibraterBase", "create_inference_session", "calibration session")
    phases.wrap(calibrate, "MinMaxCalibrater", "collect_data", "collect (batches)")
    phases.wrap(calibrate, "MinMaxCalibrater", "compute_data", "compute ranges")
    phases.wrap(quantizer, "QDQQuantizer", "quantize_model", "quantize")


def main(spec: str, input_shape: str, show_phases: bool = False) -> None:
    phases = Phases(sampling=show_phases)
    if show_phases:
        watch_quantization(phases)
    with phases.phase("load"):
        handle = load_model(spec, input_shape=input_shape)
    with phases.phase("export"):
        model_bytes = export_onnx(handle.module, handle.example_input())
        macs = total_macs(handle.module, handle.example_input())
    with phases.phase("plan"):
        plan = plan_calibration(onnx.load_from_string(model_bytes), len(model_bytes), 128, macs)
    gc.collect()
    before = status_bytes("VmRSS")
    with phases.phase("quantize_model"):
        quantize_model(model_bytes, handle.data, "int8-static", macs)
    peak = status_bytes("VmHWM")
    if show_phases:
        print(phases.report(), file=sys.stderr)
    print(json.dumps({"before": before, "peak": peak, "estimate": plan.estimated_bytes,
                      "batch": plan.batch_size, "items": plan.items, "activation": plan.activation_bytes}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--phases" in sys.argv[3:])
