"""Allocation's candidate checks as jobs (core.search.parallel): each candidate plan applied and scored.

The curves propose a few per-layer allocations; measuring them decides. Each candidate is applied
with the engine and scored on the val and training splits together (never test: one small split
alone is too noisy to tell plans a point apart), serially or on worker processes or Ray.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass

from core.prune.engine import apply_plan
from core.prune.plan import Plan
from core.search.parallel import Work, pack_object
from core.search.sweep_points import Scorer, quality_of
from core.sources import ModelHandle


@dataclass
class CandidateState:
    handle: ModelHandle
    criterion: str
    scorers: list          # (Scorer, items) per split
    quality: str | None = None  # a number of the model's own metric to rank by, instead of accuracy


def prepare(handle: ModelHandle, criterion: str, quality: str | None = None) -> CandidateState:
    splits = ["val"] + (["train"] if handle.data.x_train is not None else [])
    return CandidateState(handle, criterion, [(Scorer(handle, split), len(getattr(handle.data, f"x_{split}")))
                                              for split in splits], quality)


def build(payload: bytes, threads: int) -> CandidateState:
    return prepare(*pickle.loads(payload))


def score(state: CandidateState, chosen: dict[str, float]) -> tuple[float, float]:
    """``(accuracy or the quality figure, -loss)`` of the candidate over every scored item: larger is better."""
    plan = Plan(criterion=state.criterion, scope="layer", sparsity=0.0, layers=chosen)
    module = apply_plan(state.handle, plan).module
    results = [(scorer.figures(module), count) for scorer, count in state.scorers]
    items = sum(count for _, count in state.scorers)
    quality = sum(quality_of(figures, state.quality) * count for figures, count in results) / items
    loss = sum(figures["loss"] * count for figures, count in results) / items
    return quality, -loss


def best(handle: ModelHandle, criterion: str, candidates: list[dict[str, float]], executor,
         quality: str | None = None) -> dict[str, float]:
    """The candidate that scores best (the first one when a single one is given or none could be scored)."""
    if len(candidates) == 1:
        return candidates[0]
    work = Work(list(candidates), prepare=lambda: prepare(handle, criterion, quality),
                pack=lambda: pack_object((handle, criterion, quality)), build=build, run=score,
                describe=lambda chosen: "checking a candidate allocation")
    outcome = executor.map(work, lambda done, total, text: None, lambda: False)
    if not outcome.values:
        return candidates[0]
    return candidates[max(outcome.values, key=lambda index: (outcome.values[index], -index))]
