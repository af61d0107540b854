"""The Tune page's goal box: pick a goal, run the quick sweep it needs, Auto-allocate, and see what a
depth-aware allocation chose beside the options it compared."""
from __future__ import annotations

import streamlit as st

from dashboard import goals, plan_editor, session, state, sweeps
from dashboard.glossary import TERMS


@st.fragment(run_every=1.0)
def sweep_progress() -> None:
    """The quick sweep's progress while it runs; the page reruns when it ends."""
    job = sweeps.sweep_job()
    if job is None or not job.running:
        st.rerun(scope="app")
    st.progress(job.done / job.total if job.total else 0.0,
                text=f"Sensitivity sweep {job.done}/{job.total or '?'}: {job.text}")


def _allocate(goal: str, value: float, spend: str = "width") -> None:
    with session.guard("auto-allocate"):
        goals.allocate_to_goal(goal, value, spend)
        plan_editor.forget_widgets()


def spending_ui() -> None:
    """What the last depth-aware Auto-allocate chose, beside the options it compared."""
    spending = st.session_state.get(goals.SPENDING)
    if spending:
        st.markdown(f":material/call_split: Spent on **{spending['way']}**, the option that kept most quality "
                    "on the validation items:")
        st.dataframe(spending["rows"], hide_index=True, key="tune-spending", **_spending_columns(spending))


SHARES = ("accuracy", "agreement")  # quality figures that are a share of the items


def _spending_columns(spending: dict) -> dict:
    """The figures first (the column is narrow: what each way removes and why not come last), formatted."""
    figures = [name for name in spending["rows"][0] if name not in ("way", "removes", "chosen", "note")]
    ratio = "speedup" if spending["resource"] == "latency_ms" else "reduction"
    config = {ratio: st.column_config.NumberColumn(format="%.2f×"),
              spending["resource"]: st.column_config.NumberColumn(format="localized")}
    config.update({name: st.column_config.NumberColumn(format="percent") for name in figures
                   if name in SHARES})  # a share of the items, shown as elsewhere on the page
    return {"column_order": ["way", *figures, "removes", "note"], "column_config": config}


def goal_ui(plan: state.Plan) -> None:
    """Pick a goal; Auto-allocate fills the sliders, after the sweep it needs (offered right here)."""
    with st.container(border=True):
        available = goals.goals_for(plan.granularity)
        names = {name: goals.goal_text(name)[0] for name in available}  # fixed now: AppTest formats later
        goal_column, value_column = st.columns([3, 2])
        goal = goal_column.selectbox("Goal", available, format_func=names.get,
                                     key=f"w.tune.goal.{session.quality_label()}",
                                     help="what Auto-allocate aims for; fewer MACs and a "
                                     "latency need Granularity: channel, since zeroed weights do not change them")
        _, unit, (low, high, default, step) = goals.goal_text(goal)
        value = value_column.number_input(unit, low, high, default, step, key=goals.goal_key(goal))
        if goal == "latency":
            st.toggle("Price by each layer's measured time", key=goals.BY_PROFILE, help=TERMS["by_profile"])
        ways = goals.spend_choices(goal)
        spend = "width" if len(ways) == 1 else st.selectbox(
            "Spend on", ways, format_func=goals.SPENDS.get, key="w.tune.spend",
            help="remove channels, whole blocks, both, or let allocation try all three and keep the best")
        job = sweeps.sweep_job()
        missing = goals.needs_sweep()
        if job is not None and job.running:
            sweep_progress()
        elif missing:
            st.markdown(f":material/info: {missing}")
            if plan.nm is None:
                st.button("Run the quick sweep (5 levels per layer)", icon=":material/play_arrow:",
                          on_click=goals.start_quick_sweep, key="tune-quick-sweep",
                          help="prunes each layer alone to 30/50/70/90% and scores it; the Sensitivity page runs "
                               "finer sweeps")
        if job is not None and job.error:
            st.error(job.error)
        st.button("Auto-allocate", icon=":material/auto_fix_high:", type="primary", disabled=bool(missing),
                  on_click=_allocate, args=(goal, value, spend), key="tune-allocate",
                  help="fills the sliders below to reach the goal while losing as little accuracy as the sweep "
                       "predicts")
        spending_ui()
