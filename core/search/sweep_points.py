"""The points of a sensitivity sweep as jobs that any process can measure (see core.search.parallel).

A job is ``(name, level)``: the layer (unstructured) or coupled group leader (channel) pruned
alone at ``level``, or ``(BASELINE, 0.0)`` for the dense model. Every process builds the same
SweepState from the model and the sweep's settings, so a point measured on a worker equals the
one measured serially: the same private copy of the model, the same scored items, the same
criterion evidence (gathered once for all layers with seed 0), the same BatchNorm re-estimation.
Unstructured points threshold the layer's scores (computed once per layer) and write the masked
weights into the private copy, then restore them; channel points apply a one-group plan with the
engine and also time the exported graph on ONNX Runtime with one thread.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import pickle
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.deploy.measure import total_macs
from core.errors import PrunelabError
from core.outputs import flat, quality, swept_label
from core.prune import batchnorm
from core.sources import ModelHandle

BASELINE = "(dense)"
BLOCK = "(block) "  # a job name for the model without one whole block: BLOCK + the block name
LATENCY_RUNS = 30
LATENCY_SECONDS = 0.05
LATENCY_THREADS = 1
# Quality figures a language model's points carry without a metric of its own: name -> its value at a point.
# Lower is better for each, so quality_of negates them and their "drop" is a rise.
LOWER_IS_BETTER = {"perplexity": lambda point: math.exp(point["loss"])}
SCORE_BATCH = 64                 # smaller batches stay in cache: 0.88 s vs 1.4 s for 359 items on digits-resnet


def has_perplexity(handle: ModelHandle) -> bool:
    """True for a causal language model scored on text: on random token ids its loss is against the dense
    model's own choices, not a perplexity."""
    return handle.output_kind == "causal" and not handle.data.synthetic


def quality_of(point: dict, quality: str | None) -> float:
    """A point's quality figure, higher being better: accuracy (None), minus a LOWER_IS_BETTER figure such as
    perplexity, or the named number of the model's own metric."""
    if quality is None:
        return point["accuracy"]
    if quality in LOWER_IS_BETTER:
        return -LOWER_IS_BETTER[quality](point)
    return point["metrics"][quality]


