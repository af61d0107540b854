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
- A new page: add its file to ``dashboard/pages/`` and one line to ``PAGES`` in ``dashboard/app.py``
  (file, title, icon, url path); start it with ``st.title`` and one ``st.caption`` saying what it is for.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import re
import tempfile
import threading
from pathlib import Path

import streamlit as st

from core import api
from core.errors import PrunelabError
from core.zoo.registry import BUILTINS, DEFAULT_MODEL

# Plain per-session keys (widget state is mirrored into these).
MODEL = "prunelab.model"        # dict: spec, weights, trust, data, input_shape (all str or None)
PLAN = "prunelab.plan"          # dict accepted by core.plan.Plan.from_dict
LAYER = "prunelab.layer"        # the layer shown on the Layers page
LAST_REPORT = "prunelab.report"  # the last measured report, for pages that only display it
QUANTIZE = "prunelab.quantize"  # None, or an INT8 mode of core.quantize applied before measuring
SENSITIVITY = "prunelab.sensitivity"  # the last sensitivity sweep result (set by the Sensitivity page)

GRANULARITIES = ("unstructured", "channel", "2:4")
SCOPES = ("layer", "global")
MAX_SPARSITY = 0.95
UPLOAD_SUFFIXES = {".pt2", ".onnx", ".pt", ".pth"}
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
_UPLOADS = Path(tempfile.gettempdir()) / f"prunelab-uploads-{os.getpid()}"
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
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        st.error(shown(f"{what + ': ' if what else ''}{error.__class__.__name__}: {first}"))


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


