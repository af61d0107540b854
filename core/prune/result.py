"""The values a pruning run passes between the engine and its granularity handlers."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from core.data import Dataset
from core.inspect import Layer
from core.prune.plan import Plan
from core.prune.resolved import ResolvedPlan


@dataclass
class PruneResult:
    """A pruned copy of a model and what happened to each layer.

    masks: {layer: bool keep-mask} for unstructured and N:M plans, None for channel plans.
    layer_sparsity: {layer: fraction of zero weights (unstructured, N:M) or of removed output channels}.
    groups: channel coupling groups [{"leader", "members", "channels", ...}] (channel plans).
    notes: sentences for the report (layers left dense, hardware remarks, ...).
    kept: channel plans: {layer: {"unit": "channel" or "head", "total", "target", "target_kept", "kept"}},
        what every included layer kept against what its target asked for.
    dropped: blocks removed whole (depth plans), in call order; block_scores: {block: score} of the removable
        blocks when the plan's ``depth`` share ranked them, and block_score what they are ('influence' or
        'fisher', core.prune.depth.BlockRanking).
    batchnorm_ms: milliseconds spent re-estimating BatchNorm statistics (0 when none were).
    """

    module: nn.Module
    plan: Plan
    masks: dict[str, torch.Tensor] | None = None
    layer_sparsity: dict[str, float] = field(default_factory=dict)
    groups: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kept: dict[str, dict] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    block_scores: dict[str, float] = field(default_factory=dict)
    block_score: str = ""
    batchnorm_ms: float = 0.0


@dataclass
class Job:
    """Everything a granularity handler needs: the copy to prune, the plan resolved against it, the inputs."""

    module: nn.Module
    resolved: ResolvedPlan
    layers: list[Layer]                # included layers of the copy, in definition order
    data: Dataset | None
    example_input: torch.Tensor | None
    notes: list[str] = field(default_factory=list)
    output_kind: str = "logits"        # the model's output: logits or embedding (ModelHandle.output_kind)
    pad_id: int | None = None          # token models: the padding id (its positions are not calibration data)

    @property
    def plan(self) -> Plan:
        return self.resolved.plan

    @property
    def ignored(self) -> list[str]:
        return list(self.resolved.ignored)

    def target(self, name: str) -> float:
        """The layer's own target (its override, else the plan's sparsity)."""
        return self.resolved.asked(name)
