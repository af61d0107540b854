"""Next-token fine-tuning: a pruned causal language model trained back on the train split of its text.

The plan prunes once; then the model learns to predict each next token of the train windows
(core.train.loop.next_token) with its pruned weights held at zero after every optimizer step,
exactly as ``finetune`` holds a classifier's. Each epoch reports the validation perplexity, and
the run ends with the test perplexity of the dense, the one-shot and the recovered model.
"""
from __future__ import annotations

import copy

from core.errors import PrunelabError
from core.prune.engine import PruneResult, apply_plan
from core.prune.plan import Plan
from core.sources import ModelHandle
from core.train.loop import next_token, perplexity
from core.train.phases import Phase, Recovery, Run, Schedule, Training, run


def require_text(model: ModelHandle) -> None:
    """The check of next-token fine-tuning (in place of core.train.phases.require_training): raises
    PrunelabError unless ``model`` is a loaded causal language model with a train split of its text."""
    if not isinstance(model, ModelHandle) or model.module is None:
        raise PrunelabError("next-token fine-tuning needs a loaded language model (core.load_model) with its module")
    if model.output_kind != "causal":
        raise PrunelabError(f"{model.name} is not a causal language model: next-token fine-tuning does not apply "
                            f"(use method finetune)")
    data = model.data
    if data is None or data.synthetic or data.x_train is None or len(data.x_train) == 0:
        raise PrunelabError(f"{model.name}: next-token fine-tuning needs text to train on: pass --data with a .txt "
                            f"(the model's tokenizer reads it) or an .npz of token ids with x_train")


def validation_perplexity(module, data) -> dict:
    """A language model's validation figure for a history row (it has no accuracy)."""
    return {"val_accuracy": None, "val_perplexity": perplexity(module, data.x_val)}


def next_token_schedule(run: Run, pruned: PruneResult | None = None) -> Schedule:
    """Prune once with the plan (or take the ready ``pruned`` result), then one phase on next-token loss
    with its masks held; the test perplexity of the dense, one-shot and recovered model go in details."""
    model, data = run.model, run.model.data
    pruned = pruned if pruned is not None else apply_plan(model, run.plan)
    module = copy.deepcopy(pruned.module)
    figures = {"dense": perplexity(model.module, data.x_test), "one_shot": perplexity(module, data.x_test)}
    stopped = yield Phase(module, pruned.masks, objective=next_token, scores=validation_perplexity)
    figures["recovered"] = perplexity(module, data.x_test)
    details = {"perplexity": figures, "train_windows": int(len(data.x_train)), "context": int(data.x_train.shape[1])}
    no_accuracy = {"dense": None, "one_shot": None, "recovered": None}  # its figure is the perplexity
    return run.finish("next_token", module, no_accuracy, pruned.masks, stopped, details)


def next_token_finetune(model: ModelHandle, plan: Plan, epochs: int = Training.epochs, *, lr: float = Training.lr,
                        seed: int = 0, batch_size: int = Training.batch_size, pruned: PruneResult | None = None,
                        on_epoch=None, on_step=None, should_stop=None) -> Recovery:
    """Prune ``model`` with ``plan`` (or take the ready ``pruned`` result) and fine-tune it on next-token
    loss over its train windows, the masks held. History rows carry ``val_perplexity``;
    ``details["perplexity"]`` holds the test perplexity ``{"dense", "one_shot", "recovered"}`` (each test
    window scored on its own, in torch). Raises PrunelabError for a model that is not a causal LM with text.
    """
    return run(next_token_schedule, model, plan, Training(epochs, lr, seed, batch_size), check=require_text,
               on_epoch=on_epoch, on_step=on_step, should_stop=should_stop, pruned=pruned)