def save_upload(name: str, content: bytes, allowed: set[str]) -> str:
    """Write an uploaded file to ``<private temp dir>/<content hash>/<cleaned name>``; return the path.

    Only the last component of the person's file name is kept, reduced to letters, digits, ``._-``
    and without leading dots, so it can never point outside that directory.
    Raises PrunelabError for a file that is empty, too large or has the wrong extension.
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", Path(str(name or "").replace("\\", "/")).name).lstrip(".")[-80:]
    suffix = Path(cleaned).suffix.lower()
    if suffix not in allowed:
        raise PrunelabError(f"'{name}' is not one of {', '.join(sorted(allowed))}")
    if len(content) > MAX_UPLOAD_BYTES:
        raise PrunelabError(f"'{name}' is {len(content) / 2**20:.0f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB")
    if not content:
        raise PrunelabError(f"'{name}' is empty")
    folder = _UPLOADS / hashlib.sha256(content).hexdigest()[:20]
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / (Path(cleaned).stem + suffix)
    if not path.exists():
        temporary = folder / f".{path.name}.part"
        temporary.write_bytes(content)
        temporary.replace(path)
    return str(path)


def shown(text: str) -> str:
    """``text`` with the private upload directory left out, for messages a person reads."""
    return re.sub(re.escape(str(_UPLOADS)) + r"/[0-9a-f]+/", "", text)


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
    from core.plan import Plan

    values = plan() if values is None else values
    layers = {name: value for name, value in values["layers"].items() if value != values["sparsity"]}
    return Plan.from_dict({**values, "layers": layers})


def plan_yaml() -> str:
    import yaml

    return yaml.safe_dump(plan_object().to_dict(), sort_keys=False)


def criteria_for(granularity: str) -> list[str]:
    """The criteria that can rank weights at ``granularity`` (bn_scale and fpgm rank channels only)."""
    from core.plan import CRITERIA

    kind = "N:M" if ":" in granularity else granularity
    return [name for name, kinds in CRITERIA.items() if kind in kinds]


@st.cache_data(max_entries=16, show_spinner=False)
def _final_classifier(_handle, key: str) -> str | None:
    from core.engine import final_classifier

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
    from core.evaluate import LiveEvaluator

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
    import torch

    from core.engine import apply_plan
    from core.export import export_onnx

    with _lock(key):
        result = apply_plan(_handle, _plan, data=_handle.data)
        example = _handle.example_input()
        if kind == "onnx":
            return export_onnx(result.module, example)
        buffer = io.BytesIO()
        if kind == "state_dict":
            torch.save(result.module.state_dict(), buffer)
        elif kind == "pt2":
            torch.export.save(torch.export.export(result.module, (example,)), buffer)
        else:
            raise PrunelabError(f"unknown export kind '{kind}'")
        return buffer.getvalue()


def artifact(kind: str) -> bytes:
    """Bytes of the pruned model as ``onnx``, ``state_dict`` or ``pt2``. Raises PrunelabError."""
    current = plan_object()
    return _artifact(model(), current, model_key(), current.digest, kind)


# ---------------------------------------------------------------- sensitivity and auto-allocation
# Used by pages/sensitivity.py and by the Tune page's Auto-allocate button. A sweep runs in a
# worker thread on a private copy of the model (so it never holds the model's lock for minutes);
# the page polls the job from the script thread and the Stop button sets the job's event.

SWEEP = "prunelab.sweep"  # this session's SweepJob (running or finished)


@dataclasses.dataclass
class SweepJob:
    """A sensitivity sweep in a worker thread: progress, then a result (or an error line)."""

    settings: dict
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    done: int = 0
    total: int = 0
    text: str = "starting"
    result: dict | None = None
    error: str | None = None
    thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def report(self, done: int, total: int, text: str) -> None:
        self.done, self.total, self.text = done, total, text


def _sweep(job: SweepJob, handle) -> None:
    try:
        job.result = api.sensitivity(handle, progress=job.report, should_stop=job.stop.is_set, **job.settings)
    except PrunelabError as error:
        job.error = str(error)
    except Exception as error:  # anything else from the engine: one line for the page
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        job.error = f"{error.__class__.__name__}: {first}"


def start_sensitivity(granularity: str, criterion: str, levels: list[float], max_items: int | None = None) -> None:
    """Start a sweep of this session's model (read from the disk cache when it was run before)."""
    import copy

    current = sweep_job()
    if current is not None and current.running:
        raise PrunelabError("a sweep is already running; stop it first")
    handle = model()
    with _lock(model_key()):
        private = dataclasses.replace(handle, module=copy.deepcopy(handle.module))
    job = SweepJob({"granularity": granularity, "criterion": criterion, "levels": list(levels),
                    "max_items": max_items})
    job.thread = threading.Thread(target=_sweep, args=(job, private), name="prunelab-sensitivity", daemon=True)
    st.session_state[SWEEP] = job
    job.thread.start()


def sweep_job() -> SweepJob | None:
    return st.session_state.get(SWEEP)


def stop_sensitivity() -> None:
    job = sweep_job()
    if job is not None:
        job.stop.set()


def finish_sensitivity() -> dict | None:
    """Move a finished job's result into SENSITIVITY (the Tune page reads it there); return it."""
    job = sweep_job()
    if job is not None and not job.running and job.result is not None:
        st.session_state[SENSITIVITY] = {**job.result, "model_key": model_key()}
        st.session_state.pop(SWEEP, None)
    result = st.session_state.get(SENSITIVITY)
    return result if result is not None and result.get("model_key") == model_key() else None


def allocate_available() -> bool:
    """True when this session has a complete sensitivity sweep of its model to allocate from."""
    result = finish_sensitivity()
    return result is not None and result["complete"]


def auto_allocate() -> None:
    """Fill the per-layer targets so the overall sparsity is the 'All layers' value, spent where it hurts least.

    Raises PrunelabError when there is no matching sweep or no target.
    """
    result, values = finish_sensitivity(), plan()
    if result is None or not result["complete"]:
        raise PrunelabError("run a complete sweep on the Sensitivity page first")
    if (result["granularity"], result["criterion"]) != (values["granularity"], values["criterion"]):
        raise PrunelabError(f"the sweep is for {result['granularity']}/{result['criterion']}; run one for "
                            f"{values['granularity']}/{values['criterion']} on the Sensitivity page")
    if not values["sparsity"]:
        raise PrunelabError("set 'All layers' to the overall sparsity you want, then auto-allocate")
    with _lock(model_key()):
        allocated = api.allocate(model(), target_sparsity=values["sparsity"], granularity=values["granularity"],
                                 criterion=values["criterion"], max_sparsity=MAX_SPARSITY, sensitivity=result)
    update_plan(scope="layer", layers=allocated.layer_targets)


