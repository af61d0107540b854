"""ONNX files as a model source: inspection and unstructured pruning of the graph's weight initializers.

An ONNX graph has no module structure, so its prunable layers are the initializers that feed the
weight input of a Conv, Gemm or MatMul node, named by the initializer name without ``.weight``.
Pruning writes zeros into those initializers and nothing else: the graph stays the same, which
is all an unstructured plan needs. Channel pruning and data-driven criteria need the PyTorch model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from core.deploy.measure import Artifact
from core.errors import PrunelabError
from core.inspect import weight_stats
from core.prune import criteria, unstructured
from core.prune.plan import Plan
from core.prune.resolved import resolve_names

# Node type -> (layer kind for a weight of that rank, index of the weight input).
WEIGHT_INPUTS = {"Conv": 1, "Gemm": 1, "MatMul": 1}


@dataclass
class OnnxPruneResult:
    """What pruning an ONNX graph did, shaped like the engine's PruneResult."""

    layer_sparsity: dict[str, float]
    notes: list[str] = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)
    kept: dict = field(default_factory=dict)  # channels kept per layer: none removed from a fixed graph
    dropped: list = field(default_factory=list)  # blocks removed whole: none from a fixed graph


def _layer_name(initializer_name: str) -> str:
    prefix, _, attribute = initializer_name.rpartition(".")
    return prefix if prefix and attribute == "weight" else initializer_name


def weight_initializers(model: onnx.ModelProto) -> dict[str, tuple[str, np.ndarray]]:
    """Layer name -> (initializer name, weight array) for every Conv/Gemm/MatMul weight, in graph order."""
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        index = WEIGHT_INPUTS.get(node.op_type)
        if index is None or len(node.input) <= index or node.input[index] not in initializers:
            continue
        name = node.input[index]
        array = numpy_helper.to_array(initializers[name])
        if array.ndim >= 2 and np.issubdtype(array.dtype, np.floating):
            found.setdefault(_layer_name(name), (name, array))
    return found


def _kind(op_rank: int) -> str:
    return "linear" if op_rank == 2 else f"conv{op_rank - 2}d"


def inspect_onnx(handle) -> dict:
    """The per-layer table of core.inspect.inspect_model for an ONNX source (macs unknown: None)."""
    model = onnx.load(str(handle.onnx_path))
    rows = []
    for layer, (_, weight) in weight_initializers(model).items():
        nonzero = int(np.count_nonzero(weight))
        rows.append({"name": layer, "kind": _kind(weight.ndim), "shape": list(weight.shape),
                     "params": int(weight.size), "nonzero": nonzero, "sparsity": 1.0 - nonzero / weight.size,
                     "macs": None, "stats": weight_stats(weight)})
    counts = initializer_counts(model)
    totals = {"layers": len(rows), "params": counts["params"], "prunable_params": counts["prunable_params"],
              "nonzero_prunable_params": counts["nonzero_prunable_params"], "sparsity": counts["sparsity"],
              "macs": None, "batchnorm_layers": 0}  # the graph's weights are pruned as they are: nothing re-estimated
    return {"layers": rows, "totals": totals}


def initializer_counts(model: onnx.ModelProto) -> dict:
    """The parameter counts of core.deploy.measure.weight_counts, read from the graph's float initializers."""
    params = nonzero = 0
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if np.issubdtype(array.dtype, np.floating):
            params += array.size
            nonzero += int(np.count_nonzero(array))
    weights = [weight for _, weight in weight_initializers(model).values()]
    prunable = sum(weight.size for weight in weights)
    prunable_nonzero = sum(int(np.count_nonzero(weight)) for weight in weights)
    return {"params": int(params), "nonzero_params": int(nonzero), "prunable_params": int(prunable),
            "nonzero_prunable_params": int(prunable_nonzero),
            "sparsity": 1.0 - prunable_nonzero / prunable if prunable else 0.0}


def onnx_artifact(handle):
    """The ONNX source as a measurable artifact (no torch module, so no parity check or MACs)."""

    model = onnx.load(str(handle.onnx_path))
    return Artifact(model.SerializeToString(), None, initializer_counts(model), None)


def _scores(weight: np.ndarray, criterion: str, seed: int) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(weight, copy=True))
    return criteria.criterion(criterion)(tensor, criteria.Evidence(generator=torch.Generator().manual_seed(seed)))


def onnx_criteria() -> list[str]:
    """Criteria an ONNX graph can take: those that read nothing but each weight."""
    return [name for name, entry in criteria.CRITERIA.items() if not entry.needs and entry.weight_score is not None]


def _check(plan: Plan, layers: list[str]) -> list[str]:
    """The included layer names; PrunelabError for what an ONNX graph cannot do or a name it lacks."""
    if plan.granularity != "unstructured":
        raise PrunelabError(f"an ONNX source supports unstructured plans only, got granularity '{plan.granularity}'")
    if plan.criterion not in onnx_criteria():
        raise PrunelabError(f"criterion '{plan.criterion}' needs the PyTorch model; on an ONNX source use "
                            f"{', '.join(onnx_criteria())}")
    return list(resolve_names(plan, layers, layers[-1] if layers else None).included)


def prune_initializers(model: onnx.ModelProto, plan: Plan) -> tuple[onnx.ModelProto, OnnxPruneResult]:
    """A copy of ``model`` with the plan's zeros written into its weight initializers."""
    weights = weight_initializers(model)
    included = _check(plan, list(weights))
    scores = {name: _scores(weights[name][1], plan.criterion, plan.seed + index)
              for index, name in enumerate(included)}
    targets = plan.layer_targets
    if plan.scope == "global":
        masks = unstructured.global_masks({n: s for n, s in scores.items() if n not in targets}, plan.sparsity)
    else:
        masks = {}
    for name, score in scores.items():
        if name not in masks:
            masks[name] = unstructured.layer_mask(score, targets.get(name, plan.sparsity))
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    by_name = {tensor.name: tensor for tensor in pruned.graph.initializer}
    sparsity = {}
    for layer, (initializer_name, weight) in weights.items():
        if layer in masks:
            weight = weight * masks[layer].numpy().astype(weight.dtype)
            by_name[initializer_name].CopyFrom(numpy_helper.from_array(weight, initializer_name))
        sparsity[layer] = 1.0 - np.count_nonzero(weight) / weight.size
    return pruned, OnnxPruneResult(sparsity)


def prune_onnx(handle, template: onnx.ModelProto, plan: Plan, data=None):
    """The pruned artifact of an ONNX source and what was done, for core.deploy.evaluate."""

    pruned, result = prune_initializers(template, plan)
    return Artifact(pruned.SerializeToString(), None, initializer_counts(pruned), None, same_graph=True), result
