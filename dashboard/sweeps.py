"""Sensitivity sweeps, plan grids and auto-allocation for the dashboard (Sensitivity, History, Tune pages).

A sweep or a grid is a background job (dashboard/jobs.py) on a private copy of the model, so it
never holds the shared model's lock for minutes; the page polls it and its Stop button stops it.
Both can spread their points over local worker processes (``workers``).
"""
from __future__ import annotations

import streamlit as st

from core import api
from dashboard import jobs, session, state

JOB = "sensitivity sweep"
GRID_JOB = "plan grid"
DEFAULT_GRID = api.DEFAULT_GRID


def cores() -> int:
    """The most worker processes worth offering: this machine's cores."""
    return api.default_workers()


def start_sensitivity(granularity: str, criterion: str, levels: list[float], max_items: int | str = "auto",
                      workers: int = 1) -> None:
    """Start a sweep of this session's model (read from the disk cache when it was run before).

    Raises PrunelabError when a sweep is already running.
    """
    settings = {"granularity": granularity, "criterion": criterion, "levels": list(levels), "max_items": max_items,
                "workers": int(workers)}
    with state.lock(session.model_key()):
        private = api.private_copy(session.model())
    jobs.start(JOB, lambda job: api.sensitivity(private, progress=job.report, should_stop=job.stop.is_set,
                                                **settings), settings)


def sweep_job() -> jobs.Job | None:
    return jobs.get(JOB)


def stop_sensitivity() -> None:
    jobs.stop(JOB)


def finish_sensitivity() -> dict | None:
    """Move a finished sweep's result into the session (the Tune page reads it there); return it."""
    job = sweep_job()
    if job is not None and not job.running and job.result is not None:
        st.session_state[state.SENSITIVITY] = {**job.result, "model_key": session.model_key()}
        jobs.forget(JOB)
    result = st.session_state.get(state.SENSITIVITY)
    return result if result is not None and result.get("model_key") == session.model_key() else None


def start_grid(grid: str, workers: int = 1) -> None:
    """Measure every plan of ``grid`` on this session's model and record each as a run (core's explore).

    Raises PrunelabError for a bad grid, one of more plans than the limit, or when a grid is already running.
    """
    api.check_grid_size(api.parse_grid(grid))  # a typo or a huge grid fails here, on the page, not in the background
    with state.lock(session.model_key()):
        private = api.private_copy(session.model())
    jobs.start(GRID_JOB, lambda job: api.explore(private, grid, workers=int(workers), progress=job.report,
                                                 should_stop=job.stop.is_set, label="grid"),
               {"grid": grid, "workers": int(workers)})


def grid_job() -> jobs.Job | None:
    return jobs.get(GRID_JOB)


def stop_grid() -> None:
    jobs.stop(GRID_JOB)
