"""Saving a pruned model so it can be used without prunelab or its source code.

``state_dict.pt`` holds the weights under the original model's key names (shapes shrink under
channel plans) and loads with ``torch.load(..., weights_only=True)``; ``model.pt2`` is a
``torch.export`` program that reloads without the model's source.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from core.errors import PrunelabError, error_line

STATE_FILE = "state_dict.pt"
PROGRAM_FILE = "model.pt2"


def save_pruned(module: nn.Module, example_input: torch.Tensor, out_dir) -> dict[str, Path]:
    """Write ``state_dict.pt`` and ``model.pt2`` of ``module`` into ``out_dir`` (created if missing).

    Returns ``{"state_dict": path, "program": path}``. Raises PrunelabError when the directory
    cannot be written or torch.export cannot capture the model.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PrunelabError(f"cannot create output directory {out}: {error.strerror}") from None
    module = module.eval()
    state = {key: value.detach().clone() for key, value in module.state_dict().items()}
    torch.save(state, out / STATE_FILE)
    torch.export.save(_export(module, example_input), out / PROGRAM_FILE)
    return {"state_dict": out / STATE_FILE, "program": out / PROGRAM_FILE}


def module_bytes(module: nn.Module, example_input: torch.Tensor, kind: str) -> bytes:
    """``module`` as the bytes of one file: ``state_dict`` (what ``state_dict.pt`` holds) or ``pt2`` (what
    ``model.pt2`` holds, with the same dynamic batch dimension). Raises PrunelabError for another kind."""
    buffer = io.BytesIO()
    module = module.eval()
    if kind == "state_dict":
        torch.save({key: value.detach().clone() for key, value in module.state_dict().items()}, buffer)
    elif kind == "pt2":
        torch.export.save(_export(module, example_input), buffer)
    else:
        raise PrunelabError(f"unknown file kind '{kind}' (choose from state_dict, pt2)")
    return buffer.getvalue()


def _export(module: nn.Module, example_input: torch.Tensor):
    """A torch.export program with a dynamic batch dimension (a fixed batch if the model insists)."""
    pair = torch.cat([example_input[:1], example_input[:1]])  # batch 2, so the batch size is not specialized
    batch = torch.export.Dim("batch", min=1, max=65536)
    error = None
    for args, shapes in (((pair,), ({0: batch},)), ((example_input,), None)):
        try:
            with torch.no_grad():
                return torch.export.export(module, args, dynamic_shapes=shapes)
        except Exception as failure:  # arbitrary user code may not be exportable
            error = failure
    raise PrunelabError(f"torch.export cannot capture the pruned model for {PROGRAM_FILE}: "
                        f"{error_line(error, with_type=True)}") from None


def load_pruned(out_dir) -> nn.Module:
    """The pruned model saved by ``save_pruned``, from its ``model.pt2`` (no source needed)."""
    path = Path(out_dir)
    path = path / PROGRAM_FILE if path.is_dir() else path
    if not path.exists():
        raise PrunelabError(f"no {PROGRAM_FILE} at {path.parent}")
    return torch.export.load(path).module()


def load_state(out_dir) -> dict[str, torch.Tensor]:
    """The weights saved by ``save_pruned``, loaded with ``weights_only=True``."""
    path = Path(out_dir)
    path = path / STATE_FILE if path.is_dir() else path
    if not path.exists():
        raise PrunelabError(f"no {STATE_FILE} at {path.parent}")
    return torch.load(path, weights_only=True)
