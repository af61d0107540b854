"""Recovery: train a pruned model back to accuracy while its pruned weights stay exactly zero.

- ``finetune``: prune once with a plan, then train with the masks held. A channel-pruned model
  trains as the smaller model it is.
- ``gradual_prune``: sparsity ramps up during training along a schedule (AGP polynomial decay).
- ``iterative_prune``: k rounds of prune-then-fine-tune toward the plan's targets.
- ``lottery_ticket``: iterative magnitude pruning from a seeded initialization; before each
  retraining the surviving weights are rewound to their values at initialization (or after an
  early epoch). A control trains a random re-initialization under the same masks.

Each method is one schedule of masks: a generator that yields the ``Phase``s to train (a module,
the masks held on it, and ``update_mask(step)`` for masks that change during training) and returns
the Recovery; ``run`` is the one loop that trains every phase with the shared ``Training`` settings
(core/train/phases.py; core.train.methods is the table of methods). A new method is one such
generator. Every method is deterministic for a seed and never mutates the ModelHandle.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from core.errors import PrunelabError
from core.prune.engine import PruneResult, apply_plan
from core.prune.plan import Plan
from core.sources import ModelHandle
from core.train.phases import (
    Masks,
    Phase,
    Recovery,
    Run,
    Schedule,
    Training,
    hold,
    require_training,
    run,
    sparsity_of,
)
from core.train.schedule import PolynomialDecay, default_schedule


def _require_masks(plan: Plan, method: str) -> None:
    if plan.granularity == "channel" and method != "iterative pruning":
        raise PrunelabError(f"{method} works on weight masks; a channel plan removes channels: "
                            "use finetune or iterative_prune")
    if plan.nm is not None:
        raise PrunelabError(f"{method} ramps sparsity up, but an N:M plan ({plan.granularity}) has one fixed "
                            "pattern: use finetune")


def _scaled(plan: Plan, transform: Callable[[float], float]) -> Plan:
    """``plan`` with its sparsity and every per-layer override passed through ``transform``."""
    layers = {name: transform(value) for name, value in plan.layer_targets.items()}
    return plan.replace(sparsity=transform(plan.sparsity), layers=layers)


def _intersect(previous: Masks | None, masks: Masks) -> Masks:
    """Masks only ever shrink: a weight pruned in an earlier step stays pruned."""
    if previous is None:
        return masks
    return {name: mask & previous[name] if name in previous else mask for name, mask in masks.items()}


def _prune(module: nn.Module, plan: Plan, model: ModelHandle, masks: Masks | None) -> tuple[nn.Module, Masks | None]:
    """Apply ``plan`` to a copy of ``module``; weight masks are intersected with ``masks``."""
    module.eval()
    result = apply_plan(module, plan, model.data, model.example_input())
    if result.masks is None:
        return result.module, None
    masks = _intersect(masks, result.masks)
    hold(result.module, masks)
    return result.module, masks


def finetune_schedule(run: Run, pruned: PruneResult | None = None) -> Schedule:
    """Prune once with the plan (or take the ready ``pruned`` result), then train with its masks held."""
    pruned = pruned if pruned is not None else apply_plan(run.model, run.plan)
    module = copy.deepcopy(pruned.module)
    accuracies = {"dense": run.accuracy(run.model.module), "one_shot": run.accuracy(module)}
    stopped = yield Phase(module, pruned.masks)
    return run.finish("finetune", module, accuracies, pruned.masks, stopped)


def finetune(model: ModelHandle, plan: Plan, epochs: int = Training.epochs, *, lr: float = Training.lr, seed: int = 0,
             batch_size: int = Training.batch_size, pruned: PruneResult | None = None, on_epoch=None, on_step=None,
             should_stop=None) -> Recovery:
    """Prune ``model`` with ``plan`` (or take the ready ``pruned`` result) and fine-tune it with the masks held.

    Raises PrunelabError when the source cannot be trained or its data has no training split.
    """
    return run(finetune_schedule, model, plan, Training(epochs, lr, seed, batch_size), on_epoch=on_epoch,
               on_step=on_step, should_stop=should_stop, pruned=pruned)


def steps_per_epoch(model: ModelHandle, batch_size: int = Training.batch_size) -> int:
    """Optimizer steps in one epoch over the model's training split."""
    require_training(model)
    return math.ceil(len(model.data.x_train) / batch_size)


