"""Measurements on the deployed artifact: ONNX Runtime sessions, latency, accuracy, sizes and counts.

Every function here takes plain values (model bytes, arrays, a module) and returns plain values;
core.deploy.evaluate combines them into a report and decides what to cache.
"""
from __future__ import annotations

import contextlib
import gc
import math
import threading
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from core.deploy import fidelity
from core.errors import PrunelabError, error_line
from core.inspect import count_macs, prunable_layers
from core.outputs import flat
from core.outputs import quality as output_quality

# Full measurement (CLI, API): at least this many timed runs and this many seconds.
MIN_RUNS = 30
MIN_SECONDS = 0.5
WARMUP_RUNS = 5
# Latency runs of different callers never overlap, so one measurement does not slow another.
_TIMING_LOCK = threading.Lock()


@contextlib.contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off while runs are timed, as ``timeit`` does: in a process
    holding torch, one full collection holds every Python thread for 0.2-0.3 s and would land in one run."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def timing_lock():
    """Hold the timing lock (no other measurement runs meanwhile) with the collector paused."""
    with _TIMING_LOCK, _collector_paused():
        yield


@dataclass
class Artifact:
    """One model to measure: its ONNX bytes and, when it has one, the torch module it came from."""

    model_bytes: bytes
    module: torch.nn.Module | None
    counts: dict
    macs: int | None
    quantized: bool = False
    timings_ms: dict = field(default_factory=dict)  # prune, export, quantize: where a plan change spends time
    same_graph: bool = False  # the dense model's graph with other weight values (the same kernels run)


def session_options(threads: int = 2):
    """ORT SessionOptions: explicit intra-op threads, all graph optimizations, no spinning threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def create_session(model_bytes: bytes, threads: int = 2):
    """An ORT CPU session for ``model_bytes`` and its creation time in ms.

    Raises PrunelabError in one line when ONNX Runtime refuses the model.
    """
    started = time.perf_counter()
    try:
        session = ort.InferenceSession(model_bytes, session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own Fail/InvalidGraph/... types
        raise PrunelabError(f"ONNX Runtime cannot load the model: {error_line(error)[:300]}") from None
    return session, (time.perf_counter() - started) * 1000.0


def run_batched(session, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Outputs of ``session`` for all of ``x``, computed ``batch_size`` items at a time."""
    name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0] if session.get_inputs()[0].shape else None
    if isinstance(fixed, int) and fixed > 0:  # a graph exported with a fixed batch size
        batch_size = fixed
    outputs = []
    for start in range(0, len(x), batch_size):
        try:
            chunk = x[start:start + batch_size]
            every = session.run(None, {name: np.ascontiguousarray(chunk)})
        except Exception as error:  # shape or type mismatch with the user's data
            raise PrunelabError(f"ONNX Runtime cannot run the model on the data: {error_line(error)[:300]}") from None
        outputs.append(np.concatenate([value.reshape(len(chunk), -1) for value in every], axis=1))
    return np.concatenate(outputs)  # every output side by side, as core.outputs.flat lays them


def latency(session, example: np.ndarray, min_runs: int = MIN_RUNS, min_seconds: float = MIN_SECONDS,
            max_seconds: float | None = None) -> dict:
    """Latency of one ``session.run`` on ``example`` after a warm-up.

    Times at least ``min_runs`` runs and at least ``min_seconds``, stopping at ``max_seconds``
    (if given) once ``min_runs`` are done. Returns ``{"latency_ms": {mean, p50, p90, p99},
    "throughput": items per second, "runs": n}``.
    """
    return paired_latency([session], example, min_runs, min_seconds, max_seconds)[0]


def paired_latency(sessions: list, example: np.ndarray, min_runs: int = MIN_RUNS, min_seconds: float = MIN_SECONDS,
                   max_seconds: float | None = None) -> list[dict]:
    """Latency of several sessions timed in alternation, one run each in turn.

    On a shared machine, load comes and goes; alternating makes it fall on every session alike,
    so ratios between them (the speedup) are measured in one run. Each session gets at least
    ``min_runs`` runs; together they take at least ``min_seconds``. Returns one dict per session,
    shaped as ``latency`` returns.
    """
    times = paired_times(sessions, example, min_runs, min_seconds, max_seconds)
    return [latency_summary(record, len(example)) for record in times]