# ---------------------------------------------------------------- run history (History page)
# The run store (core.runs) is one SQLite file shared by every session and the CLI; each call
# opens its own connection, so nothing here is cached. Values out are plain dicts and lists.

def runs(this_model_only: bool = False) -> list[dict]:
    """Recorded runs, newest first: one row per run with the plan and headline metrics."""
    from core.runs import list_runs

    chosen = list_runs(model().name if this_model_only else None)
    return [{"id": run.id, "label": run.label, "created": run.created, "model": run.model,
             "granularity": run.plan.get("granularity"), "criterion": run.plan.get("criterion"),
             "scope": run.plan.get("scope"), "sparsity": run.plan.get("sparsity"), "quality": run.quality,
             "p50_ms": run.latency_p50, "compressed_bytes": run.compressed_bytes, "notes": run.notes}
            for run in chosen]


def run_details(run_id: int) -> dict:
    """Everything stored about one run (see core.runs.Run.to_dict). Raises PrunelabError."""
    from core.runs import get_run

    return get_run(run_id).to_dict()


def runs_pareto_chart(run_ids: list[int]):
    """The report's Pareto figure for these runs (customdata = run id, for click-to-open)."""
    from core.report import pareto_figure
    from core.runs import get_run

    chosen = [get_run(run_id) for run_id in run_ids]
    return pareto_figure(chosen, chosen[0].metrics.get("baseline") if chosen else None)


def compare_runs(first: int, second: int) -> dict:
    """``{"layers": [...], "metrics": [...], "plan": [...]}`` rows with a, b and delta."""
    from core.runs import compare_runs as compare

    return compare(first, second)


def save_run(label: str = "", notes: str = "") -> int:
    """Measure this session's plan (cached) and keep it in the run store with its plan and report."""
    import json

    from core.runs import record_run

    report = measure()
    current = plan_object()
    files = {"plan.yaml": plan_yaml(), "report.json": json.dumps(report, indent=2, default=str)}
    return record_run(report, model=model(), plan=current, files=files, label=label, notes=notes).id


def delete_run(run_id: int) -> None:
    from core.runs import delete_run as delete

    delete(run_id)


def load_run_plan(run_id: int) -> str | None:
    """Put a run's plan into this session's sliders; returns a warning when it was made on another model.

    Raises PrunelabError when the plan does not fit this session's model.
    """
    from core.plan import Plan
    from core.runs import get_run

    run = get_run(run_id)
    values = Plan.from_dict(run.plan).to_dict()
    handle = model()
    if handle.module is not None:
        Plan.from_dict(values).validate_for(handle.module)
    st.session_state[PLAN] = {**values, "layers": dict(values["layers"])}
    plan_widgets = [key for key in st.session_state
                    if str(key).startswith("w.") and not str(key).startswith("w.history.")]
    for key in plan_widgets:
        st.session_state.pop(key, None)  # the plan's widgets reseed from the plan on their next draw
    if run.model != handle.name:
        return f"run {run_id} was made on {run.model}; its plan is now applied to {handle.name}"
    return None


def runs_report_html(run_ids: list[int]) -> bytes:
    """The self-contained HTML report of these runs."""
    from core.report import build_report
    from core.runs import get_run

    return build_report([get_run(run_id) for run_id in run_ids]).encode()


def run_plan_export(run_id: int, format: str) -> dict[str, str]:
    """A run's plan for Torch-Pruning, NNI or SparseML: file suffix -> text.

    Per-layer targets are resolved on this session's model when the run was made on it.
    """
    from core.plan import Plan
    from core.plan_formats import export_plan, plan_layers
    from core.runs import get_run

    run = get_run(run_id)
    plan = Plan.from_dict(run.plan)
    handle = model()
    layers = None
    if run.model == handle.name and handle.module is not None:
        with _lock(model_key()):
            layers = plan_layers(plan, handle)
    return export_plan(plan, format, layers, stem=f"run-{run_id}-plan")


