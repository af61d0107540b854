"""Importing a person's own code: a ``file.py`` run from its path, or an importable module.

Below both its users (core.sources.load for model factories, core.metric for metrics), so neither imports
the other to reach it.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from core.errors import PrunelabError, error_line


def import_location(location: str):
    """The namespace of a user's ``file.py`` (executed) or an importable module; PrunelabError otherwise."""
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise PrunelabError(f"file not found: {path}")
        name = f"prunelab_user_{abs(hash(path.resolve()))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        namespace = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = namespace  # dataclasses and pickling look modules up by name
        try:
            module_spec.loader.exec_module(namespace)
        except Exception as error:
            raise PrunelabError(f"importing {path} raised {error_line(error, with_type=True)}") from None
        return namespace
    try:
        return importlib.import_module(location)
    except Exception as error:
        raise PrunelabError(f"cannot import module '{location}': {error}") from None
