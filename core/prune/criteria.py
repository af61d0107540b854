"""Criteria: the one table of ways to rank weights and channels. A score never mutates anything.

A criterion turns one layer's weight, plus the evidence it declares it needs, into scores: one
per weight for unstructured and N:M plans (``criterion(weight, evidence)``), one per output
channel for channel plans (``criterion(weight, evidence, per="channel")``). Low scores are
pruned first. Selection (core.prune.unstructured, core.prune.nm, core.prune.channel) and
application live elsewhere; so does the looping over layers and coupled groups.

Adding a criterion is one entry in ``CRITERIA``; nothing else names it::

    def _movement(weight, evidence):            # |w * dL/dw|, shaped like the weight
        return evidence.gradient_score

    "movement": Criterion("movement", ("unstructured", "N:M"), _movement,
                          needs=frozenset({"gradients"}),
                          help="movement: weights the loss moves least go first"),

``needs`` is data: every caller asks the criterion, never its name. ``gather_evidence`` runs the
collector of each need in ``COLLECTORS`` (gradients, activations); "batchnorm" is read per channel
group from the BatchNorm that follows it (core.prune.channel), and where a group or a view has no
BatchNorm the criterion's ``fallback`` ranks it instead, with a note. A new kind of evidence is a
new ``Evidence`` field plus one entry in ``COLLECTORS``. "layer_inputs" marks a criterion that
prunes each layer itself from that layer's own inputs, taken layer by layer from the already
pruned model (SparseGPT's reconstruction: core.prune.calibrated); it has no score function.
``compare`` says where weights compete for a layer's target: the whole layer (or every layer,
in global scope) or each output row (Wanda's per-output groups). "mask_gradients" ranks whole units
(channel groups, heads) at once, so channel plans hand it to core.prune.oneshot; with "layer_inputs" as
well, each layer that reads heads or neurons then chooses its own from its inputs (core.prune.obs). Plans
validate their criterion against ``granularities``; the dashboard's help text is ``help``; plan export reads
``torch_pruning``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from core.data import Dataset
from core.errors import PrunelabError
from core.inspect import Layer

CALIBRATION_ITEMS = 64
CALIBRATION_BATCH = 16
# Evidence a criterion may declare it needs.
NEEDS = ("gradients", "activations", "batchnorm", "layer_inputs", "mask_gradients")
LAYER_INPUTS = "layer_inputs"
COMPARE = ("layer", "row")
KINDS = ("unstructured", "channel", "N:M")  # granularity kinds (core.prune.plan.granularity_kind)
BLOCK_SCORES = ("influence", "fisher")  # how a depth share ranks whole blocks (core.prune.depth.BlockRanking)


@dataclass
class Evidence:
    """What a criterion may read about one layer besides its weight."""

    gradient_score: torch.Tensor | None = None  # sum over batches of |w * grad|, shaped like the weight
    input_norm: torch.Tensor | None = None      # L2 norm of each input feature / channel over calibration data
    bn_weight: torch.Tensor | None = None       # gamma of the BatchNorm that follows (channel plans)
    generator: torch.Generator | None = field(default=None, repr=False)


Score = Callable[[torch.Tensor, Evidence], torch.Tensor]


def _rows(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], -1)  # (out_channels, in_channels * kernel elements)


@dataclass(frozen=True)
class Criterion:
    """One way to rank: ``criterion(weight, evidence, per="weight" | "channel") -> scores``.

    name: the plan's ``criterion`` value.
    granularities: the granularity kinds it ranks ('unstructured', 'channel', 'N:M').
    weight_score: ``(weight, evidence) -> scores`` shaped like the weight, or None (channels only).
    channel_score: ``(weight, evidence) -> one score per output channel``; None sums the weight
        scores of each output row.
    needs: evidence it reads besides the weight (a subset of NEEDS).
    fallback: the criterion that ranks a unit where this one's evidence does not exist (a channel
        group with no BatchNorm, an attention head).
    help: one line for the dashboard's glossary.
    torch_pruning: the equivalent Torch-Pruning importance, as Python text (plan export).
    compare: where weights compete for a layer's unstructured target: 'layer' or 'row' (each output row).
    layer_scope_only: why the criterion has no ranking across layers, so a plan refuses ``scope:
        global`` for it ('' : it has one).
    comparable: its scores are in the same units in every layer (a loss change), so global scope ranks
        them as they are, heads against heads and channels against channels, instead of dividing each
        group's scores by their mean.
    block_score: how a plan's ``depth`` share ranks removable blocks under this criterion: 'influence'
        (1 - cosine of a block's input and output) or 'fisher' (the Fisher information of a gate on the
        block's residual branch); read through core.prune.depth.BlockRanking.
    """

    name: str
    granularities: tuple[str, ...]
    weight_score: Score | None = None
    channel_score: Score | None = None
    needs: frozenset[str] = frozenset()
    fallback: str | None = None
    help: str = ""
    torch_pruning: str | None = None
    compare: str = "layer"
    layer_scope_only: str = ""
    comparable: bool = False
    block_score: str = "influence"

    def __post_init__(self) -> None:
        unknown = set(self.needs) - set(NEEDS) or set(self.granularities) - set(KINDS)
        unknown = unknown or {self.compare} - set(COMPARE) or {self.block_score} - set(BLOCK_SCORES)
        scores = self.weight_score is not None or self.channel_score is not None
        if unknown or not (scores or LAYER_INPUTS in self.needs):
            raise ValueError(f"criterion {self.name}: unknown need, granularity or comparison {sorted(unknown)}, "
                             f"or no score function")

    @property
    def prunes_layers(self) -> bool:
        """True when the criterion prunes each layer itself from its layer-by-layer inputs (no scores)."""
        return LAYER_INPUTS in self.needs

    def ranks(self, kind: str) -> bool:
        """Whether this criterion ranks weights at the granularity kind ``kind``."""
        return kind in self.granularities

    def __call__(self, weight: torch.Tensor, evidence: Evidence, per: str = "weight") -> torch.Tensor:
        if per == "channel":
            if self.channel_score is not None:
                return self.channel_score(weight, evidence)
            return _rows(self.weight_score(weight, evidence)).sum(1)
        if self.weight_score is None:
            raise PrunelabError(f"criterion '{self.name}' ranks channels only")
        return self.weight_score(weight, evidence)


def _random(weight: torch.Tensor, evidence: Evidence) -> torch.Tensor:
    return torch.rand(weight.shape, generator=evidence.generator)


def _require(value, name: str, criterion: str):
    if value is None:
        raise PrunelabError(f"criterion '{criterion}' needs {name}, which were not collected")
    return value


def _input_scale(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """The input norm broadcast to the weight's shape (grouped convolutions index their own group's inputs)."""
    in_per_group = weight.shape[1]
    groups = input_norm.numel() // in_per_group
    per_group = input_norm.reshape(groups, in_per_group)                       # (groups, in_per_group)
    scale = per_group.repeat_interleave(weight.shape[0] // groups, dim=0)      # (out_channels, in_per_group)
    return scale.reshape(*scale.shape, *([1] * (weight.ndim - 2)))


def _activation(weight: torch.Tensor, evidence: Evidence) -> torch.Tensor:
    norm = _require(evidence.input_norm, "input activations", "activation")
    return weight.abs() * _input_scale(weight, norm.to(weight.dtype))


def _taylor(weight: torch.Tensor, evidence: Evidence) -> torch.Tensor:
    return _require(evidence.gradient_score, "gradients", "taylor")


def _fisher(weight: torch.Tensor, evidence: Evidence) -> torch.Tensor:
    raise PrunelabError("criteria 'fisher' and 'obs' rank whole channel groups and heads of a channel plan")


def _fpgm(weight: torch.Tensor, evidence: Evidence) -> torch.Tensor:
    """Filters near the geometric median of the layer's filters are redundant: sum of distances to the others."""
    rows = _rows(weight).double()
    return torch.cdist(rows, rows).sum(dim=1).to(weight.dtype)


