"""Recover: train accuracy back after pruning, watching loss and accuracy per epoch as it runs."""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from dashboard import session

METHODS = {"finetune": "Fine-tune (masks held)", "gradual": "Gradual pruning (AGP schedule)",
           "iterative": "Iterative prune-then-fine-tune", "lottery": "Lottery ticket (rewinding)"}
HEIGHT = 320


def settings_ui(values: dict) -> dict | None:
    """Method and training settings; returns them when Run is pressed."""
    method = st.selectbox("Method", list(METHODS), format_func=METHODS.get, key="w.recover.method")
    first, second, third, fourth = st.columns(4)
    epochs = first.number_input("Epochs" + (" per round" if method in ("iterative", "lottery") else ""),
                                1, 100, 5, key="w.recover.epochs")
    lr = second.number_input("Peak learning rate", 1e-4, 1e-1, 3e-3, format="%.4f", key="w.recover.lr")
    rounds = third.number_input("Rounds", 1, 10, 3, key="w.recover.rounds", disabled=method in ("finetune", "gradual"))
    rewind = fourth.number_input("Rewind to epoch", 0, 99, 0, key="w.recover.rewind", disabled=method != "lottery",
                                 help="0 rewinds to the initialization; 1 or 2 (late rewinding) helps at high sparsity")
    schedule = None
    if method == "gradual":
        schedule = schedule_ui(values["sparsity"], int(epochs))
    if st.button("Run", type="primary", icon=":material/play_arrow:"):
        return {"method": method, "epochs": int(epochs), "lr": float(lr), "rounds": int(rounds),
                "rewind_epoch": int(rewind), "schedule": schedule}
    return None


def schedule_ui(final: float, epochs: int) -> dict:
    """Initial sparsity, ramp length and power of the AGP schedule, plotted before the run."""
    left, middle, right = st.columns(3)
    initial = left.slider("Initial sparsity", 0.0, float(final), 0.0, 0.05, key="w.recover.initial")
    end = middle.slider("Ramp ends at (share of training)", 0.1, 1.0, 0.75, 0.05, key="w.recover.end")
    power = right.slider("Power", 1.0, 5.0, 3.0, 0.5, key="w.recover.power")
    curve = session.schedule_curve(final, epochs, initial, end, power)
    st.plotly_chart(schedule_figure(curve), key="recover-schedule", config={"displayModeBar": False})
    steps = len(curve) - 1
    return {"initial_sparsity": initial, "final_sparsity": final, "begin_step": 0,
            "end_step": max(1, int(end * steps)), "frequency": max(1, int(round(steps / epochs)) // 4),
            "power": power}


def schedule_figure(curve: list[dict]) -> go.Figure:
    figure = go.Figure(go.Scatter(x=[point["epoch"] for point in curve],
                                  y=[100 * point["sparsity"] for point in curve], mode="lines", line_shape="hv"))
    return _layout(figure, "Sparsity the schedule holds during training", "epoch", "sparsity (%)")


def training_figure(history: list[dict], total: int) -> go.Figure:
    """Mean training loss and validation accuracy per epoch, on two axes."""
    epochs = [row["epoch"] for row in history]
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=epochs, y=[row["loss"] for row in history], name="loss", mode="lines+markers"))
    figure.add_trace(go.Scatter(x=epochs, y=[None if row["val_accuracy"] is None else 100 * row["val_accuracy"]
                                              for row in history], name="val accuracy (%)", mode="lines+markers",
                                yaxis="y2", text=[row.get("phase", "") for row in history]))
    figure.update_layout(xaxis={"range": [0.5, total + 0.5]}, yaxis2={"overlaying": "y", "side": "right",
                                                                      "title": "val accuracy (%)"})
    return _layout(figure, "Training", "epoch", "loss")


def _layout(figure: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    figure.update_layout(title={"text": title, "x": 0, "font": {"size": 14}}, height=HEIGHT,
                         margin={"l": 10, "r": 10, "t": 40, "b": 10}, xaxis_title=x_title, yaxis_title=y_title,
                         legend={"orientation": "h", "y": -0.25})
    return figure


@st.fragment(run_every=0.5)
def progress_panel() -> None:
    """The running job's progress, live training curve and Stop button; reruns the page when it ends."""
    job = session.recovery_job()
    if job is None or not job.running:
        st.rerun(scope="app")
    history = list(job.history)
    st.progress(min(1.0, len(history) / job.total_epochs), text=f"epoch {len(history)}/{job.total_epochs}"
                + (f" ({history[-1]['phase']})" if history and "phase" in history[-1] else ""))
    st.plotly_chart(training_figure(history, job.total_epochs), key="recover-live", config={"displayModeBar": False})
    st.button("Stop", icon=":material/stop:", on_click=session.stop_recovery, key="recover-stop",
              disabled=job.stop.is_set())


def results_ui(summary: dict) -> None:
    accuracy = summary["accuracy"]
    columns = st.columns(len(accuracy) + 1)
    for column, (name, value) in zip(columns, accuracy.items()):
        column.metric(f"{name.replace('_', ' ')} accuracy", "-" if value is None else f"{value:.2%}")
    columns[-1].metric("prunable weights zero", f"{summary['sparsity']:.1%}")
    if summary["stopped"]:
        st.warning("Stopped early: these are the figures of the partly trained model.")
    st.plotly_chart(training_figure(summary["history"], max(1, len(summary["history"]))), key="recover-result",
                    config={"displayModeBar": False})
    if session.recovered_active():
        st.success("The metric panel on the Tune page now measures this recovered model (until the plan changes).",
                   icon=":material/check_circle:")
        st.button("Discard the recovered model", on_click=session.discard_recovered, key="recover-discard")


st.title("Recover")
st.caption("Pruning hurts; training heals it. Pruned weights stay exactly zero throughout, channel-pruned models "
           "train as the smaller model they are, and the same seed gives the same weights.")
with session.guard("recovery"):
    values = session.plan()
    st.caption(f"Model **{session.model().name}**, plan: {values['granularity']} {values['criterion']} "
               f"{values['scope']} at {values['sparsity']:.0%} (set it on the Tune page)")
    job = session.recovery_job()
    if job is not None and job.running:
        progress_panel()
    else:
        settings = settings_ui(values)
        if settings is not None:
            session.start_recovery(**settings)
            st.rerun()
        if job is not None and job.error:
            st.error(job.error)
        summary = session.finish_recovery()
        if summary is not None:
            results_ui(summary)
