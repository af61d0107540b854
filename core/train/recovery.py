"""Recovery: train a pruned model back to accuracy while its pruned weights stay exactly zero.

- ``finetune``: prune once with a plan, then train with the masks held. A channel-pruned model
  trains as the smaller model it is.
- ``gradual_prune``: sparsity ramps up during training along a schedule (AGP polynomial decay).
- ``iterative_prune``: k rounds of prune-then-fine-tune toward the plan's targets.
- ``lottery_ticket``: iterative magnitude pruning from a seeded initialization; before each
  retraining the surviving weights are rewound to their values at initialization (or after an
  early epoch). A control trains a random re-initialization under the same masks.

All of them train with ``core.train.loop.fit`` and re-apply the masks after every optimizer step,
so AdamW's momentum and weight decay never move a pruned weight off zero. They are deterministic
for a seed and never mutate the ModelHandle. Progress reaches the caller through
``on_epoch(row)`` (row is the new history entry), ``on_step(step, loss)``, and ``should_stop()``,
polled after every step; a stopped run returns what it has, with ``stopped`` set.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from core.data import Dataset
from core.errors import PrunelabError
from core.inspect import prunable_layers
from core.prune.engine import PruneResult, apply_plan
from core.prune.plan import Plan
from core.prune.unstructured import apply_mask
from core.sources import ModelHandle
from core.train.loop import accuracy, classification, fit
from core.train.schedule import PolynomialDecay, default_schedule

Masks = dict[str, torch.Tensor]


@dataclass
class Recovery:
    """What a recovery run produced.

    module: the recovered model (eval mode). history: one row per epoch,
    ``{"epoch", "loss", "val_accuracy"}`` plus ``"phase"`` and ``"sparsity"`` for multi-phase runs.
    accuracy: test accuracies ``{"dense", "one_shot", "recovered"}`` (lottery tickets add
    ``"random_reinit"``); None when the data has no test labels. sparsity: fraction of the dense
    model's prunable weights that are zero or removed. masks: keep-masks held (None for channel
    plans). details: per-method facts (rounds, schedule, rewind step).
    """

    method: str
    module: nn.Module
    history: list[dict]
    accuracy: dict[str, float | None]
    sparsity: float
    masks: Masks | None = None
    stopped: bool = False
    details: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """Plain values for JSON, the CLI and the dashboard (everything but the module and masks)."""
        masked = None
        if self.masks:
            kept = sum(int(mask.sum()) for mask in self.masks.values())
            masked = 1.0 - kept / sum(mask.numel() for mask in self.masks.values())
        layers = {name: 1.0 - float(mask.float().mean()) for name, mask in (self.masks or {}).items()}
        return {"method": self.method, "accuracy": dict(self.accuracy), "sparsity": self.sparsity,
                "pruned_layers_sparsity": masked, "layer_sparsity": layers, "epochs": len(self.history),
                "stopped": self.stopped, "history": list(self.history), "details": dict(self.details)}


class _Stopped(Exception):
    """Raised inside the training loop when ``should_stop()`` says so."""


@dataclass(frozen=True)
class Training:
    """The training settings every recovery method shares (epochs per phase or round, peak learning
    rate, seed, batch size); their defaults live here."""

    epochs: int = 5
    lr: float = 3e-3
    seed: int = 0
    batch_size: int = 64


@dataclass
class _Recorder:
    """Collects the per-epoch history and forwards progress to the caller's callbacks."""

    data: Dataset
    on_epoch: Callable[[dict], None] | None = None
    on_step: Callable[[int, float], None] | None = None
    should_stop: Callable[[], bool] | None = None
    history: list[dict] = field(default_factory=list)
    tags: dict = field(default_factory=dict)
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    scores: Callable[[nn.Module], dict] | None = None  # the validation figures of a row (default: accuracy)

    def step(self, loss: float) -> None:
        self.losses.append(loss)
        self.steps += 1
        if self.on_step is not None:
            self.on_step(self.steps, loss)
        if self.should_stop is not None and self.should_stop():
            raise _Stopped

    def epoch(self, module: nn.Module) -> None:
        scores = self.scores(module) if self.scores else {"val_accuracy": _accuracy(module, self.data, "val")}
        row = {"epoch": len(self.history) + 1, "loss": sum(self.losses) / max(1, len(self.losses)), **scores,
               **self.tags}
        self.losses.clear()
        self.history.append(row)
        if self.on_epoch is not None:
            self.on_epoch(row)


