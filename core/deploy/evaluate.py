"""evaluate and LiveEvaluator: a plan in, every metric of the deployed ONNX artifact out.

A report is ``{"model", "plan", "settings", "pruned": metrics, "baseline": metrics, "notes",
"layer_sparsity"}`` where metrics hold accuracy (None without labels), loss, agreement with the
dense model, latency_ms {mean, p50, p90, p99}, throughput, session_ms, params, nonzero_params,
sparsity (zero share of the model's own prunable weights), removed (share of the dense model's
prunable weights zero or gone: the figure for every granularity), macs, onnx_bytes,
compressed_bytes, max_abs_diff and label ('accuracy' or 'agreement'; 'cosine' for embedding
models, whose metrics hold cosine, cosine_p5 and neighbour_agreement; classifiers also get
output_error and kl: see core.deploy.measure.quality). The pruned metrics also hold
``speedup``: the median ratio of runs timed in alternation with the dense model, its 95% interval
and whether it is measurable at all (core.deploy.measure.speedup). ``baseline`` is the one dense
measurement per model and settings, the same in every report.

Big models are measured within bounds (see core.deploy.baseline.Settings); the report's data name
says when a subset was scored.

LiveEvaluator is what the dashboard calls on every slider release. It measures the dense model
once, caches reports by (model, plan, data, settings) in a bounded LRU shared by all threads,
and for unstructured and N:M plans writes the new weights into the exported graph instead of
exporting again (see core.deploy.export.with_weights).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import torch

from core.cache import MemoryLRU
from core.data import Dataset
from core.deploy import generation, measure
from core.deploy.baseline import Baseline, Settings
from core.deploy.export import changed_tensors, export_onnx, with_weights
from core.deploy.notes import report_notes
from core.deploy.onnx_source import prune_onnx
from core.deploy.progressive import Carried, last, metric_stages
from core.deploy.quantize import check_mode, quantize_model, resolve_mode
from core.errors import PrunelabError
from core.prune.engine import apply_plan
from core.prune.plan import Plan
from core.sources import ModelHandle
from core.sources.load import read_data

REPORT_CACHE_ENTRIES = 128
CONTINUATION_TOKENS = 32  # tokens a greedy continuation adds to a prompt
GENERATOR_CACHE_ENTRIES = 4
BASELINE_CACHE_ENTRIES = 8
STOPPED_CACHE_ENTRIES = 4
_REPORTS = MemoryLRU(REPORT_CACHE_ENTRIES)
_GENERATORS = MemoryLRU(GENERATOR_CACHE_ENTRIES)  # KV-cache sessions of pruned language models, for continuations
_BASELINES = MemoryLRU(BASELINE_CACHE_ENTRIES)
_STOPPED = MemoryLRU(STOPPED_CACHE_ENTRIES)  # plans whose measurement stopped part way: artifact, result, progress


def clear_caches() -> None:
    """Forget every cached report and baseline (tests and benchmarks use this)."""
    _REPORTS.clear()
    _BASELINES.clear()
    _STOPPED.clear()
    _GENERATORS.clear()


def removed_share(pruned: dict, dense: dict) -> float | None:
    """The share of the dense model's prunable weights that are zero or gone, for every granularity
    (channel pruning removes weights, so the pruned model's own zero share stays near 0)."""
    total, left = dense.get("prunable_params"), pruned.get("nonzero_prunable_params")
    if not total or left is None:
        return None
    return max(0.0, 1.0 - left / total)


def _dataset(handle: ModelHandle, data) -> Dataset:
    if data is None:
        return handle.data
    dataset = read_data(handle, data) if isinstance(data, (str, Path)) else data
    dataset.check_shape(handle.input_shape)
    return dataset


class LiveEvaluator:
    """Measures plans on one model, fast enough for a slider, safe to share between threads.

    ``threads`` are ONNX Runtime's intra-op threads, ``batch_size`` the items per timed run,
    ``quantize`` None or an INT8 mode of core.deploy.quantize, ``data`` a Dataset or .npz path (default:
    the model's data). ``live=False`` times the full >= 30 runs / 0.5 s (what ``evaluate`` uses).
    ``metric`` (a core.metric.Metric) adds the user's own named numbers under ``metrics``.
    """

    def __init__(self, handle: ModelHandle, threads: int = 2, batch_size: int = 1, quantize: str | None = None,
                 data: Dataset | str | Path | None = None, live: bool = True, metric=None):
        if quantize is not None:
            check_mode(quantize)
        if int(batch_size) < 1 or int(threads) < 1:
            raise PrunelabError(f"batch size and threads must be at least 1, got {batch_size} and {threads}")
        handle.require("evaluate")
        self.handle = handle
        self.data = _dataset(handle, data)
        self.settings = Settings(int(batch_size), int(threads), quantize, live, handle.output_kind, handle.outputs,
                                 metric if metric is not None else handle.metric)
        self._data_digest = self.data.digest  # hashes every array: once, not on every call
        self._lock = threading.Lock()

    def _key(self, plan: Plan | None) -> tuple:
        # A report belongs to the dense measurement it was compared with: once that baseline leaves its
        # cache and is measured again, its old reports no longer match it and are measured again too.
        return (self.handle.digest, None if plan is None else plan.digest, self._data_digest, self.settings,
                self._baseline_state().serial)

    def _baseline_key(self) -> tuple:
        return (self.handle.digest, self._data_digest, self.settings.threads, self.settings.batch_size,
                self.settings.live, self.settings.metric)

    def _baseline_state(self) -> Baseline:
        key = self._baseline_key()
        with self._lock:
            baseline = _BASELINES.get(key)
            if baseline is None:
                baseline = _BASELINES.put(key, Baseline(self.handle, self.data, self.settings))
        return baseline

    def baseline(self) -> dict:
        """Metrics of the dense FP32 model (measured once, then cached)."""
        return self._baseline_state().metrics

    def measure(self, plan: Plan | dict | None = None) -> dict:
        """The report for ``plan`` (None: the dense model, quantized if asked); cached per plan."""
        return last(self.stages(plan))

    def cached(self, plan: Plan | None) -> dict | None:
        """The finished report of ``plan`` when it is cached, else None; never measures anything."""
        if _BASELINES.get(self._baseline_key()) is None:
            return None
        return _REPORTS.get(self._key(plan))

    def stages(self, plan: Plan | dict | None = None, cancelled=None):
        """The report for ``plan`` in stages, first figures first (see core.deploy.progressive); the last
        one is ``measure``'s report and goes into the cache. ``cancelled()`` turning True stops the
        measurement between stages (raises Cancelled); the dense baseline, once measured, stays cached."""
        plan = Plan.from_dict(plan) if isinstance(plan, dict) else plan
        key = self._key(plan)
        report = _REPORTS.get(key)
        if report is not None:
            yield report
            return
        # A plan stopped part way (a newer slider release replaced it) goes on where it stopped when it comes
        # back: its pruned artifact, its ONNX Runtime session and the items already scored are kept.
        artifact, result, carried = _STOPPED.pop(key) or (*self._artifact(plan), Carried())
        finished = False
        try:
            for report in self._report_stages(plan, artifact, result, cancelled, carried):
                if report["pruned"]["progress"]["final"]:
                    report, finished = _REPORTS.put(key, report), True
                yield report
        finally:
            if not finished:
                _STOPPED.put(key, (artifact, result, carried))

    def measure_artifact(self, plan: Plan | None = None) -> tuple[dict, measure.Artifact, object]:
        """The report, the measured artifact and the engine's PruneResult (None without a plan).

        For ``prunelab prune``, which writes the artifact; the report is cached like ``measure``'s.
        """
        artifact, result = self._artifact(plan)
        report = _REPORTS.put(self._key(plan), self._report(plan, artifact, result))
        return report, artifact, result

    def artifact(self, plan: Plan | None = None, module=None) -> measure.Artifact:
        """The artifact ``measure`` measures for ``plan`` (INT8 when this evaluator quantizes): the same
        bytes, built again. With ``module`` (a fine-tuned copy of this model), that module instead."""
        if module is not None:
            return self._module_artifact(module)
        return self._artifact(plan)[0]

    def measure_module(self, module, plan: Plan | None = None) -> tuple[dict, measure.Artifact]:
        """The report of ``module``, a retrained copy of this model made for ``plan``, against the dense
        baseline (INT8 when this evaluator quantizes), and the artifact measured. Not cached: the
        caller keeps the report. The one path that measures a recovered model (CLI and dashboard)."""
        artifact = self._module_artifact(module)
        return self._report(plan, artifact, None), artifact

    def _module_artifact(self, module) -> measure.Artifact:
        module = module.eval()
        example = torch.from_numpy(np.ascontiguousarray(self.data.x_test[:1]))
        artifact = measure.Artifact(export_onnx(module, example), module, measure.weight_counts(module),
                            measure.total_macs(module, example))
        return self._quantized(artifact) if self.settings.quantize else artifact

    def _artifact(self, plan: Plan | None) -> tuple[measure.Artifact, object]:
        baseline = self._baseline_state()
        artifact, result = (baseline.artifact, None) if plan is None else self._pruned(baseline, plan)
        if self.settings.quantize:
            artifact = self._quantized(artifact)
        return artifact, result

    def _report(self, plan: Plan | None, artifact: measure.Artifact, result) -> dict:
        return last(self._report_stages(plan, artifact, result))

    def _report_stages(self, plan: Plan | None, artifact: measure.Artifact, result, cancelled=None,
                       carried: Carried | None = None):
        baseline = self._baseline_state()
        started = time.perf_counter()
        dense = dict(baseline.metrics)  # one dense measurement per model and settings, shown everywhere
        if artifact is baseline.artifact or artifact.model_bytes == baseline.artifact.model_bytes:
            # the plan changed nothing (0% everywhere): the dense model's own measurement
            pruned = dict(dense, speedup={"p50": 1.0, "low": 1.0, "high": 1.0, "measurable": False, "pairs": 0,
                                          "reference_p50": dense["latency_ms"]["p50"], "same_model": True})
            yield self._compose(plan, pruned, dense, result, artifact, started)
            return
        same_kernels = dense if artifact.same_graph and not artifact.quantized else None
        for pruned in metric_stages(artifact, baseline.data, self.settings, baseline.logits,
                                    reference_session=baseline.session, dense=same_kernels, cancelled=cancelled,
                                    carried=carried):
            yield self._compose(plan, pruned, dense, result, artifact, started)

    def _compose(self, plan: Plan | None, pruned: dict, dense: dict, result, artifact, started: float) -> dict:
        """One report from a stage's metrics; the notes are written for the final stage only."""
        baseline = self._baseline_state()
        pruned["removed"] = removed_share(pruned, dense)
        final = pruned.setdefault("progress", {"items": len(baseline.data.x_test),
                                               "of": len(baseline.data.x_test), "runs": pruned.get("runs"),
                                               "final": True})["final"]
        if final and self._generates(artifact):
            pruned["generation"] = self._generation(baseline, artifact)
            dense["generation"] = baseline.metrics["generation"] = baseline.speed.figures
        timings = dict(artifact.timings_ms, measure=(time.perf_counter() - started) * 1000.0)
        report = {"model": self.handle.name, "plan": None if plan is None else plan.to_dict(),
                  "settings": {"batch_size": self.settings.batch_size, "threads": self.settings.threads,
                               "quantize": self._quantize_mode(baseline), "data": baseline.data.name,
                               "splits": self.data.describe_splits(),
                               "measured_on": f"{_measured(dense)} on the test split "
                                              f"({len(baseline.data.x_test)} items); tuning never uses it"},
                  "pruned": pruned, "baseline": dense,
                  "layer_sparsity": {} if result is None else dict(result.layer_sparsity),
                  "kept": {} if result is None else dict(result.kept),
                  "groups": None if result is None else result.groups, "timings_ms": timings,
                  "blocks": {"dense": baseline.blocks, "removed": [] if result is None else list(result.dropped)}}
        notes = [] if result is None else list(result.notes)
        if final:
            notes += report_notes(plan, pruned, dense, self._quantize_mode(baseline))
        report["notes"] = notes
        return report

    def _generates(self, artifact: measure.Artifact) -> bool:
        """Prefill and decode are timed for causal language models with a torch module (FP32 or INT8)."""
        return self.handle.output_kind == "causal" and artifact.module is not None

    def _generation(self, baseline: Baseline, artifact: measure.Artifact) -> dict:
        """Prefill and decode figures of ``artifact`` against the dense KV-cache graph (see
        core.deploy.baseline.DenseSpeed.compare); a graph the dense one's kernels run gets 1.00x, an
        INT8 one is quantized and paired against the dense FP32 graph."""
        same = not artifact.quantized and (artifact.same_graph or artifact.model_bytes == baseline.artifact.model_bytes)
        return baseline.speed.compare(None if same else artifact.module, self.settings.threads,
                                      self.settings.batch_size, self.settings.live, int8=artifact.quantized)

    def continuations(self, plan: Plan | dict | None, prompt: str, new_tokens: int = CONTINUATION_TOKENS) -> dict:
        """The dense and the pruned model's greedy continuations of ``prompt``, run on their KV-cache
        graphs in ONNX Runtime: ``{"dense": text, "pruned": text, "prompt_tokens": n}``.

        Raises PrunelabError for a model that is not a language model with a tokenizer, or an empty prompt.
        """
        plan = Plan.from_dict(plan) if isinstance(plan, dict) else plan
        tokenizer = self.handle.tokenizer
        if self.handle.output_kind != "causal" or tokenizer is None or self.handle.module is None:
            raise PrunelabError(f"{self.handle.name}: continuations need a causal language model with a tokenizer")
        ids = generation.prompt_ids(tokenizer, prompt, self.handle.module, new_tokens)
        dense = self._baseline_state().speed.session(self.settings.threads, self.settings.batch_size,
                                                      self.settings.live)
        pruned = dense if plan is None else _GENERATORS.get(self._key(plan))
        if pruned is None:
            module = apply_plan(self.handle, plan, data=self.data).module.eval()
            pruned = _GENERATORS.put(self._key(plan), generation.Generator(generation.export_cached(module),
                                                                           self.settings.threads))
        return {"dense": generation.decode(tokenizer, dense.greedy(ids, new_tokens)),
                "pruned": generation.decode(tokenizer, pruned.greedy(ids, new_tokens)), "prompt_tokens": len(ids)}

    def _quantize_mode(self, baseline: Baseline) -> str | None:
        """The INT8 mode as applied ('int8' resolved to static or dynamic), or None."""
        return None if self.settings.quantize is None else resolve_mode(baseline.template, self.settings.quantize)

    def _pruned(self, baseline: Baseline, plan: Plan):
        """The pruned artifact: new weights written into the exported graph, or a fresh export."""
        if self.handle.module is None:
            if plan.removes_blocks:
                raise PrunelabError(f"{self.handle.name}: removing whole blocks needs the PyTorch model, "
                                    f"not an ONNX file")
            return prune_onnx(self.handle, baseline.template, plan, self.data)

        started = time.perf_counter()
        result = apply_plan(self.handle, plan, data=self.data)
        module = result.module.eval()
        pruned_at = time.perf_counter()
        example = torch.from_numpy(np.ascontiguousarray(self.data.x_test[:1]))
        model_bytes = None
        if plan.granularity != "channel" and not result.dropped:  # same graph, new weights
            changed = changed_tensors(baseline.state, module.state_dict())
            model_bytes = (baseline.patched(changed) or with_weights(baseline.template, changed)) if changed \
                else baseline.artifact.model_bytes
        same_shape = model_bytes is not None
        if model_bytes is None:
            model_bytes = export_onnx(module, example)
        macs = baseline.artifact.macs if same_shape else measure.total_macs(module, example)
        timings = {"prune": (pruned_at - started) * 1000.0, "batchnorm": result.batchnorm_ms,
                   "export": (time.perf_counter() - pruned_at) * 1000.0, "fast_path": same_shape}
        return measure.Artifact(model_bytes, module, measure.weight_counts(module), macs, timings_ms=timings,
                                same_graph=same_shape), result

    def _quantized(self, artifact: measure.Artifact) -> measure.Artifact:
        started = time.perf_counter()
        model_bytes = quantize_model(artifact.model_bytes, self.data, self.settings.quantize, artifact.macs)
        timings = dict(artifact.timings_ms, quantize=(time.perf_counter() - started) * 1000.0)
        return measure.Artifact(model_bytes, artifact.module, artifact.counts, artifact.macs, quantized=True,
                                timings_ms=timings, same_graph=artifact.same_graph)


def _measured(dense: dict) -> str:
    if dense.get("context"):
        return (f"{'perplexity' if dense.get('perplexity') is not None else 'next-token agreement'} "
                f"(context {dense['context']}, stride {dense['stride']})")
    return "fidelity to the dense embeddings" if dense.get("label") == "cosine" else "accuracy, loss and agreement"


def evaluate(handle: ModelHandle, plan: Plan | dict | None = None, *, batch_size: int = 1, threads: int = 2,
             quantize: str | None = None, data: Dataset | str | Path | None = None, metric=None) -> dict:
    """Measure ``handle`` pruned by ``plan`` (and quantized when ``quantize`` is an INT8 mode) against
    its dense baseline, with full latency timing (>= 30 runs and >= 0.5 s after a warm-up).

    ``metric`` (core.metric.Metric) adds the user's own named numbers under ``metrics``. Raises
    PrunelabError for a plan that does not fit the model, data of the wrong shape, a graph ONNX Runtime
    refuses, or a metric that fails.
    """
    evaluator = LiveEvaluator(handle, threads=threads, batch_size=batch_size, quantize=quantize, data=data,
                              live=False, metric=metric)
    return evaluator.measure(plan)
