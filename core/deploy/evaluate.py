"""evaluate and LiveEvaluator: a plan in, every metric of the deployed ONNX artifact out.

A report is ``{"model", "plan", "settings", "pruned": metrics, "baseline": metrics, "notes",
"layer_sparsity"}`` where metrics hold accuracy (None without labels), loss, agreement with the
dense model, latency_ms {mean, p50, p90, p99}, throughput, session_ms, params, nonzero_params,
sparsity, macs, onnx_bytes, compressed_bytes, max_abs_diff and label ('accuracy' or 'agreement').

LiveEvaluator is what the dashboard calls on every slider release. It measures the dense model
once, caches reports by (model, plan, data, settings) in a bounded LRU shared by all threads,
and for unstructured and N:M plans writes the new weights into the exported graph instead of
exporting again (see core.deploy.export.with_weights).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from core.deploy import measure
from core.data import Dataset, load_npz
from core.errors import PrunelabError
from core.deploy.export import changed_tensors, export_onnx, with_weights
from core.deploy.onnx_source import onnx_artifact, prune_onnx
from core.prune.plan import Plan
from core.sources import ModelHandle

REPORT_CACHE_ENTRIES = 128
BASELINE_CACHE_ENTRIES = 8
ACCURACY_BATCH = 512
PARITY_ITEMS = 64
LIVE_PARITY_ITEMS = 16
# The live loop times fewer runs: at least this many, for at least this long.
LIVE_RUNS = 20
LIVE_SECONDS = 0.15


@dataclass(frozen=True)
class Settings:
    """How to measure: items per timed run, ORT threads, INT8 mode (None for FP32), live or full timing."""

    batch_size: int = 1
    threads: int = 2
    quantize: str | None = None
    live: bool = True

    def timing(self) -> dict:
        if self.live:
            return {"min_runs": LIVE_RUNS, "min_seconds": LIVE_SECONDS}
        return {"min_runs": measure.MIN_RUNS, "min_seconds": measure.MIN_SECONDS}


class _LRU:
    """A small thread-safe least-recently-used map."""

    def __init__(self, entries: int):
        self.entries = entries
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key, value):
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.entries:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_REPORTS = _LRU(REPORT_CACHE_ENTRIES)
_BASELINES = _LRU(BASELINE_CACHE_ENTRIES)


def clear_caches() -> None:
    """Forget every cached report and baseline (tests and benchmarks use this)."""
    _REPORTS.clear()
    _BASELINES.clear()


class _Baseline:
    """The dense model, measured once: its exported graph, state, logits on the data and metrics."""

    def __init__(self, handle: ModelHandle, data: Dataset, settings: Settings):
        if handle.module is None:
            self.artifact = onnx_artifact(handle)
        else:
            module = handle.module
            example = torch.from_numpy(np.ascontiguousarray(data.x_test[:1]))
            self.artifact = measure.Artifact(export_onnx(module, example), module, measure.weight_counts(module),
                                      measure.total_macs(module, example))
        self.template = onnx.load_from_string(self.artifact.model_bytes)
        self.state = None if handle.module is None else {
            key: tensor.detach().clone() for key, tensor in handle.module.state_dict().items()}
        self.session, session_ms = measure.create_session(self.artifact.model_bytes, settings.threads)
        self.logits = measure.run_batched(self.session, data.x_test, ACCURACY_BATCH)
        self.metrics = _measure(self.artifact, data, settings, reference=None, session=(self.session, session_ms),
                                logits=self.logits)


def _measure(artifact: measure.Artifact, data: Dataset, settings: Settings, reference: np.ndarray | None,
             session=None, logits: np.ndarray | None = None, reference_session=None) -> dict:
    """All metrics of one artifact on ``data``; ``reference`` are the dense logits for agreement.

    With ``reference_session`` (the dense model's), both are timed in alternation and the dense
    model's latency from that same run is kept under ``"reference_latency"``.
    """
    if session is None:
        session = measure.create_session(artifact.model_bytes, settings.threads)
    session, session_ms = session
    if logits is None:
        logits = measure.run_batched(session, data.x_test, ACCURACY_BATCH)
    fixed = session.get_inputs()[0].shape[0] if session.get_inputs()[0].shape else None
    example = _example(data, fixed if isinstance(fixed, int) and fixed > 0 else settings.batch_size)
    metrics = measure.quality(logits, data.y_test, reference)
    if reference_session is None:
        metrics.update(measure.latency(session, example, **settings.timing()))
    else:
        dense, pruned = measure.paired_latency([reference_session, session], example, **settings.timing())
        metrics.update(pruned)
        metrics["reference_latency"] = dense
    metrics["session_ms"] = session_ms
    metrics.update(artifact.counts)
    metrics["macs"] = artifact.macs
    metrics.update(measure.sizes(artifact.model_bytes))
    metrics["max_abs_diff"], metrics["parity_ok"] = None, None
    if artifact.module is not None:
        items = data.x_test[:LIVE_PARITY_ITEMS if settings.live else PARITY_ITEMS]
        expected = measure.torch_outputs(artifact.module, items)
        metrics["max_abs_diff"] = float(np.abs(expected - logits[:len(items)]).max())
        metrics["parity_ok"] = metrics["max_abs_diff"] <= PARITY_TOLERANCE * max(1.0, float(np.abs(expected).max()))
    metrics["quantized"] = artifact.quantized
    return metrics


def _example(data: Dataset, batch_size: int) -> np.ndarray:
    """``batch_size`` real items for the timed runs, repeated when the data has fewer."""
    x = data.x_test
    repeats = -(-batch_size // len(x))
    return np.ascontiguousarray(np.concatenate([x] * repeats)[:batch_size]) if repeats > 1 else x[:batch_size]


def _dataset(handle: ModelHandle, data) -> Dataset:
    if data is None:
        return handle.data
    dataset = load_npz(data, handle.input_shape) if isinstance(data, (str, Path)) else data
    dataset.check_shape(handle.input_shape)
    return dataset


class LiveEvaluator:
    """Measures plans on one model, fast enough for a slider, safe to share between threads.

    ``threads`` are ONNX Runtime's intra-op threads, ``batch_size`` the items per timed run,
    ``quantize`` None or an INT8 mode of core.deploy.quantize, ``data`` a Dataset or .npz path (default:
    the model's data). ``live=False`` times the full >= 30 runs / 0.5 s (what ``evaluate`` uses).
    """

    def __init__(self, handle: ModelHandle, threads: int = 2, batch_size: int = 1, quantize: str | None = None,
                 data: Dataset | str | Path | None = None, live: bool = True):
        if quantize is not None:
            from core.deploy.quantize import check_mode
            check_mode(quantize)
        if int(batch_size) < 1 or int(threads) < 1:
            raise PrunelabError(f"batch size and threads must be at least 1, got {batch_size} and {threads}")
        handle.require("evaluate")
        self.handle = handle
        self.data = _dataset(handle, data)
        self.settings = Settings(int(batch_size), int(threads), quantize, live)
        self._data_digest = self.data.digest  # hashes every array: once, not on every call
        self._lock = threading.Lock()

    def _key(self, plan: Plan | None) -> tuple:
        return (self.handle.digest, None if plan is None else plan.digest, self._data_digest, self.settings)

    def _baseline_state(self) -> _Baseline:
        key = (self.handle.digest, self._data_digest, self.settings.threads, self.settings.batch_size,
               self.settings.live)
        with self._lock:
            baseline = _BASELINES.get(key)
            if baseline is None:
                baseline = _BASELINES.put(key, _Baseline(self.handle, self.data, self.settings))
        return baseline

    def baseline(self) -> dict:
        """Metrics of the dense FP32 model (measured once, then cached)."""
        return self._baseline_state().metrics

    def measure(self, plan: Plan | dict | None = None) -> dict:
        """The report for ``plan`` (None: the dense model, quantized if asked); cached per plan."""
        plan = Plan.from_dict(plan) if isinstance(plan, dict) else plan
        key = self._key(plan)
        report = _REPORTS.get(key)
        if report is None:
            report = _REPORTS.put(key, self._report(plan, *self._artifact(plan)))
        return report

    def measure_artifact(self, plan: Plan | None = None) -> tuple[dict, measure.Artifact, object]:
        """The report, the measured artifact and the engine's PruneResult (None without a plan).

        For ``prunelab prune``, which writes the artifact; the report is cached like ``measure``'s.
        """
        artifact, result = self._artifact(plan)
        report = _REPORTS.put(self._key(plan), self._report(plan, artifact, result))
        return report, artifact, result

    def _artifact(self, plan: Plan | None) -> tuple[measure.Artifact, object]:
        baseline = self._baseline_state()
        artifact, result = (baseline.artifact, None) if plan is None else self._pruned(baseline, plan)
        if self.settings.quantize:
            artifact = self._quantized(artifact)
        return artifact, result

    def _report(self, plan: Plan | None, artifact: measure.Artifact, result) -> dict:
        baseline = self._baseline_state()
        started = time.perf_counter()
        if artifact is baseline.artifact:
            pruned = dict(baseline.metrics)
        else:
            pruned = _measure(artifact, self.data, self.settings, reference=baseline.logits,
                              reference_session=baseline.session)
        dense = dict(baseline.metrics)
        dense.update(pruned.pop("reference_latency", {}))  # the dense latency from the same timed run
        timings = dict(artifact.timings_ms, measure=(time.perf_counter() - started) * 1000.0)
        report = {"model": self.handle.name, "plan": None if plan is None else plan.to_dict(),
                  "settings": {"batch_size": self.settings.batch_size, "threads": self.settings.threads,
                               "quantize": self._quantize_mode(baseline), "data": self.data.name},
                  "pruned": pruned, "baseline": dense,
                  "layer_sparsity": {} if result is None else dict(result.layer_sparsity),
                  "kept": {} if result is None else dict(result.kept),
                  "groups": None if result is None else result.groups, "timings_ms": timings}
        notes = [] if result is None else list(result.notes)
        report["notes"] = notes + report_notes(plan, pruned, dense, self._quantize_mode(baseline))
        return report

    def _quantize_mode(self, baseline: _Baseline) -> str | None:
        """The INT8 mode as applied ('int8' resolved to static or dynamic), or None."""
        from core.deploy.quantize import resolve_mode

        return None if self.settings.quantize is None else resolve_mode(baseline.template, self.settings.quantize)

    def _pruned(self, baseline: _Baseline, plan: Plan):
        """The pruned artifact: new weights written into the exported graph, or a fresh export."""
        if self.handle.module is None:
            return prune_onnx(self.handle, baseline.template, plan, self.data)
        from core.prune.engine import apply_plan

        started = time.perf_counter()
        result = apply_plan(self.handle, plan, data=self.data)
        module = result.module.eval()
        pruned_at = time.perf_counter()
        example = torch.from_numpy(np.ascontiguousarray(self.data.x_test[:1]))
        model_bytes = None
        if plan.granularity != "channel":
            model_bytes = with_weights(baseline.template, changed_tensors(baseline.state, module.state_dict()))
        same_shape = model_bytes is not None
        if model_bytes is None:
            model_bytes = export_onnx(module, example)
        macs = baseline.artifact.macs if same_shape else measure.total_macs(module, example)
        timings = {"prune": (pruned_at - started) * 1000.0, "export": (time.perf_counter() - pruned_at) * 1000.0,
                   "fast_path": same_shape}
        return measure.Artifact(model_bytes, module, measure.weight_counts(module), macs, timings_ms=timings), result

    def _quantized(self, artifact: measure.Artifact) -> measure.Artifact:
        from core.deploy.quantize import quantize_model

        started = time.perf_counter()
        model_bytes = quantize_model(artifact.model_bytes, self.data, self.settings.quantize)
        timings = dict(artifact.timings_ms, quantize=(time.perf_counter() - started) * 1000.0)
        return measure.Artifact(model_bytes, artifact.module, artifact.counts, artifact.macs, quantized=True,
                        timings_ms=timings)


def evaluate(handle: ModelHandle, plan: Plan | dict | None = None, *, batch_size: int = 1, threads: int = 2,
             quantize: str | None = None, data: Dataset | str | Path | None = None) -> dict:
    """Measure ``handle`` pruned by ``plan`` (and quantized when ``quantize`` is an INT8 mode) against
    its dense baseline, with full latency timing (>= 30 runs and >= 0.5 s after a warm-up).

    Raises PrunelabError for a plan that does not fit the model, data of the wrong shape, or a
    graph ONNX Runtime refuses.
    """
    evaluator = LiveEvaluator(handle, threads=threads, batch_size=batch_size, quantize=quantize, data=data,
                              live=False)
    return evaluator.measure(plan)


# Relative tolerance of the torch vs ONNX Runtime parity check (FP32 artifacts).
PARITY_TOLERANCE = 1e-3
# Latency "does not move" when the pruned p50 is at least this share of the dense p50 (else: noise).
UNCHANGED_LATENCY = 0.8


def report_notes(plan: Plan | None, pruned: dict, baseline: dict, quantize: str | None) -> list[str]:
    """Plain-language notes that keep the figures honest: parity, INT8 effect, why latency did (not) move."""
    notes = _parity_notes(pruned)
    if pruned.get("quantized"):
        notes += _quantize_notes(pruned, baseline, quantize)
    if plan is not None:
        notes += _latency_notes(plan, pruned, baseline, quantize)
    return notes


def _parity_notes(pruned: dict) -> list[str]:
    diff = pruned.get("max_abs_diff")
    if diff is None:
        return []
    if pruned.get("quantized"):
        return [f"INT8 outputs differ from the FP32 torch model by up to {diff:.3g}: quantization error, "
                f"not an export problem"]
    if pruned.get("parity_ok") is False:
        return [f"warning: ONNX Runtime and torch outputs differ by up to {diff:.3g} (tolerance "
                f"{PARITY_TOLERANCE:g} relative); the exported graph may not match the model"]
    return []


def _quantize_notes(pruned: dict, baseline: dict, quantize: str | None) -> list[str]:
    before, after = baseline["latency_ms"]["p50"], pruned["latency_ms"]["p50"]
    faster = before / after if after else float("inf")
    return [f"{quantize}: p50 latency {before:.3f} -> {after:.3f} ms vs dense FP32 "
            f"({faster:.2f}x{'' if faster >= 1 else ', slower than FP32 on this CPU'}), file "
            f"{baseline['onnx_bytes']:,} -> {pruned['onnx_bytes']:,} bytes"]


def _latency_notes(plan: Plan, pruned: dict, baseline: dict, quantize: str | None) -> list[str]:
    before, after = baseline["latency_ms"]["p50"], pruned["latency_ms"]["p50"]
    if plan.granularity == "channel":
        if after >= before:
            return []
        macs = "" if pruned["macs"] is None else f", MACs {baseline['macs']:,} -> {pruned['macs']:,}"
        return [f"channel pruning removed whole filters: {before / after:.2f}x lower p50 latency{macs}"]
    notes = []
    if not quantize:
        change = ("unchanged" if after >= UNCHANGED_LATENCY * before
                  else "different only by run-to-run noise, since the graph does the same work")
        notes.append(
            f"latency is {change} ({before:.3f} -> {after:.3f} ms p50): {plan.granularity} zeros do not speed up "
            f"ONNX Runtime's dense CPU kernels; prune whole channels (granularity 'channel') or quantize to "
            f"INT8 for speed. The compressed size shows the real gain: {baseline['compressed_bytes']:,} -> "
            f"{pruned['compressed_bytes']:,} bytes")
    return notes  # the engine's own notes say which hardware runs N:M sparsity
