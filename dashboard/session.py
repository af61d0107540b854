"""The one place the dashboard calls ``core``: cached loaders, per-session state, plain values out.

Conventions for every page in ``dashboard/pages/`` (and for the ones still to come:
sensitivity, recover, history):

- A page imports ``from dashboard import session, charts`` and nothing from ``core``, ``torch``
  or ``onnxruntime``. If a page needs something new from the engine, add a small function here
  that returns plain values (dicts, lists, numbers, bytes, DataFrames).
- Shared caches are read-only. ``st.cache_resource`` holds models and evaluators (one object for
  every visitor; calls into them run under the model's lock, because a forward pass with hooks on
  a shared module is not thread-safe). ``st.cache_data`` holds results (each caller gets a copy;
  every cache has ``max_entries``). Unhashable arguments start with ``_`` and a digest is passed
  next to them as the cache key.
- Per-session state lives in ``st.session_state`` under the plain keys below (``MODEL``,
  ``PLAN``, ...). Widgets use keys starting with ``w.``; Streamlit drops a widget's state when
  its page is not rendered, so an ``on_change`` callback copies the value into a plain key, and
  the page seeds the widget from that key (``seed``) before drawing it.
- Work that can fail goes inside ``with session.guard():`` so the person sees one ``st.error``
  line, never a stack trace, and the rest of the page keeps working.
- Long jobs (sensitivity, fine-tuning) run in a worker thread that never calls ``st.*``; the page
  polls its progress from the script thread into ``st.status``/``st.progress`` (see ``start_sensitivity``).
- Session functions for one page's long job or store live in a sibling module (``sweeps.py``,
  ``recovery_jobs.py``, ``run_history.py``) re-exported at the bottom of this file, so pages
  still call ``session.<name>``.
- A new page: add its file to ``dashboard/pages/`` and one line to ``PAGES`` in ``dashboard/app.py``
  (file, title, icon, url path); start it with ``st.title`` and one ``st.caption`` saying what it is for.
"""
from __future__ import annotations

import contextlib
import io
import os
import threading

import streamlit as st

from core import api
from core.errors import PrunelabError, error_line
from core.zoo.registry import BUILTINS, DEFAULT_MODEL
from dashboard.uploads import MAX_UPLOAD_BYTES, UPLOAD_SUFFIXES, _UPLOADS, save_upload, shown  # noqa: F401

# Plain per-session keys (widget state is mirrored into these).
MODEL = "prunelab.model"        # dict: spec, weights, trust, data, input_shape (all str or None)
PLAN = "prunelab.plan"          # dict accepted by core.prune.plan.Plan.from_dict
LAYER = "prunelab.layer"        # the layer shown on the Layers page
LAST_REPORT = "prunelab.report"  # the last measured report, for pages that only display it
QUANTIZE = "prunelab.quantize"  # None, or an INT8 mode of core.deploy.quantize applied before measuring
SENSITIVITY = "prunelab.sensitivity"  # the last sensitivity sweep result (set by the Sensitivity page)

GRANULARITIES = api.GRANULARITIES
SCOPES = api.SCOPES
MAX_SPARSITY = 0.95
_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


# ---------------------------------------------------------------- errors

@contextlib.contextmanager
def guard(what: str = ""):
    """Show a failure inside the block as one ``st.error`` line; the rest of the page keeps running."""
    try:
        yield
    except PrunelabError as error:
        st.error(shown(f"{what}: {error}" if what else str(error)))
    except Exception as error:  # anything else from the engine: one line, no traceback
        st.error(shown(f"{what + ': ' if what else ''}{error_line(error, with_type=True)}"))


def _lock(key: str) -> threading.RLock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.RLock())


# ---------------------------------------------------------------- models

def default_source() -> dict:
    """The model a new visitor sees: PRUNELAB_MODEL or digits-cnn."""
    return {"spec": os.environ.get("PRUNELAB_MODEL") or DEFAULT_MODEL, "weights": None, "trust": False,
            "data": None, "input_shape": None}


def granularities() -> list[str]:
    """The granularities this session's model can take (no channels for .onnx and .pt2 sources)."""
    return [name for name in GRANULARITIES if name != "channel" or can("channel")]


def builtin_names() -> list[str]:
    return list(BUILTINS)


def builtin_description(name: str) -> str:
    return BUILTINS[name].description if name in BUILTINS else ""


@st.cache_resource(max_entries=6, show_spinner="Loading the model…")
def _load(spec: str, weights: str | None, trust: bool, data: str | None, input_shape: str | None):
    return api.load_model(spec, input_shape=input_shape or None, weights=weights, trust=trust, data=data)


def source() -> dict:
    if MODEL not in st.session_state:
        st.session_state[MODEL] = default_source()
    return st.session_state[MODEL]


def model():
    """This session's ModelHandle (shared, read-only). Raises PrunelabError for a bad source."""
    current = source()
    return _load(current["spec"], current["weights"], current["trust"], current["data"], current["input_shape"])


