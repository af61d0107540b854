"""The Tune page's live measurement: the newest plan measured in stages on a worker thread.

The page starts a ``LiveJob`` for the plan it shows and polls it from the script thread (a
fragment with ``run_every``); the worker never calls Streamlit. A newer plan cancels the job it
replaces, which stops between stages (core.deploy.progressive); finished reports stay in the
evaluator's cache, so going back to a measured plan is instant, and a plan stopped part way goes
on from where it stopped.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time

import streamlit as st

from core.api import Cancelled
from core.errors import PrunelabError, error_line
from dashboard import session, state

LIVE_WAIT = 1.0  # default of live_wait()


class LiveJob:
    """One plan measured in stages: ``latest`` is the newest stage, ``final`` True once it is the last one."""

    def __init__(self, key: dict, stages, lock: threading.RLock):
        self.key = key  # what the report belongs to (session.measured_for)
        self.latest: dict | None = None
        self.error: str | None = None
        self.done = False
        self.published = self.shown = 0  # stages published by the worker, and the newest one a page has shown
        self._stages, self._lock, self._stop = stages, lock, threading.Event()
        self._changed = threading.Condition()
        self._started = self._stage_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="prunelab-live", daemon=True)
        self._thread.start()

    @property
    def final(self) -> bool:
        return self.latest is not None and self.latest["pruned"].get("progress", {}).get("final", True)

    def cancel(self) -> None:
        """Stop at the next stage boundary (the worker ends by itself)."""
        self._stop.set()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    def wait_final(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` seconds (None: as long as it takes) for the final figures (or the end of the job)."""
        with self._changed:
            self._changed.wait_for(lambda: self.final or self.done, timeout)

    def wait_shown(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the final figures, so a plan measured within it shows them at
        once; but return as soon as a stage is in and the final figures cannot come within it (the time so
        far, scaled from the items scored to all of them, is past it), so a big model shows its first
        figures without waiting the rest of ``timeout``."""
        deadline = time.monotonic() + timeout

        def ready() -> bool:
            if self.final or self.done:
                return True
            progress = (self.latest or {}).get("pruned", {}).get("progress") or {}
            if not progress.get("items"):
                return False
            projected = self._started + (self._stage_at - self._started) * progress["of"] / progress["items"]
            return projected > deadline

        with self._changed:
            self._changed.wait_for(ready, timeout)

    def wait_newer(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a stage newer than the one last shown (or the end of the job),
        so a poll that comes just before a stage draws it instead of the next poll."""
        with self._changed:
            self._changed.wait_for(lambda: self.published > self.shown or self.done or self.error, timeout)

    def _publish(self, **values) -> None:
        with self._changed:
            self._stage_at = time.monotonic()
            for name, value in values.items():
                setattr(self, name, value)
            self.published += "latest" in values
            self._changed.notify_all()

    def _run(self) -> None:
        iterator = None
        try:
            iterator = self._stages(self._stop.is_set)
            while not self._stop.is_set():
                with self._lock:  # torch work on the shared model (pruning, the parity check) is not thread-safe
                    report = next(iterator, None)
                if report is None:
                    break
                self._publish(latest=report)
        except Cancelled:
            pass
        except Exception as error:  # shown on the page as one line
            self._publish(error=str(error) if isinstance(error, PrunelabError) else error_line(error, with_type=True))
        finally:
            if iterator is not None:
                iterator.close()  # a stopped plan keeps what it finished, for when it comes back (core.deploy.evaluate)
            self._publish(done=True)


# ---------------------------------------------------------------- this session's plan, live

def live_wait() -> float:
    """Seconds a page run waits at most for the final figures before it shows the stages as they come
    (PRUNELAB_LIVE_WAIT; the demo models are done within it, so their page never flickers; a big model's
    first stage shows as soon as it says the final figures will not come within it: LiveJob.wait_shown)."""
    with contextlib.suppress(ValueError):
        return max(0.0, float(os.environ.get("PRUNELAB_LIVE_WAIT", LIVE_WAIT)))
    return LIVE_WAIT


def start_measuring() -> None:
    """Start measuring this session's plan on a worker thread unless it is measured or being measured, so
    the measurement runs while the page draws its controls (``live_report`` then reads it)."""
    if session.recovered() is None:
        with contextlib.suppress(PrunelabError):  # live_report meets the same problem and says it on the page
            _live_job(session.measured_for())


def _live_job(wanted: dict):
    """(the job measuring ``wanted``, None), or (None, the cached report) when it was measured before; a new
    job cancels the one it replaces."""
    job = st.session_state.get(state.LIVE_JOB)
    if job is not None and job.key == wanted:
        return job, None
    if job is not None:
        job.cancel()
    chosen, plan = session.evaluator(state.quantize()), session.plan_object()
    cached = chosen.cached(plan)
    if cached is not None:
        st.session_state.pop(state.LIVE_JOB, None)
        return None, cached
    job = LiveJob(wanted, lambda cancelled: chosen.stages(plan, cancelled), state.lock(session.model_key()))
    st.session_state[state.LIVE_JOB] = job
    return job, None


def live_report(wait: float = 0.0, newer: float = 0.0) -> dict | None:
    """The newest figures of this session's plan while it is measured in stages on a worker thread: the
    finished report when there is one (then also ``session.last_report``), else the latest stage, else
    None; ``wait`` seconds for the final one first, or ``newer`` seconds for a stage not shown before (a
    poll). A plan not measured yet starts its job here and cancels the one it replaces. Raises
    PrunelabError when the measurement failed."""
    wanted = session.measured_for()
    if session.recovered() is not None:
        return session.measure()
    job, cached = _live_job(wanted)
    if cached is not None:
        return session.keep(cached, wanted)
    job.wait_shown(wait)
    job.wait_newer(newer)
    job.shown = job.published
    if job.error is not None:
        raise PrunelabError(job.error)
    if job.latest is None:
        return None
    return session.keep(job.latest, wanted) if job.final else {**job.latest, "measured_for": wanted}


def live_failed() -> bool:
    """True when the measurement of this session's plan failed (live_report then raises its error)."""
    job = st.session_state.get(state.LIVE_JOB)
    return job is not None and job.error is not None
