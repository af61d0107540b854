"""The table of recovery methods: one name per method everywhere (the CLI, the dashboard, a
Recovery's ``method``), the schedule of masks that is the method (core.train.recovery), the
options it reads, and how many epochs it trains. ``recover`` runs any of them with the shared
Training settings, after the method's check of the model. A new method is one schedule (classifiers:
core.train.recovery; language models: core.train.language) and one entry here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core.errors import PrunelabError
from core.prune.plan import Plan
from core.sources import ModelHandle
from core.train.language import next_token_schedule, require_text
from core.train.phases import Recovery, Schedule, Training, require_training, run
from core.train.recovery import finetune_schedule, gradual_schedule, iterative_schedule, lottery_schedule
from core.train.schedule import PolynomialDecay


@dataclass(frozen=True)
class Method:
    """A recovery method: its ``schedule`` (see core.train.phases), the ``options`` of ``recover`` it
    reads (rounds, rewind_epoch, schedule), ``epochs(epochs, rounds)``, the epochs a run trains in all, and
    ``check(model)``, which raises PrunelabError for a model the method cannot train."""

    schedule: Callable[..., Schedule]
    options: tuple[str, ...]
    epochs: Callable[[int, int], int]
    check: Callable[[ModelHandle], None] = require_training


# Method name (as the CLI, the dashboard and a Recovery's ``method`` spell it) -> the method. The
# lottery ticket trains dense, then each round, then its random re-init control.
METHODS: dict[str, Method] = {
    "finetune": Method(finetune_schedule, (), lambda epochs, rounds: epochs),
    "next_token": Method(next_token_schedule, (), lambda epochs, rounds: epochs, require_text),  # causal LMs
    "gradual": Method(gradual_schedule, ("schedule",), lambda epochs, rounds: epochs),
    "iterative": Method(iterative_schedule, ("rounds",), lambda epochs, rounds: rounds * epochs),
    "lottery": Method(lottery_schedule, ("rounds", "rewind_epoch"), lambda epochs, rounds: (rounds + 2) * epochs),
}


def recover(model: ModelHandle, plan: Plan, method: str, *, epochs: int, lr: float = Training.lr, rounds: int = 3,
            rewind_epoch: int = 0, schedule: PolynomialDecay | None = None, seed: int = 0, on_epoch=None,
            should_stop=None, on_step=None) -> Recovery:
    """Run recovery ``method`` (a name in METHODS) of ``model`` pruned by ``plan``; see each method for its
    arguments (``rounds`` for iterative and lottery, ``rewind_epoch`` for lottery, ``schedule`` for gradual).

    Raises PrunelabError for an unknown method or anything the method refuses.
    """
    if method not in METHODS:
        raise PrunelabError(f"unknown recovery method '{method}' (choose from {', '.join(METHODS)})")
    given = {"rounds": rounds, "rewind_epoch": rewind_epoch, "schedule": schedule}
    chosen = METHODS[method]
    return run(chosen.schedule, model, plan, Training(epochs, lr, seed), check=chosen.check, on_epoch=on_epoch,
               on_step=on_step, should_stop=should_stop, **{name: given[name] for name in chosen.options})


def total_epochs(method: str, epochs: int, rounds: int) -> int:
    """Epochs a run of ``method`` trains in all (``epochs`` for an unknown name)."""
    return METHODS[method].epochs(epochs, rounds) if method in METHODS else epochs