def paired_times(sessions: list, example: np.ndarray, min_runs: int = MIN_RUNS, min_seconds: float = MIN_SECONDS,
                 max_seconds: float | None = None, warmup: int = WARMUP_RUNS) -> list[np.ndarray]:
    """The milliseconds of every timed run of each session, run in alternation (see ``paired_latency``),
    after ``warmup`` untimed runs of each (0 for sessions that already ran).

    The order turns around every round (A B, B A, ...), so running first or second favours no session.
    """
    feeds = [{session.get_inputs()[0].name: np.ascontiguousarray(example)} for session in sessions]
    times: list[list[float]] = [[] for _ in sessions]
    order = list(range(len(sessions)))
    with _TIMING_LOCK, _collector_paused():
        for session, feed in zip(sessions, feeds):
            for _ in range(warmup):
                session.run(None, feed)
        started = time.perf_counter()
        while True:
            for index in order:
                before = time.perf_counter()
                sessions[index].run(None, feeds[index])
                times[index].append(time.perf_counter() - before)
            order.reverse()
            elapsed = time.perf_counter() - started
            if len(times[0]) >= min_runs and (elapsed >= min_seconds
                                              or (max_seconds is not None and elapsed >= max_seconds)):
                break
    return [np.asarray(record) * 1000.0 for record in times]


# A speedup counts as measured only when its interval excludes 1 and it is at least this far from 1
# (on a CPU shared with other programs, smaller differences come and go between reloads).
SPEEDUP_FLOOR = 0.10


def speedup(reference_ms: np.ndarray, ms: np.ndarray) -> dict:
    """The speedup of one model over a reference from runs timed in alternation.

    Each pair of neighbouring runs gives one ratio (reference / model); the speedup is their
    median. Load on a shared machine comes in bursts, so neighbouring pairs are not independent:
    the interval is a distribution-free 95% interval of the median (binomial order statistics)
    over the medians of blocks of about sqrt(n) consecutive pairs. ``measurable`` is False when
    the interval holds 1 or the median is within SPEEDUP_FLOOR of 1: the difference is run-to-run
    noise. Returns ``{"p50", "low", "high", "measurable", "pairs", "reference_p50"}``, the last the
    reference's median time in these same runs (ms), to set beside the model's.
    """
    ratios = np.asarray(reference_ms, dtype=float) / np.asarray(ms, dtype=float)  # (pairs,)
    block = max(1, int(round(np.sqrt(len(ratios)))))
    medians = np.sort([np.median(ratios[start:start + block])
                       for start in range(0, len(ratios) - block + 1, block)])  # (blocks,)
    rank = order_rank(len(medians))
    p50, low, high = float(np.median(ratios)), float(medians[rank]), float(medians[len(medians) - 1 - rank])
    measurable = not (low <= 1.0 <= high) and abs(p50 - 1.0) >= SPEEDUP_FLOOR
    return {"p50": p50, "low": low, "high": high, "measurable": bool(measurable), "pairs": int(len(ratios)),
            "reference_p50": float(np.median(reference_ms))}


def order_rank(count: int, confidence: float = 0.95) -> int:
    """The 0-based rank r whose order statistics (r, count-1-r) cover the median with ``confidence``
    (0, the extremes, when ``count`` is too small for it)."""
    tail = (1.0 - confidence) / 2.0

    def below(rank: int) -> float:  # P(at most rank of count values fall below the median)
        return sum(math.comb(count, index) for index in range(rank + 1)) / 2.0 ** count

    rank = 0
    while rank + 1 < count / 2 and below(rank + 1) <= tail:
        rank += 1
    return rank


def latency_summary(milliseconds: np.ndarray, items: int) -> dict:
    """Mean and percentiles of timed runs (ms), throughput for ``items`` per run, and the run count."""
    p50, p90, p99 = np.percentile(milliseconds, [50, 90, 99])
    mean = float(milliseconds.mean())
    return {"latency_ms": {"mean": mean, "p50": float(p50), "p90": float(p90), "p99": float(p99)},
            "throughput": float(items / (mean / 1000.0)) if mean > 0 else None, "runs": len(milliseconds)}