def model_key() -> str:
    """A key naming this session's model and data, for the result caches."""
    handle = model()
    return f"{handle.digest}-{handle.data.digest}"


def use_source(spec: str, weights: str | None = None, trust: bool = False, data: str | None = None,
               input_shape: str | None = None) -> None:
    """Switch this session to another model; loads it first, so a bad file leaves the old one in place."""
    candidate = {"spec": spec, "weights": weights, "trust": bool(trust), "data": data, "input_shape": input_shape}
    _load(**candidate)
    st.session_state[MODEL] = candidate
    st.session_state[PLAN] = default_plan()
    st.session_state.pop(LAYER, None)
    st.session_state.pop(LAST_REPORT, None)
    for key in [key for key in st.session_state if str(key).startswith("w.layer.")]:
        del st.session_state[key]


# ---------------------------------------------------------------- facts about the model

@st.cache_data(max_entries=16, show_spinner=False)
def _inspect(_handle, key: str) -> dict:
    with _lock(key):
        return api.inspect(_handle)


def layer_table() -> dict:
    """``{"layers": [rows], "totals": {...}}`` for this session's model (see core.api.inspect)."""
    return _inspect(model(), model_key())


def layer_names() -> list[str]:
    return [row["name"] for row in layer_table()["layers"]]


@st.cache_data(max_entries=64, show_spinner=False)
def _histogram(_handle, key: str, layer: str, bins: int) -> dict:
    with _lock(key):
        return api.histogram(_handle, layer, bins=bins, absolute=True)


def histogram(layer: str, bins: int = 60) -> dict:
    return _histogram(model(), model_key(), layer, bins)


def threshold(layer: str, sparsity: float) -> float:
    """The |w| below which a fraction ``sparsity`` of the layer's weights lie (from a fine histogram)."""
    fine = histogram(layer, bins=400)
    counts, edges = fine["counts"], fine["edges"]
    target, running = sparsity * sum(counts), 0.0
    for count, low, high in zip(counts, edges[:-1], edges[1:]):
        if count and running + count >= target:
            return low + (high - low) * (target - running) / count
        running += count
    return edges[-1]


@st.cache_data(max_entries=16, show_spinner=False)
def _groups(_handle, key: str) -> list[dict]:
    from core.api import coupled_groups

    with _lock(key):
        return coupled_groups(_handle.module, _handle.example_input())


def groups() -> list[dict]:
    """Channel coupling groups ``[{"leader", "members", "channels"}]``; [] when the model cannot do channels."""
    handle = model()
    if not handle.can("channel"):
        return []
    return _groups(handle, model_key())


@st.cache_data(max_entries=64, show_spinner=False)
def _channel_importance(_handle, key: str, layer: str, criterion: str, sparsity: float) -> dict:
    with _lock(key):
        return api.channel_importance(_handle, layer, criterion, sparsity)


def channel_importance(layer: str) -> dict:
    """``{"scores", "removed"}`` per output channel of ``layer`` under this session's criterion and target."""
    values = plan()
    return _channel_importance(model(), model_key(), layer, values["criterion"], target_of_layer(layer))


def target_of_layer(layer: str) -> float:
    """The target a layer gets: its own, its coupled group leader's, or the plan's default."""
    values = plan()
    if layer in ignored_layers():
        return 0.0
    if values["granularity"] == "channel":
        for group in groups():
            if layer in group["members"]:
                return target(group["leader"])
    return target(layer)


def cut_share(layer: str) -> float:
    """The share of ``layer``'s weights this plan removes: measured when the last report is of this plan
    (global scope decides per layer only then), else the layer's target."""
    report = st.session_state.get(LAST_REPORT)
    with contextlib.suppress(PrunelabError):
        if report and report.get("plan") == plan_object().to_dict() and layer in (report.get("layer_sparsity") or {}):
            return float(report["layer_sparsity"][layer])
    return target_of_layer(layer)


def can(operation: str) -> bool:
    return model().can(operation)


def capabilities() -> list[str]:
    return [operation for operation in ("unstructured", "channel", "finetune") if can(operation)]


def data_name() -> str:
    data = model().data
    return f"{data.name} ({len(data.x_test)} test items{'' if data.labelled else ', no labels'})"


# ---------------------------------------------------------------- the plan (per session)

def default_plan() -> dict:
    return {"granularity": "unstructured", "criterion": "l1", "scope": "layer", "sparsity": 0.0, "layers": {}}


def plan() -> dict:
    """This session's plan as a plain dict (a copy; change it with ``update_plan``/``set_target``)."""
    if PLAN not in st.session_state:
        st.session_state[PLAN] = default_plan()
    current = st.session_state[PLAN]
    return {**current, "layers": dict(current["layers"])}


def update_plan(**changes) -> None:
    st.session_state[PLAN] = {**plan(), **changes}


def set_target(layer: str, value: float) -> None:
    """Set one layer's (or coupled group leader's) sparsity override."""
    current = plan()
    current["layers"][layer] = float(value)
    st.session_state[PLAN] = current


