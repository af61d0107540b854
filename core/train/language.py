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
from core.train.recovery import Recovery, Training, _Recorder, _sparsity, _train


def _require_text(model: ModelHandle) -> None:
    if not isinstance(model, ModelHandle) or model.module is None:
        raise PrunelabError("next-token fine-tuning needs a loaded language model (core.load_model) with its module")
    if model.output_kind != "causal":
        raise PrunelabError(f"{model.name} is not a causal language model: next-token fine-tuning does not apply "
                            f"(use method finetune)")
    data = model.data
    if data is None or data.synthetic or data.x_train is None or len(data.x_train) == 0:
        raise PrunelabError(f"{model.name}: next-token fine-tuning needs text to train on: pass --data with a .txt "
                            f"(the model's tokenizer reads it) or an .npz of token ids with x_train")


def next_token_finetune(model: ModelHandle, plan: Plan, epochs: int = Training.epochs, *, lr: float = Training.lr,
                        seed: int = 0, batch_size: int = Training.batch_size, pruned: PruneResult | None = None,
                        on_epoch=None, on_step=None, should_stop=None) -> Recovery:
    """Prune ``model`` with ``plan`` (or take the ready ``pruned`` result) and fine-tune it on next-token
    loss over its train windows, the masks held. History rows carry ``val_perplexity``;
    ``details["perplexity"]`` holds the test perplexity ``{"dense", "one_shot", "recovered"}`` (each test
    window scored on its own, in torch). Raises PrunelabError for a model that is not a causal LM with text.
    """
    _require_text(model)
    pruned = pruned if pruned is not None else apply_plan(model, plan)
    module = copy.deepcopy(pruned.module)
    data = model.data
    def scores(trained) -> dict:
        return {"val_accuracy": None, "val_perplexity": perplexity(trained, data.x_val)}

    recorder = _Recorder(data, on_epoch, on_step, should_stop, scores=scores)
    figures = {"dense": perplexity(model.module, data.x_test), "one_shot": perplexity(module, data.x_test)}
    stopped = _train(module, recorder, Training(epochs, lr, seed, batch_size), pruned.masks, objective=next_token)
    figures["recovered"] = perplexity(module, data.x_test)
    module.eval()
    details = {"perplexity": figures, "train_windows": int(len(data.x_train)), "context": int(data.x_train.shape[1])}
    return Recovery("next_token", module, recorder.history, {"dense": None, "one_shot": None, "recovered": None},
                    _sparsity(module, model.module), pruned.masks, stopped, details)