def _bn_scale(weight: torch.Tensor, evidence: Evidence) -> torch.Tensor:
    if evidence.bn_weight is None:
        raise PrunelabError("criterion 'bn_scale' needs a BatchNorm after the layer")
    return evidence.bn_weight.abs()


CRITERIA: dict[str, Criterion] = {criterion.name: criterion for criterion in (
    Criterion("l1", KINDS, lambda w, e: w.abs(), lambda w, e: _rows(w).abs().sum(1),
              help="l1: cut the weights (or channels) with the smallest absolute values",
              torch_pruning="tp.importance.MagnitudeImportance(p=1)"),
    Criterion("l2", KINDS, lambda w, e: w.abs(), lambda w, e: _rows(w).norm(dim=1),
              help="l2: like l1, by the sum of squares of each channel",
              torch_pruning="tp.importance.MagnitudeImportance(p=2)"),
    Criterion("random", KINDS, _random, lambda w, e: torch.rand(w.shape[0], generator=e.generator),
              help="random: cut at random (a baseline to compare against)",
              torch_pruning="tp.importance.RandomImportance()"),
    Criterion("taylor", KINDS, _taylor, needs=frozenset({"gradients"}),
              help="taylor: estimate each weight's effect on the loss from gradients on a few labelled items",
              torch_pruning="tp.importance.TaylorImportance()"),
    Criterion("activation", KINDS, _activation, needs=frozenset({"activations"}),
              help="activation (Wanda-style): |weight| times how strongly its input fires on real data",
              torch_pruning="tp.importance.ActivationImportance()"),
    Criterion("wanda", ("unstructured", "N:M"), _activation, needs=frozenset({"activations"}), compare="row",
              help=f"wanda: |weight| times its input's norm on {CALIBRATION_ITEMS} calibration items, compared "
                   "within each output row (Wanda); one pass over the items, surviving weights unchanged",
              layer_scope_only="compares weights within each output row, as Wanda does, so it has no ranking "
                               "across layers: use scope 'layer', or criterion 'activation' (the same |weight| "
                               "x input norm) for one ranking over all layers"),
    Criterion("sparsegpt", ("unstructured", "N:M"), needs=frozenset({LAYER_INPUTS}),
              help=f"sparsegpt: prune layer by layer on {CALIBRATION_ITEMS} calibration items and update the "
                   "surviving weights to rebuild each layer's outputs (SparseGPT); best quality, slowest "
                   "(seconds on the demos, minutes on a 100M-parameter language model)",
              layer_scope_only="prunes and rebuilds each layer to its own target, as SparseGPT does, so it has no "
                               "ranking across layers: use scope 'layer', and per-layer targets (the plan's "
                               "layers, or `prunelab allocate`) where layers should differ"),
    Criterion("bn_scale", ("channel",), None, _bn_scale, needs=frozenset({"batchnorm"}), fallback="l2",
              help="bn_scale: rank channels by the BatchNorm scale that follows them (channel pruning only)",
              torch_pruning="tp.importance.BNScaleImportance()"),
    Criterion("fpgm", ("channel",), None, _fpgm,
              help="fpgm: cut the channels closest to the geometric median of the layer, the most replaceable "
                   "ones (channel pruning only)",
              torch_pruning="tp.importance.FPGMImportance()"),
    Criterion("fisher", ("channel",), None, _fisher, needs=frozenset({"mask_gradients"}),
              help="fisher: cut the heads, neurons and channels whose removal the model's own predictions "
                   "notice least (Fisher information of unit masks on 64 calibration items, or up to 256 short "
                   "sequences of tokens; no labels needed; "
                   "about three forward passes; channel pruning only). A depth share then removes the blocks "
                   "whose removal they notice least too: the Fisher information of a gate on each block's "
                   "residual branch, in place of block influence",
              torch_pruning="tp.importance.GroupHessianImportance()", comparable=True, block_score="fisher"),
    Criterion("obs", ("channel",), None, _fisher, needs=frozenset({"mask_gradients", LAYER_INPUTS}),
              help="obs: fisher's scores, then each layer that reads heads or feed-forward neurons chooses which "
                   "go by structured optimal brain surgeon (the error of rebuilding its output from the rest, "
                   "times the Fisher score) and compensates its remaining weights, layer by layer on the "
                   "calibration items (ZipLM); a few seconds more than fisher; channel pruning only",
              torch_pruning="tp.importance.GroupHessianImportance()", comparable=True, block_score="fisher"),
)}