class Scorer:
    """Accuracy (or agreement) and loss of a module on one split, in batches of SCORE_BATCH.

    Without labels the dense model's top-1 predictions serve as labels, so the "accuracy" is the
    agreement with the dense model and the loss is the cross-entropy against those predictions.
    For an embedding model (``handle.output_kind == "embedding"``) the "accuracy" is the mean cosine
    similarity to the dense embeddings (label 'cosine') and the loss is one minus it. For a causal
    language model (``"causal"``) the "accuracy" is the next-token top-1 agreement with the dense
    model at every position and the loss is the next-token cross-entropy on the text (the log of
    its perplexity; against the dense model's choices when the ids are random).
    A model returning several tensors (``"outputs"``, e.g. a detector) is scored against the dense
    model's outputs with evaluate's headline (core.outputs.quality): the "accuracy" is the agreement
    where an output looks like logits, else the share of the top detections kept, else one minus the
    largest relative output error (label 'output match'); the loss is that largest output error.
    A model with its own metric (``handle.metric``, core.metric.Metric) also gets that metric's
    named numbers on the same outputs and items (``figures``).
    """

    def __init__(self, handle: ModelHandle, split: str = "val", max_items: int | None = None, reason: str = ""):
        x, labels = split_arrays(handle, split)
        available = len(x)
        count = available if max_items is None else max(1, min(int(max_items), available))
        self.split, self.items, self.available, self.reason = split, count, available, reason
        self.inputs = torch.from_numpy(np.ascontiguousarray(x[:count]))
        self.metric, self.layout = handle.metric, handle.outputs
        self.x, self.y = x[:count], None if labels is None else labels[:count]
        self.embedding = handle.output_kind == "embedding"
        self.causal = handle.output_kind == "causal"
        self.many = handle.output_kind == "outputs"
        if self.many:
            self.targets = self._predict(handle.module).numpy()
            self.label = swept_label(self.layout)
        elif self.causal:
            self.label, self.targets = "agreement", self._next_token(handle.module).argmax(-1)
            self.text = None if handle.data.synthetic else self.inputs[:, 1:]
        elif self.embedding:
            self.label, self.targets = "cosine", F.normalize(self._predict(handle.module), dim=1)
        elif labels is not None:
            self.label, self.targets = "accuracy", torch.from_numpy(labels[:count])
        else:
            self.label, self.targets = "agreement", self._predict(handle.module).argmax(1)

    def _predict(self, module: nn.Module) -> torch.Tensor:
        """The outputs on the scored items; many outputs laid side by side per item (core.outputs.flat)."""
        parts = []
        with torch.no_grad():
            for start in range(0, len(self.inputs), SCORE_BATCH):
                batch = self.inputs[start:start + SCORE_BATCH]
                output = module(batch)
                parts.append(torch.from_numpy(flat(output, len(batch))) if self.many else output)
        return torch.cat(parts)

    def _next_token(self, module: nn.Module) -> torch.Tensor:
        """Next-token logits ``(windows, context - 1, vocabulary)`` of a causal language model."""
        windows, context = self.inputs.shape
        return self._predict(module).reshape(windows, context, -1)[:, :-1]

    def figures(self, module: nn.Module) -> dict:
        """``{"accuracy", "loss"}`` of ``module`` on the split, and ``"metrics"`` with the model's own metric."""
        outputs = self._predict(module)
        accuracy, loss = self._score(outputs)
        found = {"accuracy": accuracy, "loss": loss}
        if self.metric is not None:
            found["metrics"] = self.metric(outputs.numpy(), self.layout, self.x, self.y)
        return found

    def __call__(self, module: nn.Module) -> tuple[float, float]:
        """``(accuracy, loss)`` of ``module`` on the split."""
        return self._score(self._predict(module))

    def _score(self, outputs: torch.Tensor) -> tuple[float, float]:
        if self.many:
            found = quality(outputs.numpy(), self.targets, self.layout)
            error = found["output_error"]
            return float(1.0 - error if found["label"] == "output_error" else found[found["label"]]), float(error)
        if self.causal:
            windows, context = self.inputs.shape
            logits = outputs.reshape(windows, context, -1)[:, :-1]  # next-token logits
            agreement = (logits.argmax(-1) == self.targets).float().mean().item()
            wanted = self.targets if self.text is None else self.text
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), wanted.reshape(-1)).item()
            return float(agreement), float(loss)
        if self.embedding:
            cosine = (F.normalize(outputs, dim=1) * self.targets).sum(1).mean().item()
            return float(cosine), float(1.0 - cosine)
        accuracy = (outputs.argmax(1) == self.targets).float().mean().item()
        loss = F.cross_entropy(outputs, self.targets).item()
        return float(accuracy), float(loss)

    def describe(self) -> dict:
        subset = None
        if self.items != self.available:
            subset = f"first {self.items} of {self.available}" + (f", {self.reason}" if self.reason else "")
        return {"split": self.split, "items": self.items, "available": self.available, "subset": subset,
                "torch_threads": torch.get_num_threads()}


def split_arrays(handle: ModelHandle, split: str):
    """``(inputs, labels or None)`` of one split of the handle's data; PrunelabError when it has none."""
    x = getattr(handle.data, f"x_{split}", None)
    if x is None:
        raise PrunelabError(f"the data '{handle.data.name}' has no {split} split")
    return x, getattr(handle.data, f"y_{split}")


def included_layers(module: nn.Module, example: torch.Tensor) -> list:
    """The layers a plan prunes by default: every prunable layer but the final classifier."""
    from core.inspect import prunable_layers
    from core.prune.plan import Plan
    from core.prune.resolved import resolve

    included = set(resolve(Plan(), module, example).included)
    return [layer for layer in prunable_layers(module) if layer.name in included]


def footprint(module: nn.Module, example: torch.Tensor, timed: bool = True) -> dict:
    """Parameters, MACs per item and ORT p50 latency (ms, batch 1, LATENCY_THREADS threads) of ``module``."""
    from core.deploy.export import export_onnx
    from core.deploy.measure import create_session, latency

    figures = {"params": int(sum(parameter.numel() for parameter in module.parameters())),
               "macs": total_macs(module, example) or 0}
    if timed:
        session, _ = create_session(export_onnx(module, example), threads=LATENCY_THREADS)
        timing = latency(session, example.numpy(), min_runs=LATENCY_RUNS, min_seconds=LATENCY_SECONDS)
        figures["latency_ms"] = timing["latency_ms"]["p50"]
    return figures


@dataclass
class SweepState:
    """What every point of one sweep reads, built once per process."""

    handle: ModelHandle          # with a private copy of the module: points write weights into it
    settings: dict
    scorer: Scorer
    recalibration: np.ndarray | None
    dense_statistics: dict
    layers: dict = field(default_factory=dict)      # unstructured: name -> layer of the private copy
    evidence: dict = field(default_factory=dict)    # unstructured: name -> criterion evidence
    scores: dict = field(default_factory=dict)      # unstructured: name -> scores, filled on first use


