"""Tune: shape a pruning plan with one slider per layer (or a goal) and watch the measured metrics move."""
from __future__ import annotations

import streamlit as st

from dashboard import (
    charts,
    closer_look,
    formatting,
    goals,
    graph_view,
    live,
    plan_editor,
    session,
    state,
    summary,
    sweeps,
)
from dashboard.glossary import BLOCK_SCORES, CALIBRATED, CRITERIA, TERMS

MAX_PERCENT = round(100 * session.MAX_SPARSITY)  # sliders hold whole percents; the plan holds fractions
ROUND_TO = (state.AUTO_ROUND, 1, 4, 8, 16)
RECONSTRUCT = "Reconstruct the layers that read removed units"


def _on_granularity() -> None:
    granularity = st.session_state["w.granularity"]
    criterion = state.plan().criterion
    if criterion not in session.criteria_for(granularity):
        criterion = "l1"
        st.session_state["w.criterion"] = criterion
    if session.layer_scope_only(criterion, granularity) and state.plan().scope != "layer":
        st.session_state["w.scope"] = "layer"
        state.update_plan(scope="layer")
    previous = state.plan().granularity
    if state.switch_granularity(granularity, criterion):
        st.toast(f"Per-layer targets of {previous} are kept: switch back to {previous} to get them again.",
                 icon=":material/undo:")
    st.session_state.pop(plan_editor.TABLE_KEY, None)


def _on_global() -> None:
    percent = st.session_state["w.global"]
    state.update_plan(sparsity=percent / 100, layers={})
    ignored = {f"w.layer.{name}" for name in session.left_dense()}
    for key in [key for key in st.session_state if str(key).startswith("w.layer.") and key not in ignored]:
        st.session_state[key] = percent


def _on_layer(name: str) -> None:
    state.set_target(name, st.session_state[f"w.layer.{name}"] / 100)


def _on_criterion() -> None:
    """A criterion without a ranking across layers (wanda, sparsegpt) takes the plan back to layer scope."""
    criterion = st.session_state["w.criterion"]
    if session.layer_scope_only(criterion, state.plan().granularity):
        st.session_state["w.scope"] = "layer"
        state.update_plan(criterion=criterion, scope="layer")
    else:
        state.update_plan(criterion=criterion)


def method_ui(plan: state.Plan) -> None:
    """Granularity, criterion and scope selects and the two toggles; each writes straight into the plan."""
    for key, field in (("w.granularity", "granularity"), ("w.criterion", "criterion"), ("w.scope", "scope")):
        state.seed(key, getattr(plan, field))
    table = session.layer_table()
    first, second, third = st.columns(3)
    first.selectbox("Granularity", session.granularities(), key="w.granularity", on_change=_on_granularity,
                    help=TERMS["granularity"])
    second.selectbox("Criterion", session.criteria_for(plan.granularity), key="w.criterion",
                     on_change=_on_criterion, help=TERMS["criterion"])
    layer_only = session.layer_scope_only(plan.criterion, plan.granularity)
    third.selectbox("Scope", session.SCOPES, key="w.scope", disabled=bool(layer_only),
                    help=f"{plan.criterion} {layer_only}" if layer_only else TERMS["scope"],
                    on_change=lambda: state.update_plan(scope=st.session_state["w.scope"]))
    if plan.criterion in CALIBRATED:  # what it reads and what it costs, where the choice is made
        st.caption(f"Needs the model's data: {CRITERIA[plan.criterion]}")
    if plan.granularity == "channel":
        state.seed("w.round_to", plan.round_to)
        st.selectbox("Round kept channels to a multiple of", ROUND_TO, key="w.round_to", help=TERMS["round_to"],
                     format_func=session.round_to_label,
                     on_change=lambda: state.update_plan(round_to=st.session_state["w.round_to"]))
        if any(row.get("unit") == "head" for row in table["layers"]):
            state.seed("w.prune_width", plan.prune_width)
            st.toggle("Prune the residual stream too", key="w.prune_width", help=TERMS["prune_width"],
                      on_change=lambda: state.update_plan(prune_width=bool(st.session_state["w.prune_width"])))
        state.seed("w.reconstruct", plan.reconstruct)
        st.toggle(RECONSTRUCT, key="w.reconstruct", help=TERMS["reconstruct"],
                  on_change=lambda: state.update_plan(reconstruct=bool(st.session_state["w.reconstruct"])))
    batchnorm = table["totals"].get("batchnorm_layers", 0)
    state.seed("w.recalibrate", plan.recalibrate)
    if not batchnorm:
        st.session_state["w.recalibrate"] = False  # the plan says recalibrate: false (session.plan_object)
    why_off = "" if batchnorm else " This model has no BatchNorm layer, so there is nothing to re-estimate."
    st.toggle("Re-estimate BatchNorm statistics", key="w.recalibrate", disabled=not batchnorm,
              help=TERMS["batchnorm"] + why_off,
              on_change=lambda: state.update_plan(recalibrate=bool(st.session_state["w.recalibrate"])))
    state.seed("w.quantize", state.quantize() is not None)
    st.toggle("Quantize to INT8", key="w.quantize", help=TERMS["quantize"],
                 on_change=lambda: state.set_quantize(bool(st.session_state["w.quantize"])))


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


