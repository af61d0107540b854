"""The table of recovery methods: one name per method everywhere (the CLI, the dashboard, a
Recovery's ``method``), how ``recover`` runs it with the shared Training settings, and how many
epochs it trains. A new method is one function in core.train.recovery and one entry here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core.errors import PrunelabError
from core.prune.plan import Plan
from core.sources import ModelHandle
from core.train.language import next_token_finetune
from core.train.recovery import Recovery, Training, finetune, gradual_prune, iterative_prune, lottery_ticket
from core.train.schedule import PolynomialDecay


@dataclass(frozen=True)
class Method:
    """A recovery method as ``recover`` runs it: ``run(model, plan, training, options, callbacks)`` with
    ``options`` {rounds, rewind_epoch, schedule} (each method reads its own), and ``epochs(epochs, rounds)``,
    the epochs a run trains in all."""

    run: Callable[..., Recovery]
    epochs: Callable[[int, int], int]


def _run_finetune(model, plan, training: Training, options: dict, callbacks: dict) -> Recovery:
    return finetune(model, plan, training.epochs, lr=training.lr, seed=training.seed,
                    batch_size=training.batch_size, **callbacks)


def _run_next_token(model, plan, training: Training, options: dict, callbacks: dict) -> Recovery:
    return next_token_finetune(model, plan, training.epochs, lr=training.lr, seed=training.seed,
                               batch_size=training.batch_size, **callbacks)


def _run_gradual(model, plan, training: Training, options: dict, callbacks: dict) -> Recovery:
    return gradual_prune(model, plan, training.epochs, schedule=options["schedule"], lr=training.lr,
                         seed=training.seed, batch_size=training.batch_size, **callbacks)


def _run_iterative(model, plan, training: Training, options: dict, callbacks: dict) -> Recovery:
    return iterative_prune(model, plan, options["rounds"], training.epochs, lr=training.lr, seed=training.seed,
                           batch_size=training.batch_size, **callbacks)


def _run_lottery(model, plan, training: Training, options: dict, callbacks: dict) -> Recovery:
    return lottery_ticket(model, plan, options["rounds"], training.epochs, rewind_epoch=options["rewind_epoch"],
                          lr=training.lr, seed=training.seed, batch_size=training.batch_size, **callbacks)


# Method name (as the CLI, the dashboard and a Recovery's ``method`` spell it) -> how to run it. The
# lottery ticket trains dense, then each round, then its random re-init control.
METHODS: dict[str, Method] = {
    "finetune": Method(_run_finetune, lambda epochs, rounds: epochs),
    "next_token": Method(_run_next_token, lambda epochs, rounds: epochs),  # causal language models
    "gradual": Method(_run_gradual, lambda epochs, rounds: epochs),
    "iterative": Method(_run_iterative, lambda epochs, rounds: rounds * epochs),
    "lottery": Method(_run_lottery, lambda epochs, rounds: (rounds + 2) * epochs),
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
    options = {"rounds": rounds, "rewind_epoch": rewind_epoch, "schedule": schedule}
    return METHODS[method].run(model, plan, Training(epochs, lr, seed), options,
                               {"on_epoch": on_epoch, "should_stop": should_stop, "on_step": on_step})


def total_epochs(method: str, epochs: int, rounds: int) -> int:
    """Epochs a run of ``method`` trains in all (``epochs`` for an unknown name)."""
    return METHODS[method].epochs(epochs, rounds) if method in METHODS else epochs
