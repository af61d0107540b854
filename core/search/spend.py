"""Spending a MAC or latency budget on depth, on width or on both, chosen by measured quality.

Three ways reach the same budget. **width** is the per-group channel allocation of
core.search.allocate. **depth** removes whole blocks, cheapest first by the one block ranking a
plan's ``depth`` share also reads (core.prune.depth.BlockRanking: block influence, or the blocks'
Fisher scores under criterion fisher), until the budget is met. **both** removes the blocks that
cover about half of the budget and spends the rest on width (the channel curves of the groups that
are left, with the budget bisected on the real model with those blocks gone). Each candidate is
applied with the engine, its MACs or latency measured and its quality scored on the validation
items; the best one that meets the budget is chosen and the others are kept beside it, so a
person sees what depth and width would each have given.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from core.errors import PrunelabError
from core.prune.depth import BlockRanking
from core.prune.engine import apply_plan
from core.prune.plan import MAX_SPARSITY, Plan
from core.search.allocate import CHANNEL_RESOURCES, TARGET_WORDS, TOLERANCE, allocate, check_request
from core.search.curves import ACCURACY_WEIGHT, BISECTION_STEPS, check_quality, curves_for, greedy
from core.search.sensitivity import sensitivity as sweep
from core.search.sweep_points import Scorer, footprint
from core.sources import ModelHandle

SPENDS = ("width", "depth", "both", "best")
WAYS = ("width", "depth", "both")   # what "best" compares, in this order when two score the same
LATENCY_SLACK = 0.05  # a latency within this share of the cut counts as met: repeated p50s vary that much
OVERSHOOT = 1.5       # an option whose reduction is this many times the target's says it overshoots


@dataclass(frozen=True)
class Option:
    """One way of spending the budget: its plan, the resource it leaves (MACs per item or p50 ms), its
    quality on the validation items, or ``note`` saying why there is no such plan."""

    way: str
    plan: Plan | None = None
    reached: float | None = None
    accuracy: float | None = None
    loss: float | None = None
    meets: bool = False
    note: str = ""


@dataclass(frozen=True)
class Spending:
    """What allocation chose (``way`` and its ``plan``) and every option it compared."""

    plan: Plan
    way: str
    options: tuple[Option, ...]
    resource: str        # "macs" or "latency_ms"
    dense: float         # the dense model's figure of that resource
    label: str           # the quality figure: accuracy, agreement, cosine or a name of the model's own metric
    dense_accuracy: float

    def rows(self) -> list[dict]:
        """One plain row per option: way, what it removes, the resource left, quality, chosen or why not."""
        return [{"way": option.way, "removes": _removes(option.plan), self.resource: option.reached,
                 "speedup" if self.resource == "latency_ms" else "reduction":
                     None if not option.reached else self.dense / option.reached,
                 self.label: option.accuracy, "loss": option.loss,
                 "chosen": option.way == self.way, "note": option.note} for option in self.options]

    def lines(self) -> list[str]:
        """The choice and the alternatives in words, as the CLI prints them."""
        unit = "MACs" if self.resource == "macs" else "ms p50"
        lines = [f"spent on {self.way}: {_removes(self.plan)} "
                 f"(dense {self.label} {self.dense_accuracy:.4g}, {self.dense:,.4g} {unit})"]
        for option in self.options:
            mark = "->" if option.way == self.way else "  "
            if option.plan is None:
                lines.append(f"{mark} {option.way:<6} not possible: {option.note}")
                continue
            lines.append(f"{mark} {option.way:<6} {option.reached:>14,.4g} {unit}  {self.label} {option.accuracy:.4g}"
                         f"  loss {option.loss:.4g}  {_removes(option.plan)}" + (f"  ({option.note})" if option.note
                                                                                   else ""))
        return lines


def _removes(plan: Plan | None) -> str:
    if plan is None:
        return "-"
    words = [f"drops {', '.join(plan.drop)}"] if plan.drop else []
    pruned = sum(1 for _, level in plan.layers if level > 0)
    if pruned:
        words.append(f"prunes {pruned} channel groups")
    return " and ".join(words) or "nothing"


def spend_budget(handle: ModelHandle, way: str = "best", target_mac_reduction: float | None = None,
                 target_latency_ms: float | None = None, criterion: str = "l1", sensitivity: dict | None = None,
                 bounds: tuple[float, float] = (0.0, MAX_SPARSITY), round_to: int = 1,
                 max_accuracy_drop: float | None = None, quality: str | None = None) -> Spending:
    """Reach a MAC or latency target by removing blocks (``way="depth"``), channels ("width"), both, or
    whichever of the three keeps the most quality ("best").

    Targets (give one): target_mac_reduction (dense MACs over pruned MACs) or target_latency_ms (ORT p50
    at batch 1). sensitivity: a channel sweep of ``criterion`` with its block points (run when omitted).
    bounds and round_to apply to the channel groups, as in core.search.allocate.allocate.
    max_accuracy_drop: a fraction; an option losing more on the validation items does not qualify.
    quality: a name the model's own metric returns (higher is better), as in allocate: channels are
    allocated and options compared by that figure alone, and max_accuracy_drop is in its units. Blocks are
    ranked as a ``depth:`` plan of ``criterion`` ranks them (core.prune.depth.BlockRanking).
    Raises PrunelabError for a bad request, a quality figure the sweep did not measure, or when no option
    meets the target (naming why each failed).
    """
    if way not in SPENDS:
        raise PrunelabError(f"spend the budget on one of {', '.join(SPENDS)}, not {way!r}")
    if target_mac_reduction is None and target_latency_ms is None:
        raise PrunelabError("spending on depth needs a MAC or a latency target (target_mac_reduction or "
                            "target_latency_ms)")
    kind, value, bounds = check_request(None, target_latency_ms, target_mac_reduction, max_accuracy_drop,
                                        "channel", bounds, quality)
    result = sensitivity if sensitivity is not None else sweep(handle, "channel", criterion)
    if (result.get("granularity"), result.get("criterion")) != ("channel", criterion):
        raise PrunelabError(f"spending a budget on depth reads a channel/{criterion} sensitivity sweep, "
                            f"not {result.get('granularity')}/{result.get('criterion')}")
    check_quality(result, quality)
    budget = _Budget(handle, result, kind, value, criterion, round_to, quality)
    scorer = _Quality(handle, quality)
    dense_accuracy, dense_loss = scorer(handle.module)
    builders = {"width": lambda: allocate(handle, granularity="channel", criterion=criterion, sensitivity=result,
                                          min_sparsity=bounds[0], max_sparsity=bounds[1], round_to=round_to,
                                          quality=quality, **{("target_" + kind): value}),
                "depth": budget.depth_plan, "both": lambda: budget.mixed_plan(bounds)}
    ways = WAYS if way == "best" else (way,)
    options = [_option(name, builders[name], budget, scorer, (dense_accuracy, dense_loss), max_accuracy_drop)
               for name in ways]
    meeting = [option for option in options if option.meets]
    if not meeting:
        raise PrunelabError(f"no way reaches {TARGET_WORDS[kind].format(value)}: " + "; ".join(
            f"{option.way}: {option.note}" for option in options))
    chosen = max(meeting, key=lambda option: (scorer.merit(option), -WAYS.index(option.way)))
    return Spending(chosen.plan, chosen.way, tuple(options), budget.resource, budget.dense, scorer.label,
                    dense_accuracy)


class _Quality:
    """The figure options are compared by: the sweep's accuracy and loss, or one number of the model's own metric.

    Called on a module it gives ``(figure, loss)``; ``merit`` ranks an option, higher being better.
    """

    def __init__(self, handle: ModelHandle, quality: str | None):
        self.scorer, self.quality = Scorer(handle, "val"), quality
        self.label = quality or self.scorer.label

    def __call__(self, module) -> tuple[float, float]:
        if self.quality is None:
            return self.scorer(module)
        figures = self.scorer.figures(module)
        return float(figures["metrics"][self.quality]), figures["loss"]

    def merit(self, option: Option) -> float:
        if self.quality is None:
            return ACCURACY_WEIGHT * option.accuracy - option.loss
        return option.accuracy


def _option(way: str, build: Callable[[], Plan], budget: _Budget, scorer: _Quality, dense: tuple[float, float],
            max_drop: float | None) -> Option:
    """Build, measure and score one way; a way that cannot be built is an Option with the reason."""
    try:
        plan = build()
    except PrunelabError as error:
        return Option(way, note=str(error))
    module = apply_plan(budget.handle, plan).module.eval()
    reached = budget.measure_module(module)
    accuracy, loss = scorer(module)
    note = ""
    if not budget.met(reached):
        note = f"leaves {reached:,.4g} where the target needs {budget.goal:,.4g}"
    elif max_drop is not None and dense[0] - accuracy > max_drop + 1e-9:
        note = f"loses {dense[0] - accuracy:.4g} of {scorer.label}, more than the allowed {max_drop:.4g}"
    if not note and overshoots(reached, budget.goal, budget.dense):
        return Option(way, plan, reached, accuracy, loss, meets=True,
                      note=f"overshoots: leaves {reached:,.4g} where the target needs {budget.goal:,.4g}")
    return Option(way, plan, reached, accuracy, loss, meets=not note, note=note)


def meets(reached: float, goal: float, dense: float, timed: bool) -> bool:
    """Whether ``reached`` (MACs or p50 ms left) meets ``goal``: within TOLERANCE of the cut for MACs, which
    are exact, and within LATENCY_SLACK of it for a latency, which varies that much between repeated p50s."""
    slack = LATENCY_SLACK if timed else TOLERANCE
    return reached <= goal + slack * (dense - goal)


def overshoots(reached: float, goal: float, dense: float) -> bool:
    """Whether an option cuts far past its target: its reduction (dense over reached) is over
    OVERSHOOT times the one asked for, as whole blocks can when the fewest that reach it are large."""
    return reached > 0 and dense / reached > OVERSHOOT * dense / goal


class _Budget:
    """The target in the resource's terms, and the depth ladder: blocks removed cheapest first."""

    def __init__(self, handle: ModelHandle, result: dict, kind: str, value: float, criterion: str, round_to: int,
                 quality: str | None = None):
        self.handle, self.result, self.criterion, self.round_to = handle, result, criterion, round_to
        self.quality = quality
        self.resource = CHANNEL_RESOURCES[kind]
        self.timed = self.resource == "latency_ms"
        self.dense = self.measure_module(handle.module)
        self.goal = self.dense / value if kind == "mac_reduction" else value
        self._ladder: list[tuple[list[str], float]] | None = None

    def measure_module(self, module) -> float:
        return float(footprint(module, self.handle.example_input(1), timed=self.timed)[self.resource])

    def measure(self, plan: Plan) -> float:
        """The resource ``plan`` leaves; applied without refits, which change weights but not shapes."""
        structure = dataclasses.replace(plan, recalibrate=False, reconstruct=False)
        return self.measure_module(apply_plan(self.handle, structure).module.eval())

    def met(self, reached: float) -> bool:
        return meets(reached, self.goal, self.dense, self.timed)

    def blocks(self) -> list[str]:
        """Removable blocks, cheapest first, by the ranking a plan's ``depth`` share reads for the same
        criterion (core.prune.depth.BlockRanking): block influence, or under fisher the Fisher information
        of a gate on each block's residual branch. Not by the sweep's block points: a depth option and a
        ``depth:`` plan of one criterion remove the same blocks; the options' own quality is measured."""
        names = [point["name"] for point in self.result.get("blocks") or []]
        if not names:
            raise PrunelabError(f"{self.handle.name} has no removable blocks in its sensitivity sweep")
        return BlockRanking.for_handle(self.handle, self.criterion).order(self.handle.module, names)[0]

    def ladder(self) -> list[tuple[list[str], float]]:
        """(blocks removed, resource left) for the 1, 2, ... cheapest blocks, up to the first that meets the goal."""
        if self._ladder is None:
            self._ladder, order = [], self.blocks()
            for count in range(1, len(order) + 1):
                names = order[:count]
                self._ladder.append((names, self.measure(Plan(sparsity=0.0, drop=names))))
                if self.met(self._ladder[-1][1]):
                    break
        return self._ladder

    def depth_plan(self) -> Plan:
        """The cheapest blocks that meet the goal, less any of them the goal does not need: the last block the
        ladder took may meet it alone, and then the cheaper ones before it only cost quality."""
        names, reached = self.ladder()[-1]
        if not self.met(reached):
            raise PrunelabError(f"removing all {len(names)} removable blocks leaves {reached:,.4g}, above the "
                                f"target's {self.goal:,.4g}")
        for name in reversed(names[:-1]):  # the costliest of the cheap ones first
            fewer = [kept for kept in names if kept != name]
            if self.met(self.measure(Plan(sparsity=0.0, drop=fewer))):
                names = fewer
        return Plan(sparsity=0.0, drop=names)

    def mixed_plan(self, bounds: tuple[float, float]) -> Plan:
        """The blocks that remove closest to half the budget, then width for the rest."""
        needed = self.dense - self.goal
        short = [(names, reached) for names, reached in self.ladder() if not self.met(reached)]
        if not short:
            raise PrunelabError("the cheapest block alone meets the target, which leaves nothing for width")
        names, _ = min(short, key=lambda step: abs((self.dense - step[1]) - needed / 2))
        curves = [curve for curve in curves_for(self.result, self.resource, bounds, self.quality)
                  if not any(curve.name.startswith(block + ".") for block in names)]
        if not curves:
            raise PrunelabError("the sweep has no channel curve outside the removed blocks")

        def plan_for(budget: float) -> Plan:
            return Plan(granularity="channel", criterion=self.criterion, sparsity=0.0, drop=names,
                        layers={name: round(level, 4) for name, level in greedy(curves, budget).items()},
                        round_to=self.round_to)

        low, high = 0.0, float(sum(curve.removed[-1] for curve in curves))
        if not self.met(self.measure(plan_for(high))):
            raise PrunelabError(f"removing {', '.join(names)} and every group at its largest share still "
                                f"misses the target's {self.goal:,.4g}")
        for _ in range(BISECTION_STEPS):
            middle = (low + high) / 2
            low, high = (low, middle) if self.met(self.measure(plan_for(middle))) else (middle, high)
        return plan_for(high)
