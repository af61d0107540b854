"""Progressive measurement: one artifact's metrics in stages, the last of which is the full measurement.

``metric_stages`` yields metrics dicts shaped like the final one. The first comes after a first
slice of the test items is scored and a short paired run is timed (with their 95% intervals);
the next ones score more items; the last adds the full timed runs and the parity check, and is
exactly what a one-shot measurement gives (``core.deploy.evaluate`` takes it and nothing else:
the items are scored in the same batches, so the outputs are the same bits). Every stage says how
far it has got in ``progress``: ``{"items", "of", "runs", "final"}``.

A plan that changes only weight values keeps the dense graph and ONNX Runtime runs the same
dense kernels on it (no sparse execution on CPU), so its latency is the dense model's and its
speedup 1.00x (``speedup["same_kernels"]``): timing the two again would only measure the noise.
When such a plan's items are scored in at most SINGLE_STAGE_MACS (the digits demos: 360 items, a
few tenths of a second), the first stage is the final one: partial figures would only delay it.

``cancelled`` (a callable) is checked between stages and between scored batches; when it returns
True the generator raises ``Cancelled`` (a newer plan replaced this one).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from core.deploy import measure
from core.deploy.notes import PARITY_TOLERANCE
from core.outputs import interval as output_interval
from core.outputs import parity as output_parity

ACCURACY_BATCH = 512
SCORING_BATCH_MACS = 2e10  # items per ONNX Runtime call when scoring: fewer for big models, bounding activation memory
FIRST_ITEMS_MACS = 2e10  # the first slice scored is about this much work (minilm: 28 items, a ResNet-50: 5)
MIN_FIRST_ITEMS = 4
FIRST_RUNS = 8  # pairs of runs in the first, short timing ...
FIRST_TIMING_MACS = 1.5e10  # ... fewer for a big model, at least MIN_FIRST_RUNS
MIN_FIRST_RUNS = 3
REFRESH_SECONDS = 0.4  # at most one refined stage this often while the items are scored
SINGLE_STAGE_MACS = 1e11  # a graph with the dense kernels (nothing to time) scored in this much work: one stage
Z95 = 1.959964


class Cancelled(Exception):
    """The measurement was stopped between stages (a newer plan replaced it)."""


def scoring_batch(macs: int | None) -> int:
    """Items per ONNX Runtime call when scoring the test split (a ConvNeXt-T at 224x224: 4)."""
    return ACCURACY_BATCH if not macs else max(1, min(ACCURACY_BATCH, int(SCORING_BATCH_MACS // macs)))


def first_items(macs: int | None, batch: int, total: int) -> int:
    """The first slice of test items: about FIRST_ITEMS_MACS of work, whole scoring batches, at most ``total``."""
    wanted = MIN_FIRST_ITEMS if not macs else max(MIN_FIRST_ITEMS, int(FIRST_ITEMS_MACS // macs))
    return min(total, -(-wanted // batch) * batch)


def first_runs(macs: int | None, batch_size: int) -> int:
    if not macs:
        return FIRST_RUNS
    return max(MIN_FIRST_RUNS, min(FIRST_RUNS, int(FIRST_TIMING_MACS // (macs * batch_size))))


def quality_interval(logits: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None,
                     kind: str, outputs: tuple = (), label: str | None = None) -> dict | None:
    """The 95% interval of the headline quality figure over the items scored (None when it is exact:
    the dense model's agreement or cosine with itself). Accuracy and agreement: Wilson's score interval;
    cosine: the mean's normal interval; many outputs (``outputs``, headline ``label``): a bootstrap over
    items (core.outputs.interval). None for causal language models (their figures pool thousands of
    positions per item)."""
    if kind == "outputs":
        return output_interval(logits, reference, outputs, label)
    if kind == "causal":
        return None
    if kind == "embedding":
        if reference is None:
            return None
        unit = [vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
                for vectors in (logits.astype(np.float64), reference.astype(np.float64))]
        cosine = (unit[0] * unit[1]).sum(axis=1)  # (items,)
        half = Z95 * cosine.std(ddof=1) / np.sqrt(len(cosine)) if len(cosine) > 1 else 0.0
        return {"low": float(max(-1.0, cosine.mean() - half)), "high": float(min(1.0, cosine.mean() + half)),
                "items": len(cosine)}
    predicted = logits.argmax(axis=1)
    if labels is not None:
        hits = predicted == labels[:len(predicted)]
    elif reference is not None:
        hits = predicted == reference[:len(predicted)].argmax(axis=1)
    else:
        return None
    return {**_wilson(int(hits.sum()), len(hits)), "items": len(hits)}


def _wilson(successes: int, count: int) -> dict:
    if count == 0:
        return {"low": 0.0, "high": 1.0}
    share, z2 = successes / count, Z95 ** 2
    centre = (share + z2 / (2 * count)) / (1 + z2 / count)
    half = Z95 / (1 + z2 / count) * np.sqrt(share * (1 - share) / count + z2 / (4 * count ** 2))
    return {"low": float(max(0.0, centre - half)), "high": float(min(1.0, centre + half))}


def _beside(function, *args) -> Future:
    """``function(*args)`` on a thread of its own; ``.result()`` waits for it."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prunelab-beside")
    try:
        return pool.submit(function, *args)
    finally:
        pool.shutdown(wait=False)


