"""The one place the dashboard calls ``core``'s front door (``core/api.py``): cached loaders, plain values out.

Conventions for every page in ``dashboard/pages/``:

- A page imports from ``dashboard`` (``session``, ``state``, ``charts``, ``formatting`` and the job
  modules ``sweeps``, ``recovery``, ``run_history``) and nothing from ``core``, ``torch`` or
  ``onnxruntime``. A page that needs something new from the engine gets a small function here
  (or in a job module) returning plain values; the engine side goes into ``core/api.py``.
- One owner per cache. ``st.cache_resource`` holds loaded models and evaluators (one object for
  every visitor, used under the model's lock, because a forward pass with hooks on a shared
  module is not thread-safe); reports and dense baselines are cached by the evaluator itself
  (core.deploy.evaluate), never again here, except the reports of an adopted recovered model,
  which live with that model in the person's state (``state.RECOVERED``) and go when it does.
  ``st.cache_data`` holds plain facts about a model (layer table, histograms, groups, the plan
  resolved against it). Plan rules (which layers stay dense, a layer's target, a plan's label)
  are core's (core.prune.resolved, core.prune.plan); this module only asks for them. Unhashable
  arguments start with ``_`` and the model's key is passed next to them.
- The model itself (the cached loader, its key and lock, its data) and the tables read from it (layers,
  blocks, channel groups, histograms) live in ``dashboard/facts.py``; pages reach them through here.
- Per-person state (model source, plan, INT8 switch, ...) lives in ``dashboard/state.py``.
- Work that can fail goes inside ``with session.guard():`` so the person sees one ``st.error``
  line, never a stack trace, and the rest of the page keeps working.
- Long jobs run through ``dashboard/jobs.py`` (see ``sweeps.py`` and ``recovery.py``); the Tune page's
  staged measurement of the plan through ``dashboard/live.py``; a language model's continuations and
  the per-layer profile through ``dashboard/closer_look.py``.
- A new page: add its file to ``dashboard/pages/`` and one line to ``PAGES`` in ``dashboard/app.py``;
  start it with ``st.title`` and one ``st.caption`` saying what it is for.
"""
from __future__ import annotations

import contextlib

import streamlit as st

from core import api
from core.errors import PrunelabError, error_line
from dashboard import state
from dashboard.consent import code_allowed  # noqa: F401 (pages use it)
from dashboard.facts import (  # noqa: F401 (pages use them; the model and facts about it live in facts.py)
    block_scores,
    block_table,
    builtin_description,
    builtin_names,
    can,
    capabilities,
    data_name,
    data_splits,
    granularities,
    groups,
    has_batchnorm,
    has_perplexity,
    histogram,
    is_language_model,
    layer_names,
    layer_table,
    model,
    model_key,
    quality_label,
    source,
    threshold,
    use_source,
)
from dashboard.uploads import MAX_UPLOAD_BYTES, UPLOAD_SUFFIXES, save_upload, shown  # noqa: F401 (pages use them)

GRANULARITIES = api.GRANULARITIES
SCOPES = api.SCOPES
MAX_SPARSITY = api.MAX_SPARSITY
DEFAULT_LEVELS, QUICK_LEVELS = api.DEFAULT_LEVELS, api.QUICK_LEVELS  # sensitivity sweeps
headline = api.headline  # the figure a sweep is read by: perplexity for a language model on text
SPEEDUP_FLOOR = api.SPEEDUP_FLOOR  # a speedup closer to 1x than this reads as no measurable change


@contextlib.contextmanager
def guard(what: str = ""):
    """Show a failure inside the block as one ``st.error`` line; the rest of the page keeps running."""
    try:
        yield
    except Exception as error:  # anything from the engine: one line, no traceback
        text = str(error) if isinstance(error, PrunelabError) else error_line(error, with_type=True)
        st.error(shown(f"{what + ': ' if what else ''}{text}"))


# ---------------------------------------------------------------- the plan read against the model

def metric_names() -> list[str]:
    """The names of the numbers the model's own metric returns (none without one)."""
    return list(baseline().get("metrics") or {}) if model().metric is not None else []


