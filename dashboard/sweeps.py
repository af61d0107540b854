"""Sensitivity sweeps and auto-allocation for the dashboard.

Used by pages/sensitivity.py and by the Tune page's Auto-allocate button. A sweep runs in a
worker thread on a private copy of the model (so it never holds the model's lock for minutes);
the page polls the job from the script thread and the Stop button sets the job's event.

Part of the session layer: pages reach these names as ``session.<name>``.
"""
from __future__ import annotations

import dataclasses
import threading

import streamlit as st

from core import api
from core.errors import PrunelabError, error_line
from dashboard.session import MAX_SPARSITY, SENSITIVITY, _lock, model, model_key, plan, update_plan

__all__ = ['SWEEP', 'SweepJob', '_sweep', 'allocate_available', 'auto_allocate', 'finish_sensitivity', 'start_sensitivity', 'stop_sensitivity', 'sweep_job']

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
        job.error = error_line(error, with_type=True)


def start_sensitivity(granularity: str, criterion: str, levels: list[float], max_items: int | str = "auto") -> None:
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
                                 criterion=values["criterion"], max_sparsity=MAX_SPARSITY, sensitivity=result,
                                 round_to=int(values.get("round_to") or 1))
    update_plan(scope="layer", layers=allocated.layer_targets)