def _accuracy(module: nn.Module, data: Dataset, split: str = "test") -> float | None:
    labels = getattr(data, f"y_{split}")
    return None if labels is None else accuracy(module, getattr(data, f"x_{split}"), labels)


def _hold(module: nn.Module, masks: Masks | None) -> None:
    """Zero the pruned weights of ``module`` in place."""
    if not masks:
        return
    for layer in prunable_layers(module):
        if layer.name in masks:
            apply_mask(layer.weight, masks[layer.name])


def _train(module: nn.Module, recorder: _Recorder, training: Training, masks: Masks | None,
           hook: Callable[[int], Masks | None] | None = None, objective=classification) -> bool:
    """Train ``module`` in place on ``objective`` (core.train.loop) with ``masks`` held; ``hook(step)`` may
    return new masks. True when stopped."""
    current = [masks]

    def on_step(step: int, loss: float) -> None:
        if hook is not None:
            current[0] = hook(step) or current[0]
        _hold(module, current[0])
        recorder.step(loss)

    _hold(module, masks)
    try:
        fit(module, recorder.data, training.epochs, training.lr, training.seed, training.batch_size,
            on_epoch=lambda epoch, loss: recorder.epoch(module), on_step=on_step, objective=objective)
    except _Stopped:
        module.eval()
        return True
    return False


def _require_training(model: ModelHandle) -> None:
    if not isinstance(model, ModelHandle):
        raise PrunelabError("recovery needs a loaded model (core.load_model) with its data, not a bare module")
    model.require("finetune")
    if model.output_kind == "causal":
        raise PrunelabError(f"{model.name}: this recovery method trains classifiers on labels; a language model "
                            f"recovers with method 'next_token' (next-token loss on the train split of its text)")
    if not model.data.trainable:
        raise PrunelabError(f"{model.name}: fine-tuning needs training data: the data '{model.data.name}' has no "
                            "x_train/y_train (pass --data with an .npz holding x_train and y_train)")


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


def _sparsity(module: nn.Module, dense: nn.Module) -> float:
    """Fraction of the dense model's prunable weights that are zero (or removed) in ``module``."""
    total = sum(layer.weight.numel() for layer in prunable_layers(dense))
    nonzero = sum(int(torch.count_nonzero(layer.weight)) for layer in prunable_layers(module))
    return 1.0 - nonzero / total


def _prune(module: nn.Module, plan: Plan, model: ModelHandle, masks: Masks | None) -> tuple[nn.Module, Masks | None]:
    """Apply ``plan`` to a copy of ``module``; weight masks are intersected with ``masks``."""
    module.eval()
    result = apply_plan(module, plan, model.data, model.example_input())
    if result.masks is None:
        return result.module, None
    masks = _intersect(masks, result.masks)
    _hold(result.module, masks)
    return result.module, masks


def _finish(method: str, module: nn.Module, model: ModelHandle, recorder: _Recorder, accuracies: dict,
            masks: Masks | None, stopped: bool, details: dict | None = None) -> Recovery:
    module.eval()
    accuracies = {**accuracies, "recovered": _accuracy(module, model.data)}
    return Recovery(method, module, recorder.history, accuracies, _sparsity(module, model.module),
                    masks, stopped, details or {})