def edit_ui() -> None:
    """Undo and reset-to-dense buttons."""
    left, right = st.columns(2)
    left.button("Undo", icon=":material/undo:", disabled=not plan_editor.can_undo(), key="tune-undo",
                on_click=plan_editor.undo, help="back to the plan before the last change")
    right.button("Reset to dense", icon=":material/restart_alt:", key="tune-reset",
                 on_click=plan_editor.reset_to_dense,
                 help="every slider back to 0% (Undo brings the plan back)")


def rows(plan: state.Plan) -> list[tuple[str, str, str]]:
    """(plan key, slider label, help) per slider: one per layer, or one per coupled group in channel mode."""
    shown = formatting.short_names(session.layer_names())
    if plan.granularity != "channel":
        return [(name, shown[name], name if shown[name] != name else "") for name in session.layer_names()]
    order = {name: index for index, name in enumerate(session.layer_names())}
    result = []
    for group in sorted(session.groups(), key=lambda group: order.get(group["leader"], len(order))):
        others = [name for name in group["members"] if name != group["leader"]]
        suffix = (f" ({group['channels']} heads, with q/k/v)" if group.get("unit") == "head" else
                  f" (+{len(others)} coupled)" if others else "")
        label = shown.get(group["leader"], group["leader"]) + suffix
        unit = "heads" if group.get("unit") == "head" else "channels"
        result.append((group["leader"], label, f"{group['channels']} {unit} shared by: "
                                               f"{', '.join(group['members'])}. {TERMS['coupled']}"))
    return result


def sliders_ui(plan: state.Plan) -> None:
    """The global slider and one slider per layer (or group)."""
    pattern = session.nm_share(plan.granularity)
    state.seed("w.global", round(100 * plan.sparsity))
    st.slider("All layers", 0, MAX_PERCENT, step=5, format="%d%%", key="w.global", on_change=_on_global,
              disabled=pattern is not None,
              help="sets every layer to this sparsity (layers you move afterwards keep their own value)")
    dense = session.left_dense(plan.granularity)
    if pattern is not None:
        st.caption(f"{plan.granularity} zeroes a fixed {pattern:.0%} of every layer that can take it (the "
                   f"sliders show which); per-layer values do not apply.")
    inside = tuple(f"{block}." for block in state.dropped())
    for name, label, help_text in rows(plan):
        key = f"w.layer.{name}"
        if inside and name.startswith(inside):
            st.caption(f"~~{label}~~ removed with its block (switch the block back on under Blocks to prune it)")
            continue
        if name in dense or pattern is not None:  # a value the person cannot change: shown as it is
            st.session_state[key] = round(100 * session.target_of_layer(name))
        state.seed(key, round(100 * state.target(name)))
        fixed = f"{plan.granularity}: a fixed pattern" if pattern is not None else None
        st.slider(label, 0, MAX_PERCENT, step=5, format="%d%%", key=key, on_change=_on_layer, args=(name,),
                  disabled=name in dense or pattern is not None, help=dense.get(name) or fixed or help_text or None)


POLL_SECONDS = 0.4  # how often the page reads the figures of a plan being measured ...
NEWER_SECONDS = 0.25  # ... each read waiting this long for a stage not shown yet (a new release waits at most this)
POLLS = "tune.polls"  # reads of the plan being measured since the page last ran whole