# ---------------------------------------------------------------- recovery (Recover page)
# Fine-tuning, gradual, iterative and lottery-ticket runs go to a worker thread on a private copy
# of the model, like the sensitivity sweep: the page polls the job's history for the live curve and
# the Stop button sets the job's event. When a run ends, its recovered model is measured on ONNX
# Runtime against the dense baseline and that report is what ``measure()`` (the metric panel)
# returns while the session's plan stays the one the run used; "Discard" or any plan change ends it.

RECOVERY = "prunelab.recovery"      # this session's RecoveryJob (running or finished)
RECOVERED = "prunelab.recovered"    # {"model_key", "plan_digest", "report"} of the adopted recovered model
RECOVERY_METHODS = ("finetune", "gradual", "iterative", "lottery")


@dataclasses.dataclass
class RecoveryJob:
    """A recovery run in a worker thread: per-epoch rows as they come, then a summary and a report."""

    method: str
    settings: dict
    plan: dict
    total_epochs: int
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    history: list = dataclasses.field(default_factory=list)
    summary: dict | None = None
    report: dict | None = None
    error: str | None = None
    thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


def recovery_epochs(method: str, epochs: int, rounds: int) -> int:
    """Epochs a run trains in all (lottery: dense, each round, and the random re-init control)."""
    return {"finetune": epochs, "gradual": epochs, "iterative": rounds * epochs,
            "lottery": (rounds + 2) * epochs}[method]


