"""prunelab models: list the built-in demo models."""
from __future__ import annotations

from core.api import BUILTINS
from core.cli.options import print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the built-in demo models")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    cards = [spec.card() for spec in BUILTINS.values()]
    if args.json:
        print_json(cards)
        return 0
    print(f"{'name':<15} {'params':>11} {'input':<14} {'test':>8}  description")
    for card in cards:
        accuracy = "-" if card["test_accuracy"] is None else f"{card['test_accuracy']:.3f}"
        if card.get("test_perplexity") is not None:  # a language model: perplexity, lower is better
            accuracy = f"ppl {card['test_perplexity']:.1f}"
        shape = "x".join(str(size) for size in card["input_shape"])
        print(f"{card['name']:<15} {card['params'] or 0:>11,} {shape:<14} {accuracy:>8}  {card['description']}")
    return 0