def _example(x: np.ndarray, batch_size: int) -> np.ndarray:
    """``batch_size`` real items for the timed runs, repeated when the data has fewer."""
    repeats = -(-batch_size // len(x))
    return np.ascontiguousarray(np.concatenate([x] * repeats)[:batch_size]) if repeats > 1 else x[:batch_size]


@dataclass
class Carried:
    """What a progressive measurement has done so far, kept by its caller so that a measurement
    stopped part way can go on where it stopped: the ONNX Runtime session (and its creation ms),
    the outputs of the items scored (whole scoring batches, in order), the latest short timing and
    the file sizes being computed."""

    session: tuple | None = None
    parts: list = field(default_factory=list)
    timing: dict = field(default_factory=dict)
    sizes: Future | None = None


class _Stages:
    """The state of one progressive measurement (see ``metric_stages``)."""

    def __init__(self, artifact: measure.Artifact, data, settings, reference, dense: dict | None, carried: Carried):
        self.artifact, self.data, self.settings, self.reference = artifact, data, settings, reference
        self.dense = dense  # the dense metrics when the graph is the dense one (same kernels)
        self.batch = scoring_batch(artifact.macs)
        self.carried = carried
        self.parts: list[np.ndarray] = carried.parts  # grows in place: a stopped measurement keeps it
        self.sizes = {"onnx_bytes": len(artifact.model_bytes), "compressed_bytes": None,
                      "compressed_estimated": None}

    @property
    def timing(self) -> dict:
        return self.carried.timing

    @timing.setter
    def timing(self, value: dict) -> None:
        self.carried.timing = value

    @property
    def scored(self) -> int:
        return sum(len(part) for part in self.parts)

    def score(self, session, stop: int) -> None:
        """Score the test items from the last scored one up to ``stop`` (whole scoring batches)."""
        start = self.scored
        self.parts.append(measure.run_batched(session, self.data.x_test[start:stop], self.batch))

    def time_runs(self, sessions: list, reference_session, timing: dict) -> None:
        if self.dense is not None:  # the dense graph with other weight values: the dense kernels' latency
            self.timing = {key: self.dense[key] for key in ("latency_ms", "throughput", "runs")}
            self.timing["speedup"] = {"p50": 1.0, "low": 1.0, "high": 1.0, "measurable": False, "pairs": 0,
                                      "reference_p50": self.dense["latency_ms"]["p50"], "same_kernels": True}
            return
        fixed = sessions[0].get_inputs()[0].shape[0] if sessions[0].get_inputs()[0].shape else None
        example = _example(self.data.x_test, fixed if isinstance(fixed, int) and fixed > 0
                           else self.settings.batch_size)
        if reference_session is None:
            # Timed the way every pruned model is, in alternation with a second session (a twin of the same
            # graph): two ONNX Runtime sessions taking turns run slower than one alone.
            own_ms, _ = measure.paired_times(sessions, example, **timing)
            self.timing = measure.latency_summary(own_ms, len(example))
            return
        dense_ms, pruned_ms = measure.paired_times([reference_session, sessions[0]], example, **timing)
        self.timing = measure.latency_summary(pruned_ms, len(example))
        self.timing["speedup"] = {**measure.speedup(dense_ms, pruned_ms),
                                  "reference_p50": measure.latency_summary(dense_ms, len(example))["latency_ms"]["p50"]}

    def metrics(self, session_ms: float, final: bool) -> dict:
        """The figures so far, shaped like the final metrics; ``progress`` says how far they have got."""
        logits = np.concatenate(self.parts)
        count = len(logits)
        labels = None if self.data.y_test is None else self.data.y_test[:count]
        reference = None if self.reference is None else self.reference[:count]
        result = measure.quality(logits, labels, reference, self.settings.kind, self.data.x_test[:count],
                                 not self.data.synthetic, self.settings.outputs, self.data.stride)
        if self.settings.metric is not None:
            result["metrics"] = self.settings.metric(logits, self.settings.outputs, self.data.x_test[:count], labels)
        result["quality_interval"] = quality_interval(logits, labels, reference, self.settings.kind,
                                                      self.settings.outputs, result.get("label"))
        result.update(self.timing)
        result["session_ms"] = session_ms
        result.update(self.artifact.counts)
        result["macs"] = self.artifact.macs
        result.update(self.sizes)
        result.setdefault("max_abs_diff", None)
        result.setdefault("parity_ok", None)
        result["quantized"] = self.artifact.quantized
        result["progress"] = {"items": count, "of": len(self.data.x_test), "runs": self.timing.get("runs"),
                              "final": final}
        return result


def metric_stages(artifact: measure.Artifact, data, settings, reference: np.ndarray | None = None,
                  session=None, logits: np.ndarray | None = None, reference_session=None, dense: dict | None = None,
                  cancelled: Callable[[], bool] | None = None, carried: Carried | None = None) -> Iterator[dict]:
    """Metrics of ``artifact`` on ``data`` in stages (see the module docstring); the last one is final.

    ``reference`` are the dense outputs (None: this is the dense model); ``session`` a (session, ms)
    pair already made, ``logits`` its outputs on ``data`` already scored; with ``reference_session``
    the two models are timed in alternation and ``speedup`` holds the paired speedup. ``dense``
    (the dense metrics) says the graph is the dense one with new weight values: its latency is the
    dense model's. ``carried`` keeps what is done as it is done (the session, the items scored, the sizes):
    a measurement stopped part way and started again with the same ``carried`` goes on from there, its
    first stage at once. Raises Cancelled when ``cancelled()`` turns True, PrunelabError when ONNX Runtime
    refuses the model or the data.
    """
    stop = cancelled or (lambda: False)
    carried = carried if carried is not None else Carried()
    stages = _Stages(artifact, data, settings, reference, dense, carried)
    sizes = carried.sizes or _beside(measure.sizes, artifact.model_bytes)  # deflate frees the GIL: runs beside
    carried.sizes = sizes
    if carried.session is None:
        carried.session = session or measure.create_session(artifact.model_bytes, settings.threads)
    session, session_ms = carried.session
    total = len(data.x_test)
    single = dense is not None and artifact.macs is not None and artifact.macs * total <= SINGLE_STAGE_MACS
    if logits is not None:
        stages.parts.append(logits)
    elif single:
        pass  # scored below in one go, then the final stage
    elif stages.parts:  # a stopped measurement of this artifact, taken up again: its figures so far at once
        _sizes_if_done(stages, sizes)
        yield stages.metrics(session_ms, final=False)
    else:
        stages.score(session, first_items(artifact.macs, stages.batch, total))
        stages.time_runs([session], reference_session, {"min_runs": first_runs(artifact.macs, settings.batch_size),
                                                        "min_seconds": 0.0})
        _sizes_if_done(stages, sizes)
        yield stages.metrics(session_ms, final=False)
    refreshed = time.perf_counter()
    while stages.scored < total:
        _check(stop)
        stages.score(session, stages.scored + stages.batch)
        if not single and time.perf_counter() - refreshed >= REFRESH_SECONDS and stages.scored < total:
            _sizes_if_done(stages, sizes)
            yield stages.metrics(session_ms, final=False)
            refreshed = time.perf_counter()
    _check(stop)
    stages.sizes = sizes.result()  # done before the timed runs start, so it never slows them
    twin = None if reference_session is not None or dense is not None else \
        measure.create_session(artifact.model_bytes, settings.threads)[0]
    stages.time_runs([session] + ([twin] if twin else []), reference_session, settings.timing(artifact.macs))
    del twin
    final = stages.metrics(session_ms, final=True)
    _check(stop)
    final.update(_parity(artifact, data, settings, np.concatenate(stages.parts)))
    yield final


def _sizes_if_done(stages: _Stages, sizes: Future) -> None:
    if sizes.done():
        stages.sizes = sizes.result()


def _check(stop: Callable[[], bool]) -> None:
    if stop():
        raise Cancelled("a newer plan replaced this measurement")


def _parity(artifact: measure.Artifact, data, settings, logits: np.ndarray) -> dict:
    """The largest difference between the torch module's outputs and ONNX Runtime's on the first items."""
    if artifact.module is None:
        return {"max_abs_diff": None, "parity_ok": None}
    items = data.x_test[:settings.parity_items(artifact.macs)]
    expected = measure.torch_outputs(artifact.module, items)
    diff = float(np.abs(expected - logits[:len(items)]).max())
    found = {"max_abs_diff": diff, "parity_ok": diff <= PARITY_TOLERANCE * max(1.0, float(np.abs(expected).max()))}
    if settings.outputs:
        found["parity_outputs"] = output_parity(expected, logits[:len(items)], settings.outputs)
    return found


def last(stages: Iterator[dict]) -> dict:
    """The final stage of a progressive measurement (what a one-shot measurement returns)."""
    final = None
    for stage in stages:
        final = stage
    return final
