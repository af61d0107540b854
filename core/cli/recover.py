"""prunelab recover: train accuracy back by gradual, iterative or lottery-ticket pruning, or a
language model's perplexity by next-token fine-tuning.

    prunelab recover digits-cnn --method gradual --sparsity 0.95 --epochs 8
    prunelab recover digits-cnn --method lottery --sparsity 0.98 --rounds 3 --epochs 10 --rewind-epoch 1
    prunelab recover tinylm --method next_token --plan plan.yaml --epochs 3

Also holds what ``prunelab prune --finetune EPOCHS`` uses: its arguments, the epoch progress bar
on stderr and the measurement of the recovered model.
"""
from __future__ import annotations

import io
import sys

import torch

from core.api import (
    LiveEvaluator,
    Plan,
    Training,
    finetune,
    next_token_finetune,
    recovery_epochs,
    run_recovery,
    write_atomic,
)
from core.cli.evaluate import load_plan, progress
from core.cli.options import add_model_arguments, model_from, print_json
from core.errors import PrunelabError

# The methods this command offers (names as in the methods table) and their progress bars' labels.
METHODS = {"gradual": "gradual pruning", "iterative": "iterative pruning", "lottery": "lottery ticket",
           "next_token": "next-token"}


class EpochBar:
    """An ``on_epoch`` callback drawing ``[#####.....] 3/5 loss 0.41 val 98.1%`` on stderr."""

    def __init__(self, total: int, label: str, width: int = 24):
        self.total, self.label, self.width = max(1, total), label, width

    def __call__(self, row: dict) -> None:
        done = min(row["epoch"], self.total)
        filled = self.width * done // self.total
        validation = "" if row["val_accuracy"] is None else f" val {row['val_accuracy']:.1%}"
        if row.get("val_perplexity") is not None:
            validation = f" val perplexity {row['val_perplexity']:.2f}"
        phase = f" {row['phase']}" if "phase" in row else ""
        sys.stderr.write(f"\rprunelab: {self.label}{phase} [{'#' * filled}{'.' * (self.width - filled)}] "
                         f"{done}/{self.total} loss {row['loss']:.3f}{validation}   ")
        if done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def add_finetune_arguments(parser) -> None:
    """--finetune EPOCHS and --lr, for ``prunelab prune``."""
    group = parser.add_argument_group("recovery")
    group.add_argument("--finetune", type=int, default=0, metavar="EPOCHS",
                       help="fine-tune the pruned model this many epochs with its pruned weights held at zero "
                            "(needs training data: a built-in, or --data with x_train/y_train)")
    group.add_argument("--lr", type=float, default=Training.lr,
                       help=f"peak learning rate for fine-tuning (default {Training.lr:g})")


def finetuned(handle, plan: Plan, pruned, report: dict, args) -> tuple[dict, object]:
    """Fine-tune ``pruned`` for ``args.finetune`` epochs; the report now measures the recovered model.

    The one-shot metrics move to ``report["one_shot"]``, the run's summary to ``report["recovery"]``.
    Returns the report and the artifact to write.
    """
    if args.finetune < 1:
        raise PrunelabError(f"--finetune needs at least 1 epoch, got {args.finetune}")
    language = handle.output_kind == "causal"  # a language model learns its text's next tokens
    progress(f"fine-tuning {args.finetune} epochs{' on next-token loss' if language else ''} with the masks held")
    tune = next_token_finetune if language else finetune
    result = tune(handle, plan, args.finetune, lr=args.lr, seed=plan.seed, pruned=pruned,
                  on_epoch=EpochBar(args.finetune, "fine-tuning"))
    evaluator = LiveEvaluator(handle, threads=args.threads, batch_size=args.batch_size, quantize=args.quantize,
                              live=False)
    measured, artifact = evaluator.measure_module(result.module, plan)  # against the same dense baseline
    accuracy = result.accuracy
    report = {**report, "one_shot": report["pruned"], "pruned": measured["pruned"], "recovery": result.summary(),
              "notes": list(pruned.notes) + measured["notes"]}  # what pruning did, then the saved model's figures
    if accuracy["recovered"] is not None:
        report["notes"] = [f"fine-tuned {len(result.history)} epochs with pruned weights held at zero: test accuracy "
                           f"one-shot {accuracy['one_shot']:.1%} -> recovered {accuracy['recovered']:.1%} "
                           f"(dense {accuracy['dense']:.1%}); {result.sparsity:.1%} of prunable weights zero"
                           ] + report["notes"]
    figures = result.details.get("perplexity")
    if figures:
        report["notes"] = [f"fine-tuned {len(result.history)} epochs on next-token loss with pruned weights held "
                           f"at zero: test perplexity one-shot {figures['one_shot']:.2f} -> recovered "
                           f"{figures['recovered']:.2f} (dense {figures['dense']:.2f})"] + report["notes"]
    return report, artifact


def register(subparsers) -> None:
    parser = subparsers.add_parser("recover", help="gradual, iterative or lottery-ticket pruning with training, "
                                                   "or next-token fine-tuning of a language model")
    add_model_arguments(parser)
    parser.add_argument("--method", choices=METHODS, default="gradual", help="how to prune while training")
    parser.add_argument("--plan", help="a plan file; default: global L1 unstructured at --sparsity")
    parser.add_argument("--sparsity", type=float, default=0.9, help="target sparsity without --plan (default 0.9)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of training (per round for iterative/lottery)")
    parser.add_argument("--rounds", type=int, default=3, help="prune-then-train rounds (iterative, lottery)")
    parser.add_argument("--rewind-epoch", type=int, default=0, help="lottery: rewind to weights after this epoch")
    parser.add_argument("--lr", type=float, default=Training.lr, help=f"peak learning rate (default {Training.lr:g})")
    parser.add_argument("--seed", type=int, default=0, help="seed for data order and initialization")
    parser.add_argument("--save", help="write the recovered model's state_dict.pt here")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    handle = model_from(args)
    plan = load_plan(args.plan) if args.plan else Plan(criterion="l1", scope="global", sparsity=args.sparsity)
    bar = EpochBar(recovery_epochs(args.method, args.epochs, args.rounds), METHODS[args.method])
    result = run_recovery(handle, plan, args.method, epochs=args.epochs, lr=args.lr, rounds=args.rounds,
                          rewind_epoch=args.rewind_epoch, seed=args.seed, on_epoch=bar)
    if args.save:
        buffer = io.BytesIO()
        torch.save(result.module.state_dict(), buffer)
        write_atomic(args.save, buffer.getvalue())
    summary = result.summary()
    if args.json:
        print_json(summary)
        return 0
    print(f"{handle.name}: {args.method} to {plan.sparsity:g} ({plan.granularity}, {plan.criterion}, {plan.scope})")
    for name, value in summary["accuracy"].items():
        name = "ticket" if args.method == "lottery" and name == "recovered" else name.replace("_", " ")
        if value is not None or "perplexity" not in summary["details"]:
            print(f"{name + ' accuracy':<26} {'-' if value is None else f'{value:.1%}':>8}")
    for name, value in summary["details"].get("perplexity", {}).items():
        print(f"{name.replace('_', ' ') + ' test perplexity':<26} {value:>8.2f}")
    print(f"{'prunable weights zero':<26} {result.sparsity:>8.1%}")
    if args.save:
        print(f"wrote {args.save}")
    return 0
