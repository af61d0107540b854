"""ModelHandle: a loaded model with everything prunelab needs to prune and measure it."""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.data import Dataset
from core.errors import PrunelabError

# What each source can do; an operation outside its set is refused in one sentence.
CAPABILITIES = {
    "builtin": {"inspect", "evaluate", "unstructured", "channel", "finetune"},
    "factory": {"inspect", "evaluate", "unstructured", "channel", "finetune"},
    "pickle": {"inspect", "evaluate", "unstructured", "channel", "finetune"},
    "huggingface": {"inspect", "evaluate", "unstructured", "channel", "finetune"},
    "pt2": {"inspect", "evaluate", "unstructured", "finetune"},
    "onnx": {"inspect", "evaluate", "unstructured"},
}

WHY_NOT = {
    ("onnx", "channel"): "an ONNX file is a fixed graph: physical channel removal needs the PyTorch model "
                         "(pass file.py:factory, a built-in name or a trusted pickled module)",
    ("onnx", "finetune"): "an ONNX file cannot be trained: fine-tuning needs the PyTorch model",
    ("pt2", "channel"): "a .pt2 program has fixed tensor shapes, so channels cannot be removed physically: "
                        "pass file.py:factory with --weights for channel pruning",
}


@dataclass(eq=False)
class ModelHandle:
    """A model ready for prunelab.

    ``module`` is the PyTorch model in eval mode (``None`` for an ``.onnx`` source, whose
    graph lives at ``onnx_path``). ``input_shape`` includes a batch dimension of 1. ``data``
    always exists: the built-in split, the user's data, or seeded random inputs (unlabelled).
    ``fixed_batch`` is set when the module only accepts that batch size (a ``.pt2`` program).
    ``output_kind`` is ``"logits"`` (a classifier: accuracy or top-1 agreement), ``"embedding"``
    (an encoder: cosine similarity and nearest-neighbour agreement with the dense model) or
    ``"causal"`` (a decoder language model: next-token logits at every position; perplexity) or
    ``"outputs"`` (anything else: a tuple, list or dict of tensors, or one tensor that is not
    (batch, classes), each measured on its own; ``outputs`` is their layout, see core.outputs).
    ``vocab_size`` and ``pad_id`` are set for token models (int64 ``input_ids``), ``encode`` and
    ``tokenizer`` when a tokenizer is known: ``encode(sentences, seq_len) -> ids``. ``metric`` is the
    person's own metric (core.metric.Metric) or None: every evaluation, sensitivity sweep and
    allocation of this model reports its named numbers beside the built-in figures.
    """

    name: str
    source: str
    module: nn.Module | None
    input_shape: tuple[int, ...]
    data: Dataset
    onnx_path: Path | None = None
    description: str = ""
    fixed_batch: int | None = None  # a .pt2 program is traced for one batch size only
    output_kind: str = "logits"
    outputs: tuple = ()  # ((name, shape per item), ...) when output_kind is "outputs"
    vocab_size: int | None = None
    pad_id: int = 0
    encode: object = field(default=None, repr=False)
    tokenizer: object = field(default=None, repr=False)
    metric: object = field(default=None, repr=False)
    _digest: str | None = field(default=None, repr=False)

    @property
    def padding_id(self) -> int | None:
        """The id whose positions are padding, not data: ``pad_id`` for a token model, None otherwise."""
        return self.pad_id if self.vocab_size is not None else None

    def can(self, operation: str) -> bool:
        return operation in CAPABILITIES[self.source]

    def require(self, operation: str) -> None:
        """Raise PrunelabError in one sentence when this source cannot do ``operation``."""
        if not self.can(operation):
            reason = WHY_NOT.get((self.source, operation), f"a {self.source} source does not support {operation}")
            raise PrunelabError(f"{self.name}: {reason}")

    def with_module(self, module: nn.Module) -> ModelHandle:
        """This handle with another module of the same model (a fine-tuned copy), digested afresh."""
        return dataclasses.replace(self, module=module, _digest=None)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """Real inputs from the data when there are enough, shaped ``(batch, *input_shape[1:])``."""
        x = self.data.x_test
        if len(x) >= batch:
            return torch.from_numpy(np.ascontiguousarray(x[:batch]))
        dtype = torch.int64 if self.vocab_size is not None else torch.float32
        return torch.zeros((batch, *self.input_shape[1:]), dtype=dtype)

    @property
    def digest(self) -> str:
        """A fingerprint of the weights (or the ONNX file) and the input shape, for cache keys."""
        if self._digest is None:
            hasher = hashlib.sha256(repr((self.source, self.input_shape)).encode())
            if self.module is not None:
                for key, tensor in self.module.state_dict().items():
                    hasher.update(key.encode())
                    hasher.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            else:
                hasher.update(Path(self.onnx_path).read_bytes())
            self._digest = hasher.hexdigest()[:16]
        return self._digest