def finetune(model: ModelHandle, plan: Plan, epochs: int = 5, *, lr: float = 3e-3, seed: int = 0,
             batch_size: int = 64, pruned: PruneResult | None = None, on_epoch=None, on_step=None,
             should_stop=None) -> Recovery:
    """Prune ``model`` with ``plan`` (or take the ready ``pruned`` result) and fine-tune it with the masks held.

    Raises PrunelabError when the source cannot be trained or its data has no training split.
    """
    _require_training(model)
    pruned = pruned if pruned is not None else apply_plan(model, plan)
    module = copy.deepcopy(pruned.module)
    recorder = _Recorder(model.data, on_epoch, on_step, should_stop)
    accuracies = {"dense": _accuracy(model.module, model.data), "one_shot": _accuracy(module, model.data)}
    stopped = _train(module, recorder, Training(epochs, lr, seed, batch_size), pruned.masks)
    return _finish("finetune", module, model, recorder, accuracies, pruned.masks, stopped)


def steps_per_epoch(model: ModelHandle, batch_size: int = 64) -> int:
    """Optimizer steps in one epoch over the model's training split."""
    _require_training(model)
    return math.ceil(len(model.data.x_train) / batch_size)


def gradual_prune(model: ModelHandle, plan: Plan, epochs: int = 10, *, schedule: PolynomialDecay | None = None,
                  lr: float = 3e-3, seed: int = 0, batch_size: int = 64, on_epoch=None, on_step=None,
                  should_stop=None) -> Recovery:
    """Train ``model`` while its sparsity follows ``schedule`` (by default ``default_schedule`` to plan.sparsity).

    At each pruning step the plan is applied with its sparsity set to the schedule's value; per-layer
    overrides are scaled by the same fraction of the way, so a per-layer plan ends at its own targets
    (its default schedule ends at its largest target). Masks only shrink. Unstructured plans only.
    Raises PrunelabError for a plan or schedule whose final sparsity is 0.
    """
    _require_training(model)
    _require_masks(plan, "gradual pruning")
    largest = max([plan.sparsity, *plan.layer_targets.values()])
    schedule = schedule or default_schedule(largest, epochs, steps_per_epoch(model, batch_size))
    if schedule.final_sparsity <= 0:
        raise PrunelabError("gradual pruning needs a target above 0%: set one on the plan (or --sparsity)")
    base = plan if plan.layer_targets else plan.replace(sparsity=schedule.final_sparsity)
    module = copy.deepcopy(model.module)
    recorder = _Recorder(model.data, on_epoch, on_step, should_stop, tags={"sparsity": 0.0})
    held: list[Masks | None] = [None]

    def hook(step: int) -> Masks | None:
        target = schedule(step)
        if not schedule.prunes_at(step) or target <= 0:
            return None
        fraction = target / schedule.final_sparsity
        pruned, held[0] = _prune(module, _scaled(base, lambda value: value * fraction), model, held[0])
        module.train()
        recorder.tags["sparsity"] = target
        return held[0]

    stopped = _train(module, recorder, Training(epochs, lr, seed, batch_size), None, hook)
    one_shot = apply_plan(model, base).module
    accuracies = {"dense": _accuracy(model.module, model.data), "one_shot": _accuracy(one_shot, model.data)}
    return _finish("gradual", module, model, recorder, accuracies, held[0], stopped,
                   {"schedule": schedule.to_dict()})


def iterative_prune(model: ModelHandle, plan: Plan, rounds: int = 3, epochs: int = 2, *, lr: float = 3e-3,
                    seed: int = 0, batch_size: int = 64, on_epoch=None, on_step=None,
                    should_stop=None) -> Recovery:
    """``rounds`` rounds of prune-then-fine-tune (``epochs`` each) reaching the plan's targets in the last round.

    The kept fraction shrinks geometrically: round r keeps (1 - target) ** (r / rounds). A channel
    plan prunes the already smaller model by 1 - (1 - target) ** (1 / rounds) each round.
    """
    _require_training(model)
    _require_masks(plan, "iterative pruning")
    if rounds < 1:
        raise PrunelabError(f"rounds must be at least 1, got {rounds}")
    module, masks, rows = copy.deepcopy(model.module), None, []
    recorder = _Recorder(model.data, on_epoch, on_step, should_stop)
    training, stopped = Training(epochs, lr, seed, batch_size), False
    for round_number in range(1, rounds + 1):
        exponent = 1 / rounds if plan.granularity == "channel" else round_number / rounds
        module, masks = _prune(module, _scaled(plan, lambda value: 1 - (1 - value) ** exponent), model, masks)
        pruned_accuracy = _accuracy(module, model.data)
        recorder.tags = {"phase": f"round {round_number}", "sparsity": _sparsity(module, model.module)}
        stopped = _train(module, recorder, training, masks)
        rows.append({"round": round_number, "sparsity": recorder.tags["sparsity"],
                     "pruned_accuracy": pruned_accuracy, "accuracy": _accuracy(module, model.data)})
        if stopped:
            break
    accuracies = {"dense": _accuracy(model.module, model.data),
                  "one_shot": _accuracy(apply_plan(model, plan).module, model.data)}
    return _finish("iterative", module, model, recorder, accuracies, masks, stopped, {"rounds": rows})


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