def _final(report: dict | None) -> bool:
    return report is not None and report["pruned"].get("progress", {}).get("final", True)


def _draw(report: dict) -> None:
    summary.read_out(report, accepted=goals.accepted_drop())
    for note in report.get("notes", []):
        st.caption(formatting.note(note))


def _on_block(name: str) -> None:
    state.set_dropped(name, not st.session_state[f"w.block.{name}"])


def blocks_ui() -> None:
    """One switch per removable block (on: kept); off removes the whole block, leaving its skip path."""
    blocks = [block for block in session.block_table() if block["removable"]]
    if not blocks:
        return
    dropped = set(state.dropped())
    with st.expander(f"Blocks: {len(blocks) - len(dropped & {b['name'] for b in blocks})} of {len(blocks)} kept",
                     expanded=bool(dropped), icon=":material/layers:"):
        if BLOCK_SCORES[state.plan().criterion] == "fisher":
            st.caption("Switch a block off to remove it whole (depth pruning). Under criterion fisher, a depth "
                       "share and Auto-allocate's depth option remove the lowest block Fisher score first, not "
                       "the lowest influence shown here.", help=TERMS["block_fisher"])
        else:
            st.caption("Switch a block off to remove it whole (depth pruning); a depth share and Auto-allocate's "
                       "depth option remove low influence first.",
                       help=TERMS["blocks"])
        for block in blocks:
            key = f"w.block.{block['name']}"
            state.seed(key, block["name"] not in dropped)
            st.toggle(f"{block['name']} · influence {block['influence']:.3f} · "
                      f"{formatting.count(block['macs'])} MACs", key=key, on_change=_on_block, args=(block["name"],),
                      help=f"{block['kind']}, {len(block['layers'])} prunable layers. {TERMS['influence']}")


def metrics_panel() -> None:
    """This session's plan, measured in stages: first figures within a second or two, refined in place."""
    measuring = False
    with session.guard("measuring the plan"):
        report = live.live_report(wait=live.live_wait())
        measuring = not _final(report)
        if not measuring:
            _draw(report)
    if measuring:
        st.session_state[POLLS] = 0
        live_panel()


@st.fragment(run_every=POLL_SECONDS)
def live_panel() -> None:
    """The figures so far of the plan being measured; the whole page reruns once they are final."""
    if live.live_failed():
        st.rerun(scope="app")  # the page says what failed, once
    with session.guard("measuring the plan"):
        polls = st.session_state[POLLS] = st.session_state.get(POLLS, 0) + 1
        report = live.live_report(newer=NEWER_SECONDS if polls > 1 else 0.0)  # the page run waited already
        if _final(report):
            _draw(report)  # the final figures at once, before the whole page runs again to redraw them ...
            st.rerun(scope="app")  # ... with the per-layer views and the plan's label, which read them too
        if report is not None:
            _draw(report)
            return
        previous = st.session_state.get(state.LAST_REPORT)
        if previous is not None:
            summary.read_out(previous, stale=True, accepted=goals.accepted_drop())
        else:
            st.caption(":material/hourglass_top: Measuring the dense model and this plan on ONNX Runtime…")


PROMPT = "The with statement is used to"
CONTINUATION = "tune.continuation"  # the last continuations shown, with the plan they were made for


def prompt_ui() -> None:
    """A prompt, and the dense and the pruned model's greedy continuations of it side by side."""
    with st.container(border=True, key="tune-prompt"):
        state.seed("w.tune.prompt", PROMPT)
        prompt = st.text_input("Prompt", key="w.tune.prompt",
                               help="both models continue it greedily (the most likely token each time) on their "
                                    "ONNX KV-cache graphs; the pruned one uses this page's plan")
        plan_digest = session.plan_object().digest
        if st.button("Continue with the dense and the pruned model", icon=":material/play_arrow:",
                     key="tune-continue"):
            with session.guard("continuing the prompt"):
                st.session_state[CONTINUATION] = dict(closer_look.continuations(prompt), plan=plan_digest,
                                                      prompt=prompt)
        shown = st.session_state.get(CONTINUATION)
        if not shown:
            return
        if shown["plan"] != plan_digest or shown["prompt"] != prompt:
            st.caption(":material/history: made for an earlier plan or prompt: press the button again")
        dense, pruned = st.columns(2)
        for column, title, key in ((dense, "Dense", "dense"), (pruned, "Pruned", "pruned")):
            box = column.container(border=True, key=f"tune-continuation-{key}")
            box.markdown(f"**{title}**")
            box.text(shown["prompt"] + shown[key])


