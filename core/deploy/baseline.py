"""The dense model, measured once: what every report of a plan is compared with.

``Settings`` says how to measure (items per timed run, threads, INT8 mode, live or full timing) and
bounds big models: the test items scored, the items checked against torch and the timed runs shrink
so each stays near a budget of multiply-accumulates (EVALUATION_BUDGET_MACS, PARITY_BUDGET_MACS,
TIMING_BUDGET_MACS). ``Baseline`` holds the dense model's exported graph, state, logits and metrics;
``DenseSpeed`` its KV-cache session and prefill and decode figures (language models only), made on
first use. core.deploy.evaluate caches one Baseline per model and settings.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

from core.data import Dataset
from core.deploy import measure
from core.deploy.export import export_onnx, float_spans, patched_weights
from core.deploy.generation import (
    INT8_MODE,
    Generator,
    compared_generation,
    dense_generation,
    export_cached,
    int8_cached,
    new_tokens_for,
    prompt_for,
)
from core.deploy.onnx_source import onnx_artifact
from core.deploy.progressive import last, metric_stages, scoring_batch
from core.prune.blocks import removable_blocks
from core.sources import ModelHandle

PARITY_ITEMS = 64
LIVE_PARITY_ITEMS = 16
# The live loop times fewer runs: at least this many, for at least this long (pairs of runs when a
# pruned model is timed against the dense one: enough blocks for the speedup's interval). The
# interval says how sure a figure is; ``evaluate`` and Export time the full MIN_RUNS / MIN_SECONDS.
LIVE_RUNS = 36
LIVE_SECONDS = 0.1
# Bounds for big models (a ViT-B/16 is 17.6 GMACs per item): score at most this much work...
EVALUATION_BUDGET_MACS = 2.5e11
MIN_EVALUATION_ITEMS = 8
PARITY_BUDGET_MACS = 1e11
MIN_PARITY_ITEMS = 2
TIMING_BUDGET_MACS = 1.5e11  # ... and time fewer runs (at least MIN_BIG_RUNS) when the usual count costs more
MIN_BIG_RUNS = 8


@dataclass(frozen=True)
class Settings:
    """How to measure: items per timed run, ORT threads, INT8 mode (None for FP32), live or full timing."""

    batch_size: int = 1
    threads: int = 2
    quantize: str | None = None
    live: bool = True
    kind: str = "logits"  # the model's output: logits, embedding, causal or outputs (see ModelHandle.output_kind)
    outputs: tuple = ()   # the layout of a many-output model (see core.outputs)
    metric: object = None  # the user's own metric (core.metric.Metric), reported under 'metrics'

    def timing(self, macs: int | None = None) -> dict:
        """Timed runs and seconds; fewer runs for a model whose usual count would exceed TIMING_BUDGET_MACS."""
        runs, seconds = (LIVE_RUNS, LIVE_SECONDS) if self.live else (measure.MIN_RUNS, measure.MIN_SECONDS)
        if macs and macs * self.batch_size * runs > TIMING_BUDGET_MACS:
            runs = max(MIN_BIG_RUNS, int(TIMING_BUDGET_MACS // (macs * self.batch_size)))
            seconds = 0.0
        return {"min_runs": runs, "min_seconds": seconds}

    def parity_items(self, macs: int | None = None) -> int:
        items = LIVE_PARITY_ITEMS if self.live else PARITY_ITEMS
        return items if not macs else max(MIN_PARITY_ITEMS, min(items, int(PARITY_BUDGET_MACS // macs)))


def evaluation_items(macs: int | None, available: int) -> int:
    """How many test items to score: all of them, unless that exceeds EVALUATION_BUDGET_MACS."""
    if not macs:
        return available
    return min(available, max(MIN_EVALUATION_ITEMS, int(EVALUATION_BUDGET_MACS // macs)))


_SERIALS = itertools.count()


class Baseline:
    """The dense model, measured once: its exported graph, state, logits on the data and metrics."""

    def __init__(self, handle: ModelHandle, data: Dataset, settings: Settings):
        self.serial = next(_SERIALS)  # which dense measurement this is (reports are keyed on it)
        if handle.module is None:
            self.artifact = onnx_artifact(handle)
        else:
            module = handle.module
            example = torch.from_numpy(np.ascontiguousarray(data.x_test[:1]))
            self.artifact = measure.Artifact(export_onnx(module, example), module, measure.weight_counts(module),
                                      measure.total_macs(module, example))
        self.template = onnx.load_from_string(self.artifact.model_bytes)
        self.spans, self._patch_lock = None, threading.Lock()  # initializer positions inside the bytes (patched)
        self.state = None if handle.module is None else {
            key: tensor.detach().clone() for key, tensor in handle.module.state_dict().items()}
        self.blocks = 0 if handle.module is None else _removable_count(handle.module, example)
        self.data = data.head(evaluation_items(self.artifact.macs, len(data.x_test)))  # what gets scored
        self.session, session_ms = measure.create_session(self.artifact.model_bytes, settings.threads)
        self.logits = measure.run_batched(self.session, self.data.x_test, scoring_batch(self.artifact.macs))
        self.metrics = measure_all(self.artifact, self.data, settings, reference=None,
                                session=(self.session, session_ms), logits=self.logits)
        self.speed = DenseSpeed(self.artifact.module, self.data.x_test)  # language models only

    def patched(self, state: dict) -> bytes | None:
        """The dense graph's bytes with ``state``'s weights written over its initializers (None: cannot)."""
        with self._patch_lock:
            if self.spans is None:  # found once, on the first plan that needs it
                self.spans = float_spans(self.template, self.artifact.model_bytes)
        return patched_weights(self.artifact.model_bytes, self.spans, state)


def _removable_count(module, example) -> int:
    """How many blocks of the dense model a depth plan could remove (0 when the graph cannot be traced)."""
    try:
        return len(removable_blocks(module, example))
    except Exception:  # a model whose forward pass cannot run with gradients still measures
        return 0


def measure_all(artifact: measure.Artifact, data: Dataset, settings: Settings, reference: np.ndarray | None,
             session=None, logits: np.ndarray | None = None, reference_session=None) -> dict:
    """All metrics of one artifact on ``data``: the last stage of core.deploy.progressive.metric_stages."""
    return last(metric_stages(artifact, data, settings, reference, session, logits, reference_session))


class DenseSpeed:
    """The dense model's KV-cache session and its prefill and decode figures, made once on first use.

    ``module`` is the dense model (prunelab's TokenModel), ``windows`` the test windows whose first
    PROMPT_TOKENS tokens are the prompt. Safe to share between threads.
    """

    def __init__(self, module: nn.Module | None, windows: np.ndarray):
        self.module, self.windows = module, windows
        self.generator: Generator | None = None
        self.figures: dict | None = None
        self._lock = threading.Lock()

    def session(self, threads: int, batch_size: int, live: bool) -> Generator:
        """The dense KV-cache session (exported, and its figures timed against a twin, on first use)."""
        with self._lock:
            if self.generator is None:
                self.prompt = prompt_for(self.windows, batch_size)
                self.new_tokens = new_tokens_for(self.module, self.prompt.shape[1])
                model_bytes = export_cached(self.module)
                self.generator = Generator(model_bytes, threads)
                twin = Generator(model_bytes, threads)
                self.figures = dense_generation(self.generator, twin, self.prompt, self.new_tokens, live)
        return self.generator

    def compare(self, pruned: nn.Module | None, threads: int, batch_size: int, live: bool,
                int8: bool = False) -> dict:
        """The figures of ``pruned`` with their paired speedup over the dense FP32 model; None (a graph
        that runs the dense kernels: no plan, or new weight values only) gets the dense figures at 1.00x.
        ``int8``: ``pruned``'s KV-cache graph is quantized first (``quantized`` names the mode)."""
        dense = self.session(threads, batch_size, live)
        if pruned is None:
            same = {"p50": 1.0, "low": 1.0, "high": 1.0, "measurable": False, "pairs": 0, "same_kernels": True}
            return dict(self.figures, speedup={"prefill": same, "decode": same})
        other = Generator(int8_cached(pruned) if int8 else export_cached(pruned), threads)
        figures = compared_generation(dense, other, self.prompt, self.new_tokens, live)
        return dict(figures, quantized=INT8_MODE) if int8 else figures