def gradual_schedule(run: Run, schedule: PolynomialDecay | None = None) -> Schedule:
    """One phase from the dense model whose masks follow ``schedule`` step by step (see gradual_prune)."""
    model, plan = run.model, run.plan
    _require_masks(plan, "gradual pruning")
    largest = max([plan.sparsity, *plan.layer_targets.values()])
    schedule = schedule or default_schedule(largest, run.training.epochs,
                                            steps_per_epoch(model, run.training.batch_size))
    if schedule.final_sparsity <= 0:
        raise PrunelabError("gradual pruning needs a target above 0%: set one on the plan (or --sparsity)")
    base = plan if plan.layer_targets else plan.replace(sparsity=schedule.final_sparsity)
    module = copy.deepcopy(model.module)
    held: list[Masks | None] = [None]
    tags = {"sparsity": 0.0}

    def update_mask(step: int) -> Masks | None:
        target = schedule(step)
        if not schedule.prunes_at(step) or target <= 0:
            return None
        fraction = target / schedule.final_sparsity
        _, held[0] = _prune(module, _scaled(base, lambda value: value * fraction), model, held[0])
        module.train()
        tags["sparsity"] = target
        return held[0]

    stopped = yield Phase(module, None, tags, update_mask)
    accuracies = {"dense": run.accuracy(model.module), "one_shot": run.accuracy(apply_plan(model, base).module)}
    return run.finish("gradual", module, accuracies, held[0], stopped, {"schedule": schedule.to_dict()})


def gradual_prune(model: ModelHandle, plan: Plan, epochs: int = 10, *, schedule: PolynomialDecay | None = None,
                  lr: float = Training.lr, seed: int = 0, batch_size: int = Training.batch_size, on_epoch=None,
                  on_step=None, should_stop=None) -> Recovery:
    """Train ``model`` while its sparsity follows ``schedule`` (by default ``default_schedule`` to plan.sparsity).

    At each pruning step the plan is applied with its sparsity set to the schedule's value; per-layer
    overrides are scaled by the same fraction of the way, so a per-layer plan ends at its own targets
    (its default schedule ends at its largest target). Masks only shrink. Unstructured plans only.
    Raises PrunelabError for a plan or schedule whose final sparsity is 0.
    """
    return run(gradual_schedule, model, plan, Training(epochs, lr, seed, batch_size), on_epoch=on_epoch,
               on_step=on_step, should_stop=should_stop, schedule=schedule)


def iterative_schedule(run: Run, rounds: int = 3) -> Schedule:
    """One phase per round, each from the previous round's model pruned further (see iterative_prune)."""
    model, plan = run.model, run.plan
    _require_masks(plan, "iterative pruning")
    if rounds < 1:
        raise PrunelabError(f"rounds must be at least 1, got {rounds}")
    module, masks, rows, stopped = copy.deepcopy(model.module), None, [], False
    for round_number in range(1, rounds + 1):
        exponent = 1 / rounds if plan.granularity == "channel" else round_number / rounds
        module, masks = _prune(module, _scaled(plan, lambda value: 1 - (1 - value) ** exponent), model, masks)
        pruned_accuracy, sparsity = run.accuracy(module), sparsity_of(module, model.module)
        stopped = yield Phase(module, masks, {"phase": f"round {round_number}", "sparsity": sparsity})
        rows.append({"round": round_number, "sparsity": sparsity, "pruned_accuracy": pruned_accuracy,
                     "accuracy": run.accuracy(module)})
        if stopped:
            break
    accuracies = {"dense": run.accuracy(model.module), "one_shot": run.accuracy(apply_plan(model, plan).module)}
    return run.finish("iterative", module, accuracies, masks, stopped, {"rounds": rows})


def iterative_prune(model: ModelHandle, plan: Plan, rounds: int = 3, epochs: int = 2, *, lr: float = Training.lr,
                    seed: int = 0, batch_size: int = Training.batch_size, on_epoch=None, on_step=None,
                    should_stop=None) -> Recovery:
    """``rounds`` rounds of prune-then-fine-tune (``epochs`` each) reaching the plan's targets in the last round.

    The kept fraction shrinks geometrically: round r keeps (1 - target) ** (r / rounds). A channel
    plan prunes the already smaller model by 1 - (1 - target) ** (1 / rounds) each round.
    """
    return run(iterative_schedule, model, plan, Training(epochs, lr, seed, batch_size), on_epoch=on_epoch,
               on_step=on_step, should_stop=should_stop, rounds=rounds)