def schedule_curve(final_sparsity: float, epochs: int, initial_sparsity: float = 0.0, end_fraction: float = 0.75,
                   power: float = 3.0) -> list[dict]:
    """``[{"epoch", "step", "sparsity"}]`` of the gradual schedule the run would use, for plotting before it runs."""
    from core.recovery import steps_per_epoch
    from core.schedule import PolynomialDecay

    per_epoch = steps_per_epoch(model())
    total = max(2, epochs * per_epoch)
    schedule = PolynomialDecay(initial_sparsity, final_sparsity, 0, max(1, int(end_fraction * total)),
                               max(1, per_epoch // 4), power)
    return [{**point, "epoch": point["step"] / per_epoch} for point in schedule.curve(total)]


def _recover(job: RecoveryJob, handle, key: str) -> None:
    from core import recovery
    from core.plan import Plan

    plan = Plan.from_dict(job.plan)
    settings, callbacks = dict(job.settings), {"on_epoch": job.history.append, "should_stop": job.stop.is_set}
    schedule = settings.pop("schedule", None)
    try:
        if job.method == "finetune":
            result = recovery.finetune(handle, plan, settings["epochs"], lr=settings["lr"], **callbacks)
        elif job.method == "gradual":
            result = recovery.gradual_prune(handle, plan, settings["epochs"], schedule=schedule,
                                            lr=settings["lr"], **callbacks)
        elif job.method == "iterative":
            result = recovery.iterative_prune(handle, plan, settings["rounds"], settings["epochs"],
                                              lr=settings["lr"], **callbacks)
        else:
            result = recovery.lottery_ticket(handle, plan, settings["rounds"], settings["epochs"],
                                             rewind_epoch=settings["rewind_epoch"], lr=settings["lr"], **callbacks)
        job.summary = result.summary()
        job.report = _recovered_metrics(handle, result, plan, key)
    except PrunelabError as error:
        job.error = str(error)
    except Exception as error:  # anything else from the engine: one line for the page
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        job.error = f"{error.__class__.__name__}: {first}"


def _recovered_metrics(handle, result, plan, key: str) -> dict:
    """A report shaped like ``measure()``'s: the recovered model against the dense baseline."""
    import numpy as np

    from core.evaluate import LiveEvaluator
    from core.measure import torch_outputs

    recovered = dataclasses.replace(handle, module=result.module, _digest=None)
    metrics = dict(LiveEvaluator(recovered, threads=2).baseline())
    dense = torch_outputs(handle.module, handle.data.x_test).argmax(1)
    metrics["agreement"] = float(np.mean(torch_outputs(result.module, handle.data.x_test).argmax(1) == dense))
    layer_sparsity = {name: 1.0 - float(mask.float().mean()) for name, mask in (result.masks or {}).items()}
    accuracy = result.accuracy
    note = (f"recovered by {result.method} ({len(result.history)} epochs): test accuracy one-shot "
            f"{accuracy['one_shot']:.1%} -> {accuracy['recovered']:.1%}, dense {accuracy['dense']:.1%}"
            if accuracy.get("recovered") is not None and accuracy.get("one_shot") is not None else
            f"recovered by {result.method} ({len(result.history)} epochs)")
    with _lock(key):
        baseline = _evaluator(handle, key).baseline()
    return {"model": handle.name, "plan": plan.to_dict(), "pruned": metrics, "baseline": baseline,
            "layer_sparsity": layer_sparsity, "groups": None, "notes": [note], "recovered": True}


def start_recovery(method: str, epochs: int, lr: float = 3e-3, rounds: int = 3, rewind_epoch: int = 0,
                   schedule: dict | None = None) -> None:
    """Start a recovery run of this session's model and plan. Raises PrunelabError when one is running
    or the model cannot be trained (no training split)."""
    import copy

    from core.schedule import PolynomialDecay

    if method not in RECOVERY_METHODS:
        raise PrunelabError(f"unknown recovery method '{method}' (choose from {', '.join(RECOVERY_METHODS)})")
    current = recovery_job()
    if current is not None and current.running:
        raise PrunelabError("a recovery run is already going; stop it first")
    handle = model()
    handle.require("finetune")
    if not handle.data.trainable:
        raise PrunelabError(f"fine-tuning needs training data: '{handle.data.name}' has no x_train/y_train")
    key = model_key()
    with _lock(key):
        private = dataclasses.replace(handle, module=copy.deepcopy(handle.module))
    settings = {"epochs": int(epochs), "lr": float(lr), "rounds": int(rounds), "rewind_epoch": int(rewind_epoch)}
    if schedule:
        settings["schedule"] = PolynomialDecay(**schedule)
    job = RecoveryJob(method, settings, plan_object().to_dict(), recovery_epochs(method, epochs, rounds))
    job.thread = threading.Thread(target=_recover, args=(job, private, key), name="prunelab-recovery", daemon=True)
    st.session_state[RECOVERY] = job
    st.session_state.pop(RECOVERED, None)
    job.thread.start()


def recovery_job() -> RecoveryJob | None:
    return st.session_state.get(RECOVERY)


def stop_recovery() -> None:
    job = recovery_job()
    if job is not None:
        job.stop.set()


def finish_recovery() -> dict | None:
    """When the run has ended, make its recovered model the one the metric panel measures; return the summary."""
    from core.plan import Plan

    job = recovery_job()
    if job is None or job.running:
        return None
    if job.report is not None and RECOVERED not in st.session_state:
        st.session_state[RECOVERED] = {"model_key": model_key(), "plan_digest": Plan.from_dict(job.plan).digest,
                                       "report": job.report}
        job.report = None
    return job.summary


def recovered_report(plan_digest: str) -> dict | None:
    """The adopted recovered model's report while the model and plan are the ones it was trained for."""
    adopted = st.session_state.get(RECOVERED)
    if adopted is None:
        return None
    if adopted["model_key"] != model_key() or adopted["plan_digest"] != plan_digest:
        st.session_state.pop(RECOVERED, None)
        return None
    return adopted["report"]


def recovered_active() -> bool:
    return st.session_state.get(RECOVERED) is not None


def discard_recovered() -> None:
    st.session_state.pop(RECOVERED, None)
