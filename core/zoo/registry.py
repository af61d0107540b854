"""The registry of built-in demo models: name -> architecture, input shape, data and weights."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from core.data import Dataset, digits
from core.errors import PrunelabError
from core.files import ASSETS
from core.zoo.models import DigitsCNN, DigitsMLP, DigitsResNet

WEIGHTS = ASSETS / "weights"
CARDS = ASSETS / "models.json"


@dataclass(frozen=True)
class Builtin:
    """One demo model: how to build it, what it eats, and where its trained weights live."""

    name: str
    description: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    image_size: int

    @property
    def weights(self) -> Path:
        return WEIGHTS / f"{self.name}.pt"

    def data(self) -> Dataset:
        return digits(self.image_size)

    def card(self) -> dict:
        """Name, description, params, input shape and the test accuracy recorded at training."""
        cards = json.loads(CARDS.read_text()) if CARDS.exists() else {}
        recorded = cards.get(self.name, {})
        return {"name": self.name, "description": self.description,
                "params": recorded.get("params"), "input_shape": list(self.input_shape),
                "test_accuracy": recorded.get("test_accuracy")}


BUILTINS: dict[str, Builtin] = {spec.name: spec for spec in (
    Builtin("digits-mlp", "LeNet-300-100 MLP on 8x8 digits", DigitsMLP, (1, 1, 8, 8), 8),
    Builtin("digits-cnn", "Small conv net (3 conv + 2 linear) on 8x8 digits", DigitsCNN, (1, 1, 8, 8), 8),
    Builtin("digits-resnet", "ResNet-style net with residual, concat and depthwise blocks on 32x32 digits",
            DigitsResNet, (1, 1, 32, 32), 32),
)}

DEFAULT_MODEL = "digits-cnn"


def builtin(name: str) -> Builtin:
    if name not in BUILTINS:
        raise PrunelabError(f"unknown built-in model '{name}' (choose from: {', '.join(BUILTINS)})")
    return BUILTINS[name]
