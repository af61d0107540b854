"""What a visitor of the dashboard may make the server load.

A visitor is not the person who started the server. So on the dashboard:

- Running code (importing ``file.py:factory`` or ``module:factory``, unpickling a module) is off
  unless the server was started with ``prunelab dashboard --allow-code`` (``PRUNELAB_ALLOW_CODE=1``),
  and then needs the visitor's tick for each load (the source's ``trust``).
- Files named by path must lie in the server's model folder (``--model-root``,
  ``PRUNELAB_MODEL_ROOT``) or be the visitor's own uploads. A path outside gets the same answer
  whether it exists or not.
- The model the server was started with was agreed to by whoever started it.

``check_source`` runs every time a session's model is looked up, not only when a visitor picks
one, so a source that reaches the session another way (a link, restored state) is held to the
same rules.

Nothing here touches Streamlit or torch.
"""
from __future__ import annotations

import os
from pathlib import Path

from core.errors import PrunelabError
from dashboard import uploads

ALLOW_CODE = "PRUNELAB_ALLOW_CODE"
STARTED_METRIC = "PRUNELAB_METRIC"  # the metric `prunelab dashboard MODEL --metric` named: agreed to
MODEL_ROOT = "PRUNELAB_MODEL_ROOT"
MODEL_SUFFIXES = (".pt2", ".onnx", ".pt", ".pth")


def code_allowed() -> bool:
    return os.environ.get(ALLOW_CODE, "") == "1"


def model_root() -> Path | None:
    """The folder whose files visitors may load by path, or None (uploads only)."""
    root = os.environ.get(MODEL_ROOT, "")
    return Path(root).resolve() if root else None


def describe(spec: str, builtins) -> tuple[str | None, bool]:
    """``(server path or None, whether loading runs code without trust)`` of a MODEL spec, as load_model reads it."""
    if spec in builtins:
        return None, False
    location, colon, _ = spec.rpartition(":")
    if colon and location and not spec.endswith(MODEL_SUFFIXES):
        return (location if location.endswith(".py") else None), True
    return spec, False


def check_path(path: str | None, what: str) -> None:
    """Refuse a path outside the model folder and the uploads, without saying whether it exists."""
    if not path or uploads.is_upload(path):
        return
    root = model_root()
    if root is None:
        raise PrunelabError(f"{what}: this dashboard opens uploaded files only (start it with "
                            f"`prunelab dashboard --model-root DIR` to open files on the server)")
    if not Path(path).resolve().is_relative_to(root):
        raise PrunelabError(f"{what}: only files under {root} (the dashboard's --model-root) can be opened")


def started_with(candidate: dict) -> bool:
    """True for exactly the source ``prunelab dashboard MODEL [--weights --data --input-shape --trust]`` named."""
    if not os.environ.get("PRUNELAB_MODEL"):
        return False
    started = {"spec": os.environ["PRUNELAB_MODEL"], "weights": os.environ.get("PRUNELAB_WEIGHTS") or None,
               "trust": os.environ.get("PRUNELAB_TRUST") == "1", "data": os.environ.get("PRUNELAB_DATA") or None}
    return all(candidate.get(key) == value for key, value in started.items())


def check_source(candidate: dict, builtins) -> None:
    """Raise PrunelabError when a visitor may not make the server load ``candidate``.

    ``candidate`` is a source dict (spec, weights, trust, data, input_shape, metric). It holds no memory
    of earlier consent beyond its own ``trust``, so it is checked wherever a source is loaded,
    however the source reached the session. The model named when the server was started
    (``PRUNELAB_MODEL``) counts as agreed to.
    """
    if candidate.get("metric") and candidate["metric"] == os.environ.get(STARTED_METRIC):
        _check_code("importing this metric", True)  # named with `prunelab dashboard --metric --allow-code`
    elif candidate.get("metric"):  # a metric is code, whatever the model is
        location = candidate["metric"].rpartition(":")[0]
        check_path(location if location.endswith(".py") else None, "the metric file")
        _check_code("importing this metric", candidate["trust"])
    if started_with(candidate):
        return
    for key in ("weights", "data"):
        check_path(candidate.get(key), f"the {key} file")
    if candidate["spec"] == os.environ.get("PRUNELAB_MODEL") and not candidate["trust"]:
        return
    path, imports = describe(candidate["spec"], builtins)
    check_path(path, "the model file")
    if imports or candidate["trust"]:
        _check_code("importing this architecture" if imports else "unpickling this module", candidate["trust"])


def _check_code(what: str, trusted: bool) -> None:
    """Code runs only on a dashboard started with --allow-code, and only after the visitor's tick."""
    if not code_allowed():
        raise PrunelabError(f"{what} runs Python code on the server, which this dashboard does not allow; "
                            f"whoever runs it can start it with `prunelab dashboard --allow-code`")
    if not trusted:
        raise PrunelabError(f"{what} runs Python code on the server: tick the box to trust it first")
