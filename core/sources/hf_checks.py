"""Checks on a Hugging Face directory before ``transformers`` builds anything from it.

A 600-byte ``config.json`` can ask for billions of parameters beside a 76-byte weights file, and
one with ``auto_map`` can name Python files that ``transformers`` would import (asking on stdin
first). prunelab never runs a directory's code: every ``transformers`` call passes
``trust_remote_code=False``, and a config that needs custom code is refused here in one line.
The parameter count a config implies is counted on PyTorch's ``meta`` device (shapes only, no
memory) and held to ``model_limit()`` (PRUNELAB_MAX_MODEL_GB, as float32) and to the size of the
weights files beside it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from core.errors import PrunelabError
from core.limits import MODEL_LIMIT_VARIABLE, brief, clip, gib, model_limit

CONFIG_BYTES = 2**20          # a config.json is a few KB
WEIGHT_SUFFIXES = (".safetensors", ".bin")
MIN_BYTES_PER_PARAMETER = 1   # weights stored at 8 bits or more: fewer bytes than this means they are not all there


def read_config(directory: Path) -> dict:
    """The parsed ``config.json`` of ``directory``, bounded in size; PrunelabError naming the file otherwise."""
    path = directory / "config.json"
    size = path.stat().st_size
    if size > CONFIG_BYTES:
        raise PrunelabError(f"{path} is {gib(size)}; a config.json is a few KB (limit {gib(CONFIG_BYTES)})")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise PrunelabError(f"cannot read {path}: not JSON ({clip(error, 120)})") from None
    if not isinstance(values, dict):
        raise PrunelabError(f"{path} holds {type(values).__name__}, not a JSON object")
    return values


def refuse_remote_code(transformers, values: dict, directory: Path) -> None:
    """Refuse a config whose model type transformers does not know but whose ``auto_map`` names code."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = values.get("model_type")
    known = isinstance(model_type, str) and model_type in CONFIG_MAPPING
    if values.get("auto_map") and not known:
        raise PrunelabError(f"{directory / 'config.json'} asks for custom code (auto_map, model_type "
                            f"{brief(model_type)}); prunelab never runs code from a model directory: use a "
                            f"model type transformers knows, or load it yourself as file.py:factory")
    if not known:
        raise PrunelabError(f"{directory / 'config.json'}: model_type {brief(model_type)} is not one "
                            f"transformers {transformers.__version__} knows")


def check_parameters(build, directory: Path) -> int:
    """The parameter count of ``build()``, refused above the limit or beyond what the weights files hold.

    ``build`` makes the model a directory's config describes; it runs on the ``meta`` device,
    which allocates no storage.
    """
    try:
        with torch.device("meta"):
            count = sum(parameter.numel() for parameter in build().parameters())
    except Exception as error:  # transformers raises many kinds for a config it cannot build
        raise PrunelabError(f"cannot build the model {directory / 'config.json'} describes: "
                            f"{clip(error, 200)}") from None
    limit = model_limit()
    if count * 4 > limit:
        raise PrunelabError(f"{directory / 'config.json'} describes {count:,} parameters ({gib(count * 4)} as "
                            f"float32); the limit is {gib(limit)} (set {MODEL_LIMIT_VARIABLE} to allow more)")
    stored = sum(path.stat().st_size for path in directory.iterdir()
                 if path.suffix in WEIGHT_SUFFIXES and path.is_file())
    if stored < count * MIN_BYTES_PER_PARAMETER:
        raise PrunelabError(f"{directory / 'config.json'} describes {count:,} parameters but the weights files "
                            f"hold {stored:,} bytes: the config and the weights do not belong together")
    return count
