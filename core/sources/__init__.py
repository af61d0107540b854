"""Load a model from any supported source into one ModelHandle.

Sources: a built-in name, ``file.py:factory`` or ``package.module:factory`` (with optional
``weights``), a ``.pt2`` from ``torch.export.save``, a fully pickled module ``.pt`` (only with
``trust=True``), or an ``.onnx`` file (inspection, evaluation and unstructured pruning only).
"""
from core.sources.handle import ModelHandle
from core.sources.load import load_model, parse_input_shape

__all__ = ["ModelHandle", "load_model", "parse_input_shape"]