def lottery_ticket(model: ModelHandle, plan: Plan, rounds: int = 3, epochs: int = 10, *, rewind_epoch: int = 0,
                   lr: float = 3e-3, seed: int = 0, batch_size: int = 64, on_epoch=None, on_step=None,
                   should_stop=None) -> Recovery:
    """Find a winning ticket by iterative magnitude pruning with rewinding, and train its random-init control.

    The architecture of ``model`` is re-initialized with ``seed`` (its trained weights are not used)
    and trained dense for ``epochs``; the weights after ``rewind_epoch`` epochs (0: at initialization)
    are kept. Each of ``rounds`` rounds prunes the trained weights toward the plan's targets (kept
    fraction (1 - target) ** (r / rounds)), rewinds the survivors and retrains for ``epochs``. The
    control re-initializes with ``seed + 1``, applies the final masks and trains as long.
    accuracy gains ``"random_reinit"``. Unstructured plans only.
    """
    _require_training(model)
    _require_masks(plan, "lottery-ticket rewinding")
    if rounds < 1 or not 0 <= rewind_epoch < epochs:
        raise PrunelabError(f"need rounds >= 1 and 0 <= rewind epoch < epochs, got {rounds} and {rewind_epoch}")
    training = Training(epochs, lr, seed, batch_size)
    recorder = _Recorder(model.data, on_epoch, on_step, should_stop, tags={"phase": "dense", "sparsity": 0.0})
    module = copy.deepcopy(model.module)
    notes = reinitialize(module, seed)
    rewind_step = rewind_epoch * steps_per_epoch(model, batch_size)
    saved = {"state": _snapshot(module)}

    def keep_early(step: int) -> None:
        if step + 1 == rewind_step:
            saved["state"] = _snapshot(module)

    stopped = _train(module, recorder, training, None, keep_early)
    accuracies, masks, rows = {"dense": _accuracy(module, model.data)}, None, []
    for round_number in range(1, rounds + 1):
        if stopped:
            break
        pruned, masks = _prune(module, _scaled(plan, lambda value: 1 - (1 - value) ** (round_number / rounds)),
                               model, masks)
        accuracies["one_shot"] = _accuracy(pruned, model.data)
        module.load_state_dict(saved["state"])
        recorder.tags = {"phase": f"round {round_number}", "sparsity": _sparsity(pruned, model.module)}
        stopped = _train(module, recorder, training, masks)
        rows.append({"round": round_number, "sparsity": recorder.tags["sparsity"],
                     "accuracy": _accuracy(module, model.data)})
    control = copy.deepcopy(model.module)
    reinitialize(control, seed + 1)
    if not stopped and masks is not None:
        recorder.tags = {"phase": "random reinit", "sparsity": recorder.tags["sparsity"]}
        stopped = _train(control, recorder, training, masks)
        accuracies["random_reinit"] = _accuracy(control, model.data)
    details = {"rounds": rows, "rewind_epoch": rewind_epoch, "rewind_step": rewind_step,
               "not_reinitialized": notes}
    return _finish("lottery", module, model, recorder, accuracies, masks, stopped, details)