def target(layer: str) -> float:
    current = plan()
    return float(current["layers"].get(layer, current["sparsity"]))


def seed(widget_key: str, value) -> None:
    """Give a widget its value from the plain state when Streamlit has dropped it (page switch)."""
    if widget_key not in st.session_state:
        st.session_state[widget_key] = value


def plan_object(values: dict | None = None):
    """The validated core Plan for ``values`` (default: this session's plan). Raises PrunelabError."""
    from core.prune.plan import Plan

    values = plan() if values is None else values
    layers = {name: value for name, value in values["layers"].items() if value != values["sparsity"]}
    return Plan.from_dict({**values, "layers": layers})


def plan_yaml() -> str:
    import yaml

    return yaml.safe_dump(plan_object().to_dict(), sort_keys=False)


def criteria_for(granularity: str) -> list[str]:
    """The criteria that can rank weights at ``granularity`` (bn_scale and fpgm rank channels only)."""
    kind = api.granularity_kind(granularity)
    return [name for name, kinds in api.CRITERIA.items() if kind in kinds]


@st.cache_data(max_entries=16, show_spinner=False)
def _final_classifier(_handle, key: str) -> str | None:
    from core.inspect import final_classifier

    with _lock(key):
        return final_classifier(_handle.module, _handle.example_input())


def ignored_layers() -> list[str]:
    """Layers the plan leaves dense: the plan's ignore list, else the final classifier."""
    ignore = plan().get("ignore")
    if ignore is not None:
        return list(ignore)
    handle = model()
    if handle.module is None:
        return layer_names()[-1:]
    name = _final_classifier(handle, model_key())
    return [name] if name else []


# ---------------------------------------------------------------- measurement

@st.cache_resource(max_entries=12, show_spinner=False)
def _evaluator(_handle, key: str, quantize: str | None = None):
    from core.deploy.evaluate import LiveEvaluator

    return LiveEvaluator(_handle, threads=2, quantize=quantize)


@st.cache_data(max_entries=16, show_spinner=False)
def _baseline(_handle, key: str) -> dict:
    with _lock(key):
        return _evaluator(_handle, key).baseline()


def baseline() -> dict:
    """Metrics of the dense model (accuracy or agreement, latency, sizes, params, MACs)."""
    return _baseline(model(), model_key())


@st.cache_data(max_entries=256, show_spinner=False)
def _measure(_handle, _plan, key: str, plan_digest: str, quantize: str | None) -> dict:
    with _lock(key):
        return _evaluator(_handle, key, quantize).measure(_plan)


def measure() -> dict:
    """Measure this session's plan (INT8 when ``QUANTIZE`` is set) on ONNX Runtime: ``{"pruned", "baseline", ...}``."""
    current = plan_object()
    report = recovered_report(current.digest)  # the Recover page's model, while this plan stays (see below)
    if report is None:
        report = _measure(model(), current, model_key(), current.digest, st.session_state.get(QUANTIZE))
    st.session_state[LAST_REPORT] = report
    return report


def no_speedup_reason(values: dict, report: dict) -> str | None:
    """One sentence when the plan zeroes weights without making ONNX Runtime faster."""
    if values["granularity"] == "channel" or not report["pruned"].get("sparsity"):
        return None
    return ("Zeroed weights still sit in the dense ONNX graph and ONNX Runtime on CPU multiplies them anyway, "
            "so the zeros alone neither speed it up nor shrink the file, only its compressed size; "
            "choose channel granularity to remove work.")


# ---------------------------------------------------------------- export

@st.cache_data(max_entries=8, show_spinner=False)
def _artifact(_handle, _plan, key: str, plan_digest: str, kind: str) -> bytes:
    from core.prune.engine import apply_plan

    with _lock(key):
        result = apply_plan(_handle, _plan, data=_handle.data)
        return module_bytes(result.module, _handle.example_input(), kind)


def module_bytes(module, example, kind: str) -> bytes:
    """``module`` as ONNX, a state dict or a torch.export program."""
    import torch

    from core.deploy.export import export_onnx

    if kind == "onnx":
        return export_onnx(module, example)
    buffer = io.BytesIO()
    if kind == "state_dict":
        torch.save(module.state_dict(), buffer)
    elif kind == "pt2":
        torch.export.save(torch.export.export(module, (example,)), buffer)
    else:
        raise PrunelabError(f"unknown export kind '{kind}'")
    return buffer.getvalue()


def artifact(kind: str) -> bytes:
    """Bytes of the pruned model as ``onnx``, ``state_dict`` or ``pt2`` (the fine-tuned weights while a
    recovered model is in use). Raises PrunelabError."""
    current = plan_object()
    recovered = recovered_artifact(kind, current.digest)
    return recovered if recovered is not None else _artifact(model(), current, model_key(), current.digest, kind)


# The long-job and history parts of the session layer, re-exported so pages keep one module.
from dashboard.sweeps import *  # noqa: E402,F401,F403
from dashboard.run_history import *  # noqa: E402,F401,F403
from dashboard.recovery_jobs import *  # noqa: E402,F401,F403
