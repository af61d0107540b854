"""Tune: shape a pruning plan with one slider per layer (or a goal) and watch the measured metrics move."""
from __future__ import annotations

import streamlit as st

from dashboard import (
    closer_look,
    formatting,
    goal_box,
    goals,
    layer_views,
    live,
    plan_editor,
    session,
    state,
    summary,
)
from dashboard.glossary import CALIBRATED, CRITERIA, TERMS

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
    """One switch per removable block (on: kept); off removes the whole block, leaving its skip path. Each
    shows the score the plan's criterion ranks blocks by (influence, or fisher's block Fisher score)."""
    blocks = [block for block in session.block_table() if block["removable"]]
    if not blocks:
        return
    dropped = set(state.dropped())
    with st.expander(f"Blocks: {len(blocks) - len(dropped & {b['name'] for b in blocks})} of {len(blocks)} kept",
                     expanded=bool(dropped), icon=":material/layers:"):
        score, scores = "influence", {}
        with session.guard("scoring the blocks"):
            score, scores = session.block_scores(state.plan().criterion)
        term = "block_fisher" if score == "fisher" else "influence"
        st.caption(f"Switch a block off to remove it whole (depth pruning); a depth share and Auto-allocate's "
                   f"depth option remove the lowest {'block Fisher score' if score == 'fisher' else 'influence'} "
                   f"first.", help=TERMS[term])
        for block in blocks:
            key = f"w.block.{block['name']}"
            state.seed(key, block["name"] not in dropped)
            value = scores.get(block["name"], block["influence"])
            st.toggle(f"{block['name']} · {score} {value:.3g} · {formatting.count(block['macs'])} MACs", key=key,
                      on_change=_on_block, args=(block["name"],),
                      help=f"{block['kind']}, {len(block['layers'])} prunable layers. {TERMS[term]}")


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
        goal_box.goal_ui(current)
        edit_ui()
        blocks_ui()
        sliders_ui(current)
    with panel:
        metrics_panel()
        if session.is_language_model():
            prompt_ui()
        layer_views.layers_ui()