@st.cache_data(max_entries=64, show_spinner=False)
def _channel_importance(_handle, key: str, layer: str, criterion: str, sparsity: float, round_to: int | str) -> dict:
    with state.lock(key):
        return api.channel_importance(_handle, layer, criterion, sparsity, round_to=round_to)


def channel_importance(layer: str) -> dict:
    """``{"scores", "removed"}`` per output channel of ``layer`` under this session's plan (rounding included)."""
    current = state.plan()
    return _channel_importance(model(), model_key(), layer, current.criterion, target_of_layer(layer),
                               current.round_to)


def round_to_label(value) -> str:
    """A choice of Round kept channels as shown: 'auto (16 on this CPU)' or the number."""
    return f"auto ({api.channel_multiple()[0]} on this CPU)" if value == state.AUTO_ROUND else str(value)


@st.cache_data(max_entries=16, show_spinner=False)
def _resolved(_handle, key: str, granularity: str, ignore: tuple[str, ...] | None):
    with state.lock(key):
        return api.resolve_plan(_handle, api.Plan(granularity=granularity, ignore=ignore))


def resolved(plan: api.Plan | None = None):
    """The plan (default: this session's) read against the model: the layers left dense and why, each
    layer's target (core.prune.resolved.ResolvedPlan). An ignored name the model lacks is passed over."""
    plan = state.plan() if plan is None else plan
    ignore = plan.ignore
    if ignore is not None:
        ignore = tuple(name for name in ignore if name in layer_names())
    base = _resolved(model(), model_key(), plan.granularity, ignore)
    return base.with_plan(plan_object(plan.replace(ignore=ignore)))


def ignored_layers() -> list[str]:
    """Layers the plan leaves dense: the plan's ignore list, else the final classifier."""
    return list(resolved().ignored)


def left_dense(granularity: str | None = None) -> dict[str, str]:
    """Layers the plan leaves dense, with why: the ignored layers, and those N:M cannot group."""
    current = state.plan()
    granularity = current.granularity if granularity is None else granularity
    return resolved(current.replace(granularity=granularity, criterion="l1")).dense


def nm_share(granularity: str) -> float | None:
    """n/m for an N:M granularity, else None (core.prune.plan.nm_share)."""
    return api.nm_share(granularity)


def target_of_layer(layer: str) -> float:
    """The target a layer gets: 0 when left dense, n/m under N:M, else its own, or its coupled group's."""
    plan = resolved()
    if plan.unit == "channel" and layer not in plan.dense:
        for group in groups():
            if layer in group["members"]:
                target, _ = plan.group_target(group["leader"], group["members"])
                return plan.asked(group["leader"]) if target is None else target
    return plan.target(layer)


def cut_share(layer: str) -> float:
    """The share of ``layer``'s weights this plan removes: measured when the last report is of this plan
    (global scope decides per layer only then), else the layer's target."""
    report = last_report()
    if report and layer in (report.get("layer_sparsity") or {}):
        return float(report["layer_sparsity"][layer])
    return target_of_layer(layer)


# ---------------------------------------------------------------- the plan as core sees it

def plan_object(plan: api.Plan | None = None) -> api.Plan:
    """``plan`` (default: this session's) as it is measured and saved: only the layers whose target
    differs from the plan's own, and no BatchNorm re-estimation on a model without BatchNorm."""
    plan = state.plan() if plan is None else plan
    changes = {"layers": {name: value for name, value in plan.layers if value != plan.sparsity}}
    if not has_batchnorm():
        changes["recalibrate"] = False  # nothing to re-estimate: the plan file says so
    return plan.replace(**changes)


def plan_yaml() -> str:
    return api.plan_text(plan_object())


def criteria_for(granularity: str) -> list[str]:
    return api.criteria_for(granularity)


def layer_scope_only(criterion: str, granularity: str) -> str:
    """Why ``criterion`` has no global scope for ``granularity`` ('' when it has one; N:M plans have no scope)."""
    entry = api.CRITERIA.get(criterion)
    return entry.layer_scope_only if entry is not None and granularity == "unstructured" else ""