VIEWS = ("Sparsity per layer", "Per-layer table", "Model graph")


def layers_ui() -> None:
    """One per-layer view at a time (only the chosen one is drawn, which keeps a slider release quick)."""
    report = session.last_report()
    state.seed("w.tune.view", VIEWS[0])
    view = st.segmented_control("Per-layer view", VIEWS, key="w.tune.view", label_visibility="collapsed",
                                required=True)
    if view == "Per-layer table":
        frame = plan_editor.table_rows(report, goals.matching_sweep(), closer_look.known_profile())
        st.caption("Click a column title to sort; type a target to set it exactly. "
                   "Sensitivity: the sweep's accuracy drop for that layer alone at its target.")
        profile_button()
        st.data_editor(frame, key=plan_editor.TABLE_KEY, hide_index=True, num_rows="fixed", width="stretch",
                       disabled=[column for column in frame.columns if column != "target (%)"],
                       on_change=plan_editor.apply_edits, args=(frame,), column_config=_table_columns())
    elif view == "Model graph":
        graph_view.graph_ui()
    else:
        names = session.layer_names()
        measured = (report or {}).get("layer_sparsity") or {}
        figure = charts.layer_targets(list(formatting.short_names(names).values()),
                                      [session.target_of_layer(name) for name in names],
                                      [measured.get(name, 0.0) for name in names] if measured else None)
        st.plotly_chart(figure, key="tune-targets", config={"displayModeBar": False})


def profile_button() -> None:
    """Profile the plan on demand (never on a slider move): the table gains each layer's measured ms."""
    if closer_look.known_profile() is not None:
        return
    if st.button("Time every layer", icon=":material/timer:", key="tune-profile",
                 help="profile the dense model and this plan in ONNX Runtime; the table gains ms dense, ms pruned, "
                      "ms saved and ms per MAC (a few seconds; longer on big models)"):
        with session.guard("profiling"), st.spinner("Profiling on ONNX Runtime…"):
            closer_look.profile(True)
        st.rerun()


def _table_columns() -> dict:
    number = st.column_config.NumberColumn
    return {"layer": st.column_config.TextColumn("layer", width="medium", pinned=True,
                                                 help="a long name is cut: double-click its cell to read it whole"),
            "parameters": number("parameters", format="compact", help="weights in the layer"),
            "MACs": number("MACs", format="compact", help=TERMS["macs"]),
            "sensitivity": st.column_config.TextColumn("sensitivity", help=TERMS["sensitivity"]),
            "drop (pts)": number("drop (pts)", format="%.2f", help=TERMS["pts"]),
            "target (%)": number("target (%)", min_value=0.0, max_value=100 * session.MAX_SPARSITY, step=0.5,
                                 format="%.1f", help="the sparsity asked for; type an exact value"),
            "measured (%)": number("measured (%)", format="%.1f", help="the sparsity the pruned model really has"),
            "ms dense": number("ms dense", format="%.3f", help="the layer's measured time in the dense model"),
            "ms pruned": number("ms pruned", format="%.3f", help="the layer's measured time in the pruned model"),
            "ms saved": number("ms saved", format="%.3f", help="ms dense minus ms pruned"),
            "ms per MAC": number("ms per MAC", format="%.2fx", help=TERMS["ms_per_mac"])}


st.title("Tune")
st.caption("Drag a layer's slider (or pick a goal) to choose how much of each layer to prune; every figure is "
           "measured on the exported model in ONNX Runtime after each change.")
with session.guard("loading the model"):
    plan_editor.track()
    current = state.plan()
    live.start_measuring()  # the plan is measured while the controls are drawn; the cards show it below
    st.caption(f"Model: **{session.model().name}**, {session.model().description} (change it on the Model page)")
    controls, panel = st.columns([2, 3], gap="large")
    with controls:
        method_ui(current)
        goal_ui(current)
        edit_ui()
        blocks_ui()
        sliders_ui(current)
    with panel:
        metrics_panel()
        if session.is_language_model():
            prompt_ui()
        layers_ui()