def reinitialize(module: nn.Module, seed: int) -> list[str]:
    """Draw fresh initial weights for ``module`` in place (each layer's own ``reset_parameters``), seeded.

    Returns the names of modules that own parameters but have no reset method (they keep their values).
    """
    kept = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, child in module.named_modules():
            reset = getattr(child, "reset_parameters", None) or getattr(child, "_reset_parameters", None)
            if callable(reset):
                reset()
            elif any(True for _ in child.parameters(recurse=False)):
                kept.append(name or type(child).__name__)
    return kept


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def lottery_schedule(run: Run, rounds: int = 3, rewind_epoch: int = 0) -> Schedule:
    """A dense phase, one phase per round from the rewound weights, then the control (see lottery_ticket)."""
    model, plan, training = run.model, run.plan, run.training
    _require_masks(plan, "lottery-ticket rewinding")
    if rounds < 1 or not 0 <= rewind_epoch < training.epochs:
        raise PrunelabError(f"need rounds >= 1 and 0 <= rewind epoch < epochs, got {rounds} and {rewind_epoch}")
    module = copy.deepcopy(model.module)
    notes = reinitialize(module, training.seed)
    rewind_step = rewind_epoch * steps_per_epoch(model, training.batch_size)
    saved = {"state": _snapshot(module)}

    def keep_early(step: int) -> None:
        if step + 1 == rewind_step:
            saved["state"] = _snapshot(module)

    stopped = yield Phase(module, None, {"phase": "dense", "sparsity": 0.0}, keep_early)
    accuracies, masks, rows, sparsity = {"dense": run.accuracy(module)}, None, [], 0.0
    for round_number in range(1, rounds + 1):
        if stopped:
            break
        pruned, masks = _prune(module, _scaled(plan, lambda value: 1 - (1 - value) ** (round_number / rounds)),
                               model, masks)
        accuracies["one_shot"] = run.accuracy(pruned)
        module.load_state_dict(saved["state"])
        sparsity = sparsity_of(pruned, model.module)
        stopped = yield Phase(module, masks, {"phase": f"round {round_number}", "sparsity": sparsity})
        rows.append({"round": round_number, "sparsity": sparsity, "accuracy": run.accuracy(module)})
    control = copy.deepcopy(model.module)
    reinitialize(control, training.seed + 1)
    if not stopped and masks is not None:
        stopped = yield Phase(control, masks, {"phase": "random reinit", "sparsity": sparsity})
        accuracies["random_reinit"] = run.accuracy(control)
    details = {"rounds": rows, "rewind_epoch": rewind_epoch, "rewind_step": rewind_step,
               "not_reinitialized": notes}
    return run.finish("lottery", module, accuracies, masks, stopped, details)


def lottery_ticket(model: ModelHandle, plan: Plan, rounds: int = 3, epochs: int = 10, *, rewind_epoch: int = 0,
                   lr: float = Training.lr, seed: int = 0, batch_size: int = Training.batch_size, on_epoch=None,
                   on_step=None, should_stop=None) -> Recovery:
    """Find a winning ticket by iterative magnitude pruning with rewinding, and train its random-init control.

    The architecture of ``model`` is re-initialized with ``seed`` (its trained weights are not used)
    and trained dense for ``epochs``; the weights after ``rewind_epoch`` epochs (0: at initialization)
    are kept. Each of ``rounds`` rounds prunes the trained weights toward the plan's targets (kept
    fraction (1 - target) ** (r / rounds)), rewinds the survivors and retrains for ``epochs``. The
    control re-initializes with ``seed + 1``, applies the final masks and trains as long.
    accuracy gains ``"random_reinit"``. Unstructured plans only.
    """
    return run(lottery_schedule, model, plan, Training(epochs, lr, seed, batch_size), on_epoch=on_epoch,
               on_step=on_step, should_stop=should_stop, rounds=rounds, rewind_epoch=rewind_epoch)
