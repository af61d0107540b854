"""Recover: train accuracy back after pruning, watching loss and accuracy per epoch as it runs."""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from dashboard import charts, recovery, session, state

METHODS = {"finetune": "Fine-tune (masks held)", "gradual": "Gradual pruning (AGP schedule)",
           "iterative": "Iterative prune-then-fine-tune", "lottery": "Lottery ticket (rewinding)",
           "next_token": "Next-token fine-tuning on the train text (masks held)"}
LANGUAGE_METHODS = ("next_token",)  # what a causal language model offers: it trains on its own text, not labels
HEIGHT = 320


DEFAULTS = {"w.recover.method": "finetune", "w.recover.epochs": recovery.EPOCHS, "w.recover.lr": recovery.LEARNING_RATE,
            "w.recover.rounds": 3, "w.recover.rewind": 0, "w.recover.initial": 0.0,
            "w.recover.end": recovery.SCHEDULE_END_FRACTION, "w.recover.power": recovery.SCHEDULE_POWER}


def settings_ui(plan: state.Plan) -> dict | None:
    """Method and training settings (kept across page switches and runs); returns them when Run is pressed."""
    for key, value in DEFAULTS.items():
        state.seed(key, value)
    language = session.is_language_model()
    offered = [name for name in METHODS if (name in LANGUAGE_METHODS) == language]
    if st.session_state["w.recover.method"] not in offered:
        st.session_state["w.recover.method"] = offered[0]
    method = st.selectbox("Method", offered, format_func=METHODS.get, key="w.recover.method",
                          persist_state="session")
    first, second, third, fourth = st.columns(4)
    epochs = first.number_input("Epochs" + (" per round" if method in ("iterative", "lottery") else ""),
                                1, 100, key="w.recover.epochs", persist_state="session")
    lr = second.number_input("Peak learning rate", 1e-4, 1e-1, format="%.4f", key="w.recover.lr",
                             persist_state="session")
    rounds = third.number_input("Rounds", 1, 10, key="w.recover.rounds", persist_state="session",
                                disabled=method not in ("iterative", "lottery"))
    rewind = fourth.number_input("Rewind to epoch", 0, 99, key="w.recover.rewind", persist_state="session",
                                 disabled=method != "lottery",
                                 help="0 rewinds to the initialization; 1 or 2 (late rewinding) helps at high sparsity")
    schedule, ready = None, True
    granularity = plan.granularity
    if (method in ("gradual", "lottery") and granularity != "unstructured") or (method == "iterative"
                                                                               and session.nm_share(granularity)):
        st.info(f"{METHODS[method]} ramps weight masks up; a {granularity} plan cannot: use fine-tuning"
                f"{' or iterative pruning' if granularity == 'channel' else ''}, or pick unstructured on the "
                f"Tune page.", icon=":material/info:")
        ready = False
    elif method == "gradual":
        final = recovery.gradual_target(plan)
        if final <= 0:
            st.info("Gradual pruning ramps up to the plan's targets: set a target above 0% on the Tune page first.",
                    icon=":material/info:")
            ready = False
        else:
            schedule = schedule_ui(final, int(epochs))
    if st.button("Run", type="primary", icon=":material/play_arrow:", disabled=not ready):
        return {"method": method, "epochs": int(epochs), "lr": float(lr), "rounds": int(rounds),
                "rewind_epoch": int(rewind), "schedule": schedule}
    return None


def schedule_ui(final: float, epochs: int) -> dict:
    """Initial sparsity, ramp length and power of the AGP schedule, plotted before the run.

    The schedule ends at the plan's largest target; every layer ends at its own target.
    """
    if st.session_state["w.recover.initial"] > final:
        st.session_state["w.recover.initial"] = 0.0
    left, middle, right = st.columns(3)
    initial = left.slider("Initial sparsity", 0.0, float(final), step=0.01, key="w.recover.initial",
                          persist_state="session")
    end = middle.slider("Ramp ends at (share of training)", 0.1, 1.0, step=0.05, key="w.recover.end",
                        persist_state="session")
    power = right.slider("Power", 1.0, 5.0, step=0.5, key="w.recover.power", persist_state="session")
    schedule, curve = recovery.schedule_curve(final, epochs, initial, end, power)
    st.plotly_chart(schedule_figure(curve), key="recover-schedule", config={"displayModeBar": False})
    return schedule


