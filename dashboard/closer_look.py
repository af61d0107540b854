"""A closer look at this session's plan: a language model's continuations of a prompt (Tune page) and the
measured time per layer (Profile page). Cached here; the work is core's (core.api)."""
from __future__ import annotations

import streamlit as st

from core import api
from dashboard import session, state

PROFILED = "prunelab.profiled"  # {(model key, plan digest): profile report} of the plans profiled this session


def continuations(prompt: str) -> dict:
    """The dense and the pruned model's greedy continuations of ``prompt`` under this session's plan
    (FP32 KV-cache graphs in ONNX Runtime): ``{"dense", "pruned", "prompt_tokens"}``. Raises PrunelabError."""
    with state.lock(session.model_key()):
        return session.evaluator(None).continuations(session.plan_object(), prompt)


@st.cache_data(max_entries=16, show_spinner=False)
def _profile(_handle, key: str, plan_digest: str, _plan, batch_size: int) -> dict:
    return api.profile_plan(_handle, _plan, batch_size=batch_size, threads=2)


def layer_time_figure(rows: list[dict], pruned: bool):
    """Bars of measured ms per layer (see core.history.report.layer_time_figure)."""
    return api.layer_time_figure(rows, pruned)


def profile(pruned: bool = True, batch_size: int = 1) -> dict:
    """Measured time per layer of the dense model and (``pruned``) this session's plan; see
    core.deploy.profile.profile_plan. The Tune table then shows it (``known_profile``). Raises PrunelabError."""
    plan = session.plan_object() if pruned else None
    key = session.model_key()
    with state.lock(key):
        report = _profile(session.model(), key, plan.digest if plan else "", plan, batch_size)
    if plan is not None and batch_size == 1:
        st.session_state.setdefault(PROFILED, {})[(key, plan.digest)] = report
    return report


def known_profile() -> dict | None:
    """The profile of this session's plan when one was taken (Profile buttons), else None: never measured here."""
    return st.session_state.get(PROFILED, {}).get((session.model_key(), session.plan_object().digest))