def criterion(name: str) -> Criterion:
    """The criterion registered as ``name``; PrunelabError naming the known ones otherwise."""
    if name not in CRITERIA:
        raise PrunelabError(f"unknown criterion '{name}' (criteria: {', '.join(CRITERIA)})")
    return CRITERIA[name]


def for_granularity(kind: str) -> list[str]:
    """Names of the criteria that rank at the granularity kind ``kind``, in table order."""
    return [name for name, entry in CRITERIA.items() if entry.ranks(kind)]


# ---- evidence --------------------------------------------------------------------------------

def calibration_items(data: Dataset | None, name: str,
                      count: int = CALIBRATION_ITEMS) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Up to ``count`` calibration inputs (and their labels, when they come from a labelled train split)
    for data-driven criteria."""
    if data is None:
        raise PrunelabError(f"criterion '{name}' needs data (pass --data or use a model that has some)")
    inputs = torch.from_numpy(np.ascontiguousarray(data.calibration(count)))
    inputs = inputs if not inputs.is_floating_point() else inputs.float()  # token ids stay integer
    labels = data.calibration_labels(count)
    return inputs, None if labels is None else torch.from_numpy(np.ascontiguousarray(labels)).long()


def _loss(output: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    if output.ndim == 2 and targets is not None:
        return nn.functional.cross_entropy(output, targets)
    return 0.5 * output.pow(2).sum()


def collect_gradient_scores(module: nn.Module, layers: list[Layer], data: Dataset | None) -> dict[str, torch.Tensor]:
    """Sum over a few calibration batches of |w * dL/dw| per layer (module left unchanged, eval mode).

    Unlabelled data uses the model's own predictions as targets.
    """
    inputs, labels = calibration_items(data, "taylor")
    scores = {layer.name: torch.zeros_like(layer.weight) for layer in layers}
    module.eval()
    for start in range(0, len(inputs), CALIBRATION_BATCH):
        batch = inputs[start:start + CALIBRATION_BATCH]
        module.zero_grad(set_to_none=True)
        output = module(batch)
        if labels is not None:
            targets = labels[start:start + CALIBRATION_BATCH]
        else:
            targets = output.detach().argmax(1) if output.ndim == 2 else None
        _loss(output, targets).backward()
        for layer in layers:
            gradient = layer.weight.grad
            if gradient is not None:
                scores[layer.name] += (layer.weight.detach() * gradient).abs()
    module.zero_grad(set_to_none=True)
    return scores


def _square_sums(tensor: torch.Tensor, channel_dim: int) -> torch.Tensor:
    moved = tensor.detach().movedim(channel_dim, -1)
    return moved.reshape(-1, moved.shape[-1]).double().pow(2).sum(0)  # (features,)


def collect_input_norms(module: nn.Module, layers: list[Layer], data: Dataset | None) -> dict[str, torch.Tensor]:
    """L2 norm of each input feature (Linear, attention) or input channel (Conv) over calibration data."""
    inputs, _ = calibration_items(data, "activation")
    sums: dict[str, torch.Tensor] = {}

    def hook_for(layer: Layer):
        def hook(child, args, kwargs):
            values = list(args) + [kwargs[key] for key in ("query", "key", "value") if key in kwargs]
            if layer.kind == "attention":
                parts = [_square_sums(values[i], -1) for i in range(3)]
                squares = torch.cat(parts)  # q, k, v inputs stacked for the (3E, E) projection rows
            else:
                squares = _square_sums(values[0], -1 if layer.kind == "linear" else 1)
            sums[layer.name] = sums.get(layer.name, 0) + squares
        return hook

    handles = [layer.module.register_forward_pre_hook(hook_for(layer), with_kwargs=True) for layer in layers]
    try:
        with torch.no_grad():
            for start in range(0, len(inputs), CALIBRATION_BATCH):
                module(inputs[start:start + CALIBRATION_BATCH])
    finally:
        for handle in handles:
            handle.remove()
    norms = {name: total.sqrt().float() for name, total in sums.items()}
    for layer in layers:  # inputs no hook sees (an attention's out_proj is called functionally): magnitude only
        if layer.name not in norms:
            inputs_per_item = layer.weight.shape[1] * getattr(layer.module, "groups", 1)
            norms[layer.name] = torch.ones(inputs_per_item * (3 if layer.kind == "attention" else 1))
    return norms


# Need -> (Evidence field, collector(module, layers, data) -> {layer name: value}). "batchnorm" has no
# collector: it is per channel group, read where the group is scored (core.prune.channel).
COLLECTORS = {
    "gradients": ("gradient_score", collect_gradient_scores),
    "activations": ("input_norm", collect_input_norms),
}


def gather_evidence(module: nn.Module, layers: list[Layer], name: str, data: Dataset | None,
                    seed: int) -> dict[str, Evidence]:
    """Evidence for every layer: what the criterion ``name`` declares it needs, and a seeded generator."""
    collected = {COLLECTORS[need][0]: COLLECTORS[need][1](module, layers, data)
                 for need in sorted(criterion(name).needs) if need in COLLECTORS}
    generator = torch.Generator().manual_seed(seed)
    return {layer.name: Evidence(**{key: values.get(layer.name) for key, values in collected.items()},
                                 generator=generator)
            for layer in layers}


def weight_scores(layer: Layer, name: str, evidence: Evidence) -> torch.Tensor:
    """One score per weight of ``layer`` (shaped like its weight); low scores are pruned first."""
    ranking = criterion(name)
    if ranking.weight_score is None:
        raise PrunelabError(f"criterion '{name}' ranks channels only")
    weight = layer.weight.detach()
    if layer.kind == "attention" and evidence.input_norm is not None:
        # (3E, E) projection: each third of the rows reads its own input (query, key, value)
        embed = weight.shape[1]
        norms = evidence.input_norm.reshape(3, embed)
        return torch.cat([weight[i * embed:(i + 1) * embed].abs() * norms[i] for i in range(3)])
    return ranking(weight, evidence)