def schedule_figure(curve: list[dict]) -> go.Figure:
    figure = go.Figure(go.Scatter(x=[point["epoch"] for point in curve],
                                  y=[100 * point["sparsity"] for point in curve], mode="lines", line_shape="hv"))
    return _layout(figure, "Sparsity the schedule holds during training", "epoch", "sparsity (%)")


def training_ui(history: list[dict], key: str) -> None:
    """Loss and validation accuracy per epoch, side by side; a line instead of an empty chart before epoch 1."""
    if not history:
        figure = "perplexity" if session.is_language_model() else "accuracy"
        st.caption(f":material/hourglass_top: The first epoch is running; its loss and validation {figure} "
                   f"appear here when it ends.")
        return
    loss, accuracy = charts.training_curves(history)
    left, right = st.columns(2)
    left.plotly_chart(loss, key=f"{key}-loss", config={"displayModeBar": False})
    right.plotly_chart(accuracy, key=f"{key}-accuracy", config={"displayModeBar": False})


def _layout(figure: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    figure.update_layout(title={"text": title, "x": 0, "font": {"size": 14}}, height=HEIGHT,
                         margin={"l": 10, "r": 10, "t": 40, "b": 10}, xaxis_title=x_title, yaxis_title=y_title,
                         legend={"orientation": "h", "y": -0.25})
    return figure


@st.fragment(run_every=0.5)
def progress_panel() -> None:
    """The running job's progress, live training curve and Stop button; reruns the page when it ends."""
    job = recovery.recovery_job()
    if job is None or not job.running:
        st.rerun(scope="app")
    history = list(job.rows)
    epochs = recovery.recovery_epochs(job.settings["method"], job.settings["epochs"], job.settings["rounds"])
    phase = f" ({history[-1]['phase']})" if history and "phase" in history[-1] else ""
    steps = (f", step {job.done:,}/{job.total:,}, {job.text}" if job.done
             else ", pruning and scoring the one-shot model before the first step")
    st.progress(job.fraction, text=f"epoch {min(len(history) + 1, epochs)}/{epochs}{phase}{steps}")
    training_ui(history, "recover-live")
    st.button("Stop", icon=":material/stop:", on_click=recovery.stop_recovery, key="recover-stop",
              disabled=job.stop.is_set())


def results_ui(summary: dict) -> None:
    perplexity = summary["details"].get("perplexity")  # a language model: test perplexity, lower is better
    figures = perplexity or summary["accuracy"]
    columns = st.columns(len(figures) + 1)
    for column, (name, value) in zip(columns, figures.items()):
        if perplexity:
            column.metric(f"{name.replace('_', ' ')} perplexity", f"{value:.2f}")
        else:
            column.metric(f"{name.replace('_', ' ')} accuracy", "-" if value is None else f"{value:.2%}")
    columns[-1].metric("prunable weights zero", f"{summary['sparsity']:.1%}")
    if summary["stopped"]:
        st.warning("Stopped early: these are the figures of the partly trained model.")
    training_ui(summary["history"], "recover-result")
    if recovery.recovered_active():
        st.success("The metric panel on the Tune page now measures this recovered model (until the plan changes).",
                   icon=":material/check_circle:")
        st.button("Discard the recovered model", on_click=recovery.discard_recovered, key="recover-discard")


st.title("Recover")
st.caption("Pruning hurts; training heals it. Pruned weights stay exactly zero throughout, channel-pruned models "
           "train as the smaller model they are, and the same seed gives the same weights.")
with session.guard("recovery"):
    plan = state.plan()
    st.caption(f"Model **{session.model().name}**, plan: {session.plan_label(plan)} (set it on the Tune page)")
    job = recovery.recovery_job()
    if job is not None and job.running:
        progress_panel()
    else:
        settings = settings_ui(plan)
        if settings is not None:
            recovery.start_recovery(**settings)
            st.rerun()
        if job is not None and job.error:
            st.error(job.error)
        summary = recovery.finish_recovery()
        if summary is not None:
            results_ui(summary)
