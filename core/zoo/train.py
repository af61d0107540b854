"""Train the demo models on the bundled digits data and write their weights (the loop: core/train/loop.py).

    python -m core.zoo.train [NAME ...] [--epochs N]

Deterministic for a seed; it needs scikit-learn only when assets/digits.npz is missing. The language
model tinylm has its own script: ``python -m core.zoo.tinylm`` (core/zoo/tinylm.py).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from core.data import DIGITS_FILE, write_digits_file
from core.train.loop import accuracy, fit
from core.zoo.registry import BUILTINS, CARDS, WEIGHTS

EPOCHS = {"digits-mlp": 60, "digits-cnn": 40, "digits-resnet": 20}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=[name for name, spec in BUILTINS.items() if spec.trainable])
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args(argv)
    if not DIGITS_FILE.exists():
        write_digits_file()
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    cards = json.loads(CARDS.read_text()) if CARDS.exists() else {}
    for name in args.names:
        spec = BUILTINS[name]
        torch.manual_seed(0)
        model, data = spec.factory(), spec.data()
        started = time.perf_counter()
        epochs = args.epochs or EPOCHS[name]
        fit(model, data, epochs,
            on_epoch=lambda epoch, loss: print(f"{name} epoch {epoch + 1}/{epochs} loss {loss:.3f}", flush=True))
        torch.save(model.state_dict(), spec.weights)
        cards[name] = {"params": sum(p.numel() for p in model.parameters()),
                       "val_accuracy": accuracy(model, data.x_val, data.y_val),
                       "test_accuracy": accuracy(model, data.x_test, data.y_test),
                       "epochs": epochs, "train_seconds": round(time.perf_counter() - started, 1)}
        print(name, cards[name], flush=True)
        CARDS.write_text(json.dumps(cards, indent=2) + "\n")


if __name__ == "__main__":
    main()
