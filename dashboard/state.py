"""Per-person state of the dashboard: the model source, the plan, remembered settings, the one lock per model.

Everything here lives in ``st.session_state`` under the plain keys below; nothing here calls the
engine (``dashboard/session.py`` does that). Widgets use keys starting with ``w.``. A setting a
person chooses is drawn with ``persist_state="session"`` (Streamlit otherwise drops a widget's
value when its page is not drawn), without a ``value=`` argument, seeded first (``seed``) from its
default or from the plan, so its value has one source.
"""
from __future__ import annotations

import os
import threading

import streamlit as st

from core.api import AUTO, Plan

MODEL = "prunelab.model"        # dict: spec, weights, trust, data, input_shape, metric (all str or None)
PLAN = "prunelab.plan"          # the frozen core Plan (core.prune.plan.Plan)
LAYER = "prunelab.layer"        # the layer shown on the Layers page
LAST_REPORT = "prunelab.report"  # the last measured report (plan, quantize and model it belongs to inside)
LIVE_JOB = "prunelab.live"  # the plan being measured in stages (dashboard.live.LiveJob)
QUANTIZE = "prunelab.quantize"  # None, or the INT8 mode applied before measuring
SENSITIVITY = "prunelab.sensitivity"  # the last finished sensitivity sweep
RECOVERED = "prunelab.recovered"  # the adopted recovered model: {"model_key", "plan_digest", "handle", "id"}
SAVED_LAYERS = "prunelab.layers_by_granularity"  # per-layer targets kept when the granularity changes
PLAN_WIDGETS = ("w.granularity", "w.criterion", "w.scope", "w.global", "w.quantize", "w.round_to",
                "w.recalibrate", "w.prune_width", "w.reconstruct")

_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


def lock(key: str) -> threading.RLock:
    """The lock of one shared model (a forward pass with hooks on a shared module is not thread-safe)."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.RLock())


def seed(widget_key: str, value) -> None:
    """Give a widget its value from the plain state when it has none yet."""
    if widget_key not in st.session_state:
        st.session_state[widget_key] = value


def forget_widgets(prefix: str) -> None:
    for key in [key for key in st.session_state if str(key).startswith(prefix)]:
        del st.session_state[key]


def forget_plan_widgets() -> None:
    """Drop every plan widget so each reseeds from the plan (after the plan changed from elsewhere)."""
    forget_widgets("w.layer.")
    forget_widgets("w.block.")
    for key in PLAN_WIDGETS:
        st.session_state.pop(key, None)


# ---------------------------------------------------------------- the model source

def default_source(default_model: str) -> dict:
    """The model a new visitor sees: PRUNELAB_MODEL (with the source options ``prunelab dashboard`` was
    given: PRUNELAB_WEIGHTS, PRUNELAB_INPUT_SHAPE, PRUNELAB_DATA, PRUNELAB_TRUST, PRUNELAB_METRIC) or
    ``default_model``."""
    if not os.environ.get("PRUNELAB_MODEL"):
        return {"spec": default_model, "weights": None, "trust": False, "data": None, "input_shape": None,
                "metric": None}
    return {"spec": os.environ["PRUNELAB_MODEL"], "weights": os.environ.get("PRUNELAB_WEIGHTS") or None,
            "trust": os.environ.get("PRUNELAB_TRUST") == "1", "data": os.environ.get("PRUNELAB_DATA") or None,
            "input_shape": os.environ.get("PRUNELAB_INPUT_SHAPE") or None,
            "metric": os.environ.get("PRUNELAB_METRIC") or None}


def source(default_model: str) -> dict:
    if MODEL not in st.session_state:
        st.session_state[MODEL] = default_source(default_model)
    return st.session_state[MODEL]


def set_source(candidate: dict) -> None:
    """Make ``candidate`` this session's model and start from a fresh plan."""
    st.session_state[MODEL] = candidate
    st.session_state[PLAN] = default_plan()
    for key in (LAYER, LAST_REPORT, RECOVERED, SAVED_LAYERS):
        st.session_state.pop(key, None)
    forget_plan_widgets()
    forget_widgets("w.layers.")


# ---------------------------------------------------------------- the plan

AUTO_ROUND = AUTO  # round_to's default: kept channels follow the CPU's kernels


def default_plan() -> Plan:
    """The plan a new session starts with: nothing pruned yet."""
    return Plan(sparsity=0.0)


def plan() -> Plan:
    """This session's plan, a frozen core Plan (change it with ``update_plan``/``set_target``)."""
    if PLAN not in st.session_state:
        st.session_state[PLAN] = default_plan()
    return st.session_state[PLAN]


def update_plan(**changes) -> None:
    """Replace fields of the plan (validated: raises PrunelabError naming a bad value)."""
    st.session_state[PLAN] = plan().replace(**changes)


def set_plan(new: Plan) -> None:
    """Replace the plan (a run's plan from History, a link); its widgets reseed on their next draw."""
    st.session_state[PLAN] = new
    st.session_state.pop(SAVED_LAYERS, None)
    forget_plan_widgets()


def set_target(layer: str, value: float) -> None:
    """Set one layer's (or coupled group leader's) sparsity override."""
    update_plan(layers={**plan().layer_targets, layer: float(value)})


def set_dropped(block: str, dropped: bool) -> None:
    """Remove a whole block (``dropped``) or keep it."""
    current = set(plan().drop)
    update_plan(drop=sorted(current | {block} if dropped else current - {block}))


def dropped() -> list[str]:
    return list(plan().drop)


def target(layer: str) -> float:
    current = plan()
    return current.layer_targets.get(layer, current.sparsity)


def switch_granularity(granularity: str, criterion: str) -> bool:
    """Change the granularity, keeping the per-layer targets of the old one for a later switch back.

    The new granularity gets the targets it had before (none the first time). Returns True when
    per-layer targets were put aside, so the page can say where they went.
    """
    current = plan()
    saved = dict(st.session_state.get(SAVED_LAYERS) or {})
    saved[current.granularity] = {"layers": current.layer_targets, "sparsity": current.sparsity}
    restored = saved.pop(granularity, {"layers": {}, "sparsity": current.sparsity})
    st.session_state[SAVED_LAYERS] = saved
    update_plan(granularity=granularity, criterion=criterion, layers=restored["layers"],
                sparsity=restored["sparsity"])
    forget_widgets("w.layer.")
    st.session_state.pop("w.global", None)
    return bool(current.layers)


def quantize() -> str | None:
    return st.session_state.get(QUANTIZE)


def set_quantize(on: bool) -> None:
    st.session_state[QUANTIZE] = "int8" if on else None