def quality(logits: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None,
            kind: str = "logits", inputs: np.ndarray | None = None, text: bool = False, layout: tuple = (),
            stride: int | None = None) -> dict:
    """How good the outputs are: against ``labels`` when there are any, and against the ``reference``
    (dense) outputs always (None: these are the dense outputs).

    Logits: top-1 accuracy and cross-entropy loss (None without labels), top-1 ``agreement``,
    ``output_error`` and ``kl`` (see core.deploy.fidelity) and ``classes_predicted``; ``label`` names
    the headline figure, 'accuracy' or 'agreement'. Embeddings (``kind="embedding"``): ``cosine``
    (the headline), ``cosine_p5`` and ``neighbour_agreement``, which ``agreement`` repeats. Causal
    language models (``kind="causal"``): the windows of token ids ``inputs`` are their own labels;
    perplexity when they are real ``text``, windows starting every ``stride`` tokens (see
    core.deploy.fidelity.next_token_quality). Many outputs
    (``kind="outputs"``, their ``layout``): figures per output (see core.outputs.quality).
    """
    if kind == "outputs":
        return output_quality(logits, reference, layout)
    if kind == "causal":
        return fidelity.next_token_quality(logits, inputs, reference, text, stride)
    if kind == "embedding":
        values = fidelity.embedding_fidelity(logits, reference)
        return {"accuracy": None, "loss": None, "agreement": values["neighbour_agreement"], **values,
                "label": "cosine"}
    predicted = logits.argmax(axis=1)
    agreement = 1.0 if reference is None else float((predicted == reference.argmax(axis=1)).mean())
    extra = {**fidelity.output_fidelity(logits, reference), "classes_predicted": fidelity.classes_predicted(logits)}
    if labels is None:
        return {"accuracy": None, "loss": None, "agreement": agreement, "label": "agreement", **extra}
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    if labels.max(initial=0) >= logits.shape[1] or labels.min(initial=0) < 0:
        raise PrunelabError(f"the labels go up to {int(labels.max())} but the model has {logits.shape[1]} outputs")
    loss = float(-log_probabilities[np.arange(len(labels)), labels].mean())
    return {"accuracy": float((predicted == labels).mean()), "loss": loss, "agreement": agreement,
            "label": "accuracy", **extra}


EXACT_COMPRESSION_BYTES = 32 << 20   # larger files get a sampled estimate (deflating 350 MB takes ~20 s)
SAMPLE_CHUNKS = 16
SAMPLE_CHUNK_BYTES = 1 << 20


def sizes(model_bytes: bytes) -> dict:
    """The file size and its deflate-compressed size (what unstructured zeros really save).

    Files over EXACT_COMPRESSION_BYTES are estimated from SAMPLE_CHUNKS evenly spaced 1 MB chunks
    (``compressed_estimated`` is then True).
    """
    if len(model_bytes) <= EXACT_COMPRESSION_BYTES:
        return {"onnx_bytes": len(model_bytes), "compressed_bytes": len(zlib.compress(model_bytes, 6)),
                "compressed_estimated": False}
    step = len(model_bytes) // SAMPLE_CHUNKS
    view = memoryview(model_bytes)
    compressed = sum(len(zlib.compress(view[start:start + SAMPLE_CHUNK_BYTES], 6))
                     for start in range(0, step * SAMPLE_CHUNKS, step))
    ratio = compressed / (SAMPLE_CHUNKS * SAMPLE_CHUNK_BYTES)
    return {"onnx_bytes": len(model_bytes), "compressed_bytes": int(round(ratio * len(model_bytes))),
            "compressed_estimated": True}


def weight_counts(module: nn.Module) -> dict:
    """Parameter counts: all, nonzero, prunable, nonzero prunable, and sparsity among prunable weights."""
    nonzeros = {id(parameter): _nonzero(parameter) for parameter in module.parameters()}  # each tensor once
    params = sum(parameter.numel() for parameter in module.parameters())
    weights = [layer.weight for layer in prunable_layers(module)]
    prunable = sum(weight.numel() for weight in weights)
    prunable_nonzero = sum(nonzeros[id(weight)] if id(weight) in nonzeros else _nonzero(weight) for weight in weights)
    return {"params": int(params), "nonzero_params": int(sum(nonzeros.values())), "prunable_params": int(prunable),
            "nonzero_prunable_params": int(prunable_nonzero),
            "sparsity": 1.0 - prunable_nonzero / prunable if prunable else 0.0}


def _nonzero(tensor: torch.Tensor) -> int:
    """Nonzero entries; counted by numpy for CPU float32 tensors (single-threaded, so it stays fast on a busy
    machine, as core.prune.unstructured's selection does)."""
    with torch.no_grad():
        if tensor.device.type == "cpu" and tensor.dtype == torch.float32 and tensor.is_contiguous():
            return int(np.count_nonzero(tensor.detach().numpy()))
        return int(torch.count_nonzero(tensor))


def total_macs(module: nn.Module, example_input: torch.Tensor) -> int | None:
    """Multiply-accumulates per item of the whole forward pass (dense kernels: zeros still count),
    attention matmuls included (see core.inspect.count_macs); None when nothing countable runs."""
    return count_macs(module, example_input) or None


def torch_outputs(module: nn.Module, x: np.ndarray) -> np.ndarray:
    """The module's outputs for ``x`` (numpy in, numpy out), for the parity check."""
    inputs = torch.from_numpy(np.ascontiguousarray(x))
    with torch.no_grad():
        try:
            output = module(inputs)
        except (AssertionError, RuntimeError):  # a .pt2 program traced for one batch size
            return np.concatenate([flat(module(item[None]), 1) for item in inputs])
    return flat(output, len(x))
