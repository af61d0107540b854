"""Sparsity schedules for gradual pruning: pure functions from a training step to a sparsity.

The polynomial decay of Zhu & Gupta's AGP ("To prune, or not to prune", 2017), as TensorFlow
Model Optimization's ``PolynomialDecay`` and torch.ao's ``CubicSL`` implement it::

    s(t) = final + (initial - final) * (1 - (t - begin) / (end - begin)) ** power

Pruning happens every ``frequency`` steps from ``begin_step``, and always at ``end_step`` so the
final sparsity is reached. Between pruning steps the mask, and so the sparsity, stays as it was:
the functions here return the sparsity the model holds at a step (a staircase), zero before
``begin_step`` and ``final`` after ``end_step``. A schedule never touches masks.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.errors import PrunelabError

# AGP's defaults, the one home of each: a cubic ramp over the first three quarters of training,
# pruning four times an epoch.
POWER = 3.0
END_FRACTION = 0.75
PRUNINGS_PER_EPOCH = 4


def polynomial_decay(step: int, initial_sparsity: float, final_sparsity: float, begin_step: int,
                     end_step: int, frequency: int = 1, power: float = POWER) -> float:
    """The sparsity held at ``step`` under AGP's polynomial decay (see the module docstring).

    Raises PrunelabError for sparsities outside [0, 1), ``initial > final``, ``end_step <= begin_step``,
    a frequency below 1 or a power that is not positive.
    """
    _check(initial_sparsity, final_sparsity, begin_step, end_step, frequency, power)
    if step < begin_step:
        return 0.0
    if step >= end_step:
        return float(final_sparsity)
    last_pruned = begin_step + (step - begin_step) // frequency * frequency
    remaining = 1.0 - (last_pruned - begin_step) / (end_step - begin_step)
    return float(final_sparsity + (initial_sparsity - final_sparsity) * remaining ** power)


def is_pruning_step(step: int, begin_step: int, end_step: int, frequency: int = 1) -> bool:
    """Whether masks are recomputed at ``step``: every ``frequency`` steps from begin, and at end."""
    if step < begin_step or step > end_step:
        return False
    return step == end_step or (step - begin_step) % frequency == 0


@dataclass(frozen=True)
class PolynomialDecay:
    """A polynomial-decay schedule as a value: call it with a step to get the sparsity held there."""

    initial_sparsity: float = 0.0
    final_sparsity: float = 0.9
    begin_step: int = 0
    end_step: int = 100
    frequency: int = 10
    power: float = POWER

    def __post_init__(self):
        _check(self.initial_sparsity, self.final_sparsity, self.begin_step, self.end_step,
               self.frequency, self.power)

    def __call__(self, step: int) -> float:
        return polynomial_decay(step, self.initial_sparsity, self.final_sparsity, self.begin_step,
                                self.end_step, self.frequency, self.power)

    def prunes_at(self, step: int) -> bool:
        return is_pruning_step(step, self.begin_step, self.end_step, self.frequency)

    def curve(self, total_steps: int) -> list[dict]:
        """``[{"step", "sparsity"}]`` for steps 0..total_steps, for plotting before a run."""
        return [{"step": step, "sparsity": self(step)} for step in range(total_steps + 1)]

    def to_dict(self) -> dict:
        return {"initial_sparsity": self.initial_sparsity, "final_sparsity": self.final_sparsity,
                "begin_step": self.begin_step, "end_step": self.end_step,
                "frequency": self.frequency, "power": self.power}


def _check(initial: float, final: float, begin_step: int, end_step: int, frequency: int, power: float) -> None:
    for name, value in (("initial sparsity", initial), ("final sparsity", final)):
        if not 0.0 <= value < 1.0:
            raise PrunelabError(f"schedule {name} must be in [0, 1), got {value}")
    if initial > final:
        raise PrunelabError(f"schedule initial sparsity {initial} is above the final sparsity {final}")
    if begin_step < 0 or end_step <= begin_step:
        raise PrunelabError(f"schedule end step {end_step} must come after begin step {begin_step} (>= 0)")
    if int(frequency) != frequency or frequency < 1:
        raise PrunelabError(f"schedule frequency must be a whole number of steps >= 1, got {frequency}")
    if power <= 0:
        raise PrunelabError(f"schedule power must be positive, got {power}")


def default_schedule(final_sparsity: float, epochs: int, per_epoch: int, initial_sparsity: float = 0.0,
                     end_fraction: float = END_FRACTION, power: float = POWER) -> PolynomialDecay:
    """The AGP schedule of a run of ``epochs`` of ``per_epoch`` steps: from ``initial_sparsity`` to
    ``final_sparsity`` over the first ``end_fraction`` of training, pruning PRUNINGS_PER_EPOCH times an epoch."""
    total = max(2, epochs * per_epoch)
    return PolynomialDecay(initial_sparsity, final_sparsity, begin_step=0, end_step=max(1, int(end_fraction * total)),
                           frequency=max(1, per_epoch // PRUNINGS_PER_EPOCH), power=power)
