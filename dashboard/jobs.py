"""Background jobs of one session (sensitivity sweeps, recovery runs, grids): progress, rows, result, stop.

A job runs ``work(job)`` in a daemon thread that never calls ``st.*``; the work reports through
``job.report(done, total, text)`` and ``job.rows.append(row)``, checks ``job.stop.is_set()``, and
its return value becomes ``job.result``. The page polls the job from the script thread (an
``st.fragment(run_every=...)`` drawing ``st.progress``) and its Stop button calls ``stop(name)``.
A failure becomes one line in ``job.error``. At most one job of each name runs per session.
"""
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

import streamlit as st

from core.errors import PrunelabError, error_line

PREFIX = "prunelab.job."


@dataclasses.dataclass
class Job:
    """One background job: what it was started with, its progress, and its result or error line."""

    name: str
    settings: dict
    total: int = 0
    done: int = 0
    text: str = "starting"
    rows: list = dataclasses.field(default_factory=list)
    result: object = None
    error: str | None = None
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def report(self, done: int, total: int, text: str = "") -> None:
        self.done, self.total, self.text = done, total, text

    def _run(self, work: Callable[[Job], object]) -> None:
        try:
            self.result = work(self)
        except Exception as error:  # anything from the engine: one line for the page
            self.error = str(error) if isinstance(error, PrunelabError) else error_line(error, with_type=True)


def start(name: str, work: Callable[[Job], object], settings: dict | None = None, total: int = 0) -> Job:
    """Run ``work(job)`` in the background as this session's job ``name``.

    Raises PrunelabError when a job of that name is still running.
    """
    current = get(name)
    if current is not None and current.running:
        raise PrunelabError(f"a {name} is already running; stop it first")
    job = Job(name, dict(settings or {}), total=total)
    job.thread = threading.Thread(target=job._run, args=(work,), name=f"prunelab-{name}", daemon=True)
    st.session_state[PREFIX + name] = job
    job.thread.start()
    return job


def get(name: str) -> Job | None:
    """This session's job ``name`` (running or finished), or None."""
    return st.session_state.get(PREFIX + name)


def running(name: str) -> bool:
    job = get(name)
    return job is not None and job.running


def stop(name: str) -> None:
    """Ask job ``name`` to stop at its next check (the result then covers what was done)."""
    job = get(name)
    if job is not None:
        job.stop.set()


def forget(name: str) -> None:
    st.session_state.pop(PREFIX + name, None)
