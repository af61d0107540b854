"""Plan editing beyond the sliders: undo, reset to dense, and the per-layer table with numeric entry.

Undo keeps the plans this session had, newest last: ``track`` (called once per Tune run) notices
any change, whoever made it (a slider, Auto-allocate, a plan loaded from History), and keeps the
plan before it. The per-layer table shows parameters, MACs, sensitivity from the sweep and the
target and measured sparsity, and takes exact targets typed into its Target column.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import session, state

UNDO = "prunelab.undo"          # list of earlier plans, newest last
SEEN = "prunelab.undo.seen"     # (model key, plan) as of the last Tune run
UNDO_DEPTH = 50
TABLE_KEY = "tune-table"  # not a "w." key: a data editor's state cannot be written back
SENSITIVITY_LEVELS = ((0.005, "🟢 low"), (0.02, "🟠 medium"), (float("inf"), "🔴 high"))


def track() -> None:
    """Keep the previous plan when the plan changed since the last run (a new model starts afresh)."""
    key, current = session.model_key(), state.plan()
    seen = st.session_state.get(SEEN)
    if seen is not None and seen[0] != key:
        st.session_state[UNDO] = []
    elif seen is not None and seen[1] != current:
        stack = st.session_state.setdefault(UNDO, [])
        stack.append(seen[1])
        del stack[:-UNDO_DEPTH]
    st.session_state[SEEN] = (key, current)


def forget_widgets() -> None:
    """Drop the plan's widgets (sliders, selects, the table's edits) so each reseeds from the plan."""
    state.forget_plan_widgets()
    st.session_state.pop(TABLE_KEY, None)


def undo() -> None:
    """Go back to the plan before the last change (on_click of Undo)."""
    stack = st.session_state.get(UNDO) or []
    if stack:
        st.session_state[state.PLAN] = stack.pop()
        st.session_state[SEEN] = (session.model_key(), state.plan())
        forget_widgets()


def reset_to_dense() -> None:
    """Every slider back to 0% (Undo brings the plan back)."""
    state.update_plan(sparsity=0.0, layers={}, drop=(), depth=0.0)  # every block back too
    forget_widgets()


def can_undo() -> bool:
    return bool(st.session_state.get(UNDO))


def predicted_drop(result: dict | None, layer: str, sparsity: float) -> float | None:
    """The sweep's accuracy drop (a fraction) of ``layer`` alone at ``sparsity``, interpolated; None unknown."""
    if result is None:
        return None
    for row in result["layers"]:
        if row["name"] == layer or layer in (row.get("members") or ()):
            levels = [point["sparsity"] for point in row["curve"]]
            drops = [result["baseline_accuracy"] - point["accuracy"] for point in row["curve"]]
            return float(np.interp(sparsity, levels, drops))
    return None


def sensitivity_word(drop: float | None) -> str:
    if drop is None:
        return "– (no sweep)"
    return next(word for limit, word in SENSITIVITY_LEVELS if drop < limit)


def table_rows(report: dict | None, sweep: dict | None, profile: dict | None = None) -> pd.DataFrame:
    """One row per prunable layer: size, work, sensitivity at its target, target and measured sparsity (%),
    and with a ``profile`` of this plan (core.deploy.profile.profile_plan) its measured time (``time_columns``)."""
    measured = (report or {}).get("layer_sparsity") or {}
    dense = session.left_dense()
    rows = []
    for layer in session.layer_table()["layers"]:
        name = layer["name"]
        target = session.target_of_layer(name)
        drop = predicted_drop(sweep, name, target)
        rows.append({"layer": name, "parameters": layer.get("params"), "MACs": layer.get("macs"),
                     "sensitivity": "– (left dense)" if name in dense else sensitivity_word(drop),
                     "drop (pts)": None if drop is None else round(100 * drop, 2),
                     "target (%)": round(100 * target, 1),
                     "measured (%)": round(100 * measured[name], 1) if name in measured else None})
    frame = pd.DataFrame(rows)
    if profile is not None:
        frame = frame.join(time_columns(profile, list(frame["layer"])))
    return frame if sweep is not None else frame.drop(columns=["drop (pts)"])


def time_columns(profile: dict, names: list[str]) -> pd.DataFrame:
    """ms dense, ms pruned, ms saved and ms per MAC (pruned over dense: 1 when time fell with the MACs) of
    every layer in ``names``, in that order, from a profile report; empty cells for a layer it did not time."""
    measured = {row["name"]: row for row in profile["rows"]}
    cells = [measured.get(name, {}) for name in names]
    return pd.DataFrame({"ms dense": [row.get("ms_dense") for row in cells],
                         "ms pruned": [row.get("ms_pruned") for row in cells],
                         "ms saved": [row.get("ms_saved") for row in cells],
                         "ms per MAC": [row.get("ms_per_mac") for row in cells]})


def apply_edits(frame: pd.DataFrame) -> None:
    """on_change of the table: every edited Target becomes that layer's (or its group leader's) target."""
    edited = st.session_state.get(TABLE_KEY, {}).get("edited_rows", {})
    leaders = {member: group["leader"] for group in session.groups() for member in group["members"]} \
        if state.plan().granularity == "channel" else {}
    for row, changes in edited.items():
        if "target (%)" in changes and changes["target (%)"] is not None:
            name = frame.iloc[int(row)]["layer"]
            value = min(max(float(changes["target (%)"]), 0.0), 100 * session.MAX_SPARSITY) / 100
            state.set_target(leaders.get(name, name), value)
    forget_widgets()
