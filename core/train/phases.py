"""The one loop every recovery method runs in (core.train.recovery holds the methods).

A method is a schedule of masks: a generator that yields the ``Phase``s to train (a module, the
masks held on it, and ``update_mask(step)`` for masks that change during training), is sent whether
each phase was stopped, and returns the ``Recovery``. ``run`` trains every phase with the shared
``Training`` settings through ``core.train.loop.fit``, re-applying the masks after every optimizer
step, so AdamW's momentum and weight decay never move a pruned weight off zero. A phase names what
it minimizes (an objective of core.train.loop: labels for classifiers, next tokens for language
models) and the validation figures of its epochs' rows. Progress reaches the
caller through ``on_epoch(row)`` (row is the new history entry), ``on_step(step, loss)``, and
``should_stop()``, polled after every step; a stopped run returns what it has, with ``stopped`` set.
"""
from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import torch
from torch import nn

from core.data import Dataset
from core.errors import PrunelabError
from core.inspect import prunable_layers
from core.prune.plan import Plan
from core.prune.unstructured import apply_mask
from core.sources import ModelHandle
from core.train.loop import accuracy, classification, fit

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
    scores: Callable[[nn.Module, Dataset], dict] | None = None  # the current phase's validation figures

    def step(self, loss: float) -> None:
        self.losses.append(loss)
        self.steps += 1
        if self.on_step is not None:
            self.on_step(self.steps, loss)
        if self.should_stop is not None and self.should_stop():
            raise _Stopped

    def epoch(self, module: nn.Module) -> None:
        scores = (self.scores or validation_accuracy)(module, self.data)
        row = {"epoch": len(self.history) + 1, "loss": sum(self.losses) / max(1, len(self.losses)), **scores,
               **self.tags}
        self.losses.clear()
        self.history.append(row)
        if self.on_epoch is not None:
            self.on_epoch(row)


def accuracy_on(module: nn.Module, data: Dataset, split: str = "test") -> float | None:
    labels = getattr(data, f"y_{split}")
    return None if labels is None else accuracy(module, getattr(data, f"x_{split}"), labels)


def validation_accuracy(module: nn.Module, data: Dataset) -> dict:
    """A classifier's validation figure for a history row: ``{"val_accuracy"}`` (None without labels)."""
    return {"val_accuracy": accuracy_on(module, data, "val")}


def hold(module: nn.Module, masks: Masks | None) -> None:
    """Zero the pruned weights of ``module`` in place."""
    if not masks:
        return
    for layer in prunable_layers(module):
        if layer.name in masks:
            apply_mask(layer.weight, masks[layer.name])


def _train(phase: Phase, recorder: _Recorder, training: Training) -> bool:
    """Train ``phase.module`` in place on its objective with its masks held after every step (its
    ``update_mask(step)`` may return new ones). True when stopped."""
    module, hook, current = phase.module, phase.update_mask, [phase.masks]
    recorder.scores = phase.scores

    def on_step(step: int, loss: float) -> None:
        if hook is not None:
            current[0] = hook(step) or current[0]
        hold(module, current[0])
        recorder.step(loss)

    hold(module, phase.masks)
    try:
        fit(module, recorder.data, training.epochs, training.lr, training.seed, training.batch_size,
            on_epoch=lambda epoch, loss: recorder.epoch(module), on_step=on_step, objective=phase.objective)
    except _Stopped:
        module.eval()
        return True
    return False


def require_training(model: ModelHandle) -> None:
    """The check of the methods that train a classifier on labels: raises PrunelabError for a bare module,
    a source that cannot be trained, a language model or data without a training split."""
    if not isinstance(model, ModelHandle):
        raise PrunelabError("recovery needs a loaded model (core.load_model) with its data, not a bare module")
    model.require("finetune")
    if model.output_kind == "causal":
        raise PrunelabError(f"{model.name}: this recovery method trains classifiers on labels; a language model "
                            f"recovers with method 'next_token' (next-token loss on the train split of its text)")
    if not model.data.trainable:
        raise PrunelabError(f"{model.name}: fine-tuning needs training data: the data '{model.data.name}' has no "
                            "x_train/y_train (pass --data with an .npz holding x_train and y_train)")


def sparsity_of(module: nn.Module, dense: nn.Module) -> float:
    """Fraction of the dense model's prunable weights that are zero (or removed) in ``module``."""
    total = sum(layer.weight.numel() for layer in prunable_layers(dense))
    nonzero = sum(int(torch.count_nonzero(layer.weight)) for layer in prunable_layers(module))
    return 1.0 - nonzero / total


@dataclass
class Phase:
    """One stretch of training a method asks for: ``module`` trained in place for the run's epochs with
    ``masks`` held after every optimizer step. ``update_mask(step)`` may return new masks after a step
    (the one hole torch.ao's BaseSparsifier leaves a method); ``tags`` (None: keep the previous phase's)
    go into every history row. ``objective(model, inputs, labels, generator) -> loss`` is what the phase
    minimizes (core.train.loop) and ``scores(module, data)`` the validation figures of each epoch's row."""

    module: nn.Module
    masks: Masks | None = None
    tags: dict | None = None
    update_mask: Callable[[int], Masks | None] | None = None
    objective: Callable[..., torch.Tensor] = classification
    scores: Callable[[nn.Module, Dataset], dict] = validation_accuracy


@dataclass
class Run:
    """What a method's schedule reads: the model and plan, the shared Training settings, the history."""

    model: ModelHandle
    plan: Plan
    training: Training
    recorder: _Recorder

    def accuracy(self, module: nn.Module) -> float | None:
        """Test accuracy of ``module`` on the model's data (None without labels)."""
        return accuracy_on(module, self.model.data)

    def finish(self, method: str, module: nn.Module, accuracies: dict, masks: Masks | None, stopped: bool,
               details: dict | None = None) -> Recovery:
        """The Recovery of ``module``: its test accuracy joins ``accuracies`` (unless they hold "recovered"
        already), its sparsity is counted."""
        module.eval()
        if "recovered" not in accuracies:
            accuracies = {**accuracies, "recovered": self.accuracy(module)}
        return Recovery(method, module, self.recorder.history, accuracies, sparsity_of(module, self.model.module),
                        masks, stopped, details or {})


Schedule = Generator[Phase, bool, Recovery]  # yields phases, is sent whether each one stopped, returns the result


def run(method: Callable[..., Schedule], model: ModelHandle, plan: Plan, training: Training = Training(), *,
        check: Callable[[ModelHandle], None] = require_training, on_epoch=None, on_step=None, should_stop=None,
        **options) -> Recovery:
    """Train ``model`` pruned by ``plan`` through every phase ``method(run, **options)`` yields, after
    ``check(model)`` (``require_training``: a classifier with labelled training data) says it can be trained.

    Raises PrunelabError when the check fails, or for anything the method refuses.
    """
    check(model)
    context = Run(model, plan, training, _Recorder(model.data, on_epoch, on_step, should_stop))
    schedule = method(context, **options)
    try:
        phase = next(schedule)
        while True:
            if phase.tags is not None:
                context.recorder.tags = phase.tags
            phase = schedule.send(_train(phase, context.recorder, training))
    except StopIteration as end:
        return end.value