def prepare(handle: ModelHandle, settings: dict) -> SweepState:
    """The state of a sweep of ``handle`` with ``settings`` (granularity, criterion, split, max_items, reason)."""
    handle = dataclasses.replace(handle, module=copy.deepcopy(handle.module).eval())
    scorer = Scorer(handle, settings["split"], settings["max_items"], settings["reason"])
    state = SweepState(handle, settings, scorer, batchnorm.calibration_inputs(handle.data),
                       batchnorm.snapshot(handle.module))
    if settings["granularity"] == "unstructured":
        from core.prune.criteria import gather_evidence

        layers = included_layers(handle.module, handle.example_input(1))
        state.layers = {layer.name: layer for layer in layers}
        state.evidence = gather_evidence(handle.module, layers, settings["criterion"], handle.data, seed=0)
    return state


def pack(handle: ModelHandle, settings: dict) -> bytes:
    """The model (weights and architecture), its data and the settings as bytes for another process."""
    from core.search.parallel import pack_object

    return pack_object((handle, settings))


def build(payload: bytes, threads: int) -> SweepState:
    """The SweepState from ``pack``'s bytes (in a worker process; ``threads`` is already applied to torch)."""
    handle, settings = pickle.loads(payload)
    return prepare(handle, settings)


def describe_job(job: tuple) -> str:
    name, level = job
    if name.startswith(BLOCK):
        return f"without block {name[len(BLOCK):]}"
    return "dense model" if name == BASELINE else f"{name} at {level:.0%}"


def sweepable_blocks(handle: ModelHandle) -> list[str]:
    """The removable blocks a sweep measures one point for (none when the model cannot be traced)."""
    from core.prune.blocks import removable_blocks

    try:
        return removable_blocks(handle.module, handle.example_input(1))
    except Exception:  # a forward pass with gradients can fail where a plain one runs: no block points
        return []


def measure(state: SweepState, job: tuple) -> dict:
    """One point: ``{"accuracy", "loss"}``, ``"metrics"`` with the model's own metric (channel sweeps add params,
    MACs and latency_ms)."""
    name, level = job
    if name == BASELINE:
        return _baseline(state)
    if name.startswith(BLOCK):
        return _block_point(state, name[len(BLOCK):])
    if state.settings["granularity"] == "unstructured":
        return _unstructured_point(state, name, level)
    return _channel_point(state, name, level)


def _baseline(state: SweepState) -> dict:
    module = state.handle.module
    figures = state.scorer.figures(module)
    evaluated_on = state.scorer.describe()
    evaluated_on["batchnorm_items"] = 0 if state.recalibration is None or not batchnorm.batchnorm_layers(module) \
        else len(state.recalibration)
    point = {**figures, "label": state.scorer.label, "evaluated_on": evaluated_on}
    if state.settings["granularity"] == "channel" or state.settings.get("blocks"):
        point.update(footprint(module, state.handle.example_input(1)))
    return point


def _block_point(state: SweepState, block: str) -> dict:
    """The model without ``block`` (its skip path in its place): quality, MACs and ORT latency."""
    from core.prune.engine import apply_plan
    from core.prune.plan import Plan

    pruned = apply_plan(state.handle, Plan(sparsity=0.0, drop=[block])).module.eval()
    return {**state.scorer.figures(pruned), **footprint(pruned, state.handle.example_input(1))}


def _unstructured_point(state: SweepState, name: str, level: float) -> dict:
    from core.prune.criteria import weight_scores
    from core.prune.unstructured import layer_mask

    module, layer = state.handle.module, state.layers[name]
    if name not in state.scores:  # from the dense weights: every point restores them
        state.scores[name] = weight_scores(layer, state.settings["criterion"], state.evidence[name])
    original = layer.weight.detach().clone()
    try:
        with torch.no_grad():
            layer.weight.copy_(original * layer_mask(state.scores[name], level))
        if state.recalibration is not None:
            batchnorm.recalibrate(module, state.recalibration)
        figures = state.scorer.figures(module)
    finally:
        with torch.no_grad():
            layer.weight.copy_(original)
        batchnorm.restore(module, state.dense_statistics)
    return figures


def _channel_point(state: SweepState, leader: str, level: float) -> dict:
    from core.prune.engine import apply_plan
    from core.prune.plan import Plan

    plan = Plan(granularity="channel", criterion=state.settings["criterion"], sparsity=0.0, layers={leader: level})
    pruned = apply_plan(state.handle, plan).module.eval()
    return {**state.scorer.figures(pruned), **footprint(pruned, state.handle.example_input(1))}