def per_layer(plan: api.Plan | None = None) -> bool:
    """True when some layer has its own target (the All-layers value alone does not describe the plan)."""
    plan = state.plan() if plan is None else plan
    return any(value != plan.sparsity for _, value in plan.layers)


def plan_label(plan: api.Plan | None = None) -> str:
    """The plan in a few words, e.g. 'channel, l1, round to 8, per-layer targets: 23.4% of weights removed'.

    The share removed is measured when the last report is of this plan; otherwise the targets are named.
    """
    plan = state.plan() if plan is None else plan
    report = last_report() if plan == state.plan() else None
    removed = (report or {}).get("pruned", {}).get("removed")
    measured = f": {removed:.1%} of prunable weights removed (measured)" if removed is not None else ""
    return plan_object(plan).label + measured


# ---------------------------------------------------------------- measurement

@st.cache_resource(max_entries=12, show_spinner=False)
def _evaluator(_handle, key: str, quantize: str | None):
    # The full measurement, as `prunelab evaluate` makes it: the Tune page shows it in stages (see live_report).
    return api.LiveEvaluator(_handle, threads=2, quantize=quantize, live=False)


def evaluator(quantize: str | None = None):
    """The shared evaluator of this session's model (it caches reports and the dense baseline)."""
    return _evaluator(model(), model_key(), quantize)


def baseline() -> dict:
    """Metrics of the dense FP32 model: the one dense measurement every page shows."""
    with state.lock(model_key()):
        return evaluator(None).baseline()


def measured_for() -> dict:
    """What a report must belong to for this session to show it: model, plan, INT8 mode, recovered model."""
    adopted = recovered()
    return {"model_key": model_key(), "plan_digest": plan_object().digest, "quantize": state.quantize(),
            "recovered": None if adopted is None else adopted["id"]}


def measure() -> dict:
    """Measure this session's plan (INT8 when switched on; the recovered model while one is in use) on
    ONNX Runtime: ``{"pruned", "baseline", "notes", ...}`` plus ``"measured_for"``. Raises PrunelabError."""
    current, quantize, adopted = plan_object(), state.quantize(), recovered()
    job = st.session_state.get(state.LIVE_JOB)
    if adopted is None and job is not None and job.key == measured_for():
        job.wait_final(None)  # the Tune page is measuring this very plan: its final stage is this report
    with state.lock(model_key()):
        if adopted is None:
            report = evaluator(quantize).measure(current)
        else:
            reports = adopted["reports"]
            if quantize not in reports:
                reports[quantize] = api.measure_recovered(evaluator(quantize), adopted["handle"], current)
            report = reports[quantize]
    report = {**report, "measured_for": measured_for()}
    st.session_state[state.LAST_REPORT] = report
    return report



def keep(report: dict, wanted: dict) -> dict:
    """``report`` marked as measured for ``wanted`` (``measured_for``) and kept as this session's last report."""
    report = {**report, "measured_for": wanted}
    st.session_state[state.LAST_REPORT] = report
    return report


def last_report() -> dict | None:
    """The last measured report when it belongs to this session's current model, plan and settings."""
    report = st.session_state.get(state.LAST_REPORT)
    with contextlib.suppress(PrunelabError):
        if report and report.get("measured_for") == measured_for():
            return report
    return None


# ---------------------------------------------------------------- the recovered model in use

def recovered() -> dict | None:
    """The adopted recovered model while the model and plan are the ones it was trained for, else None."""
    adopted = st.session_state.get(state.RECOVERED)
    if adopted is None:
        return None
    if adopted["model_key"] != model_key() or adopted["plan_digest"] != plan_object().digest:
        st.session_state.pop(state.RECOVERED, None)
        return None
    return adopted


def adopt_recovered(handle, plan_digest: str, summary: dict, settings: dict, run_id: str) -> None:
    """Make a recovered model (a handle from core.api.recover) the one this session measures and hands over."""
    st.session_state[state.RECOVERED] = {"model_key": model_key(), "plan_digest": plan_digest, "handle": handle,
                                         "summary": summary, "settings": dict(settings), "reports": {},
                                         "id": run_id}


def discard_recovered() -> None:
    st.session_state.pop(state.RECOVERED, None)
