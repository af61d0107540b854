"""Recovery runs (fine-tuning, gradual, iterative, lottery ticket) for the dashboard.

Fine-tuning, gradual, iterative and lottery-ticket runs go to a worker thread on a private copy
of the model, like the sensitivity sweep: the page polls the job's history for the live curve and
the Stop button sets the job's event. When a run ends, its recovered model is measured on ONNX
Runtime against the dense baseline and that report is what ``measure()`` (the metric panel)
returns while the session's plan stays the one the run used; "Discard" or any plan change ends it.

Part of the session layer: pages reach these names as ``session.<name>``.
"""
from __future__ import annotations

import dataclasses
import threading
import uuid

import streamlit as st

from core.errors import PrunelabError, error_line
from dashboard.session import _evaluator, _lock, baseline, model, model_key, plan, plan_object

__all__ = ['RECOVERED', 'RECOVERY', 'RECOVERY_METHODS', 'RecoveryJob', '_recover', '_recovered_metrics', 'discard_recovered', 'finish_recovery', 'recovered_active', 'recovered_artifact', 'recovered_report', 'recovery_epochs', 'recovery_job', 'schedule_curve', 'start_recovery', 'stop_recovery']

RECOVERY = "prunelab.recovery"      # this session's RecoveryJob (running or finished)
RECOVERED = "prunelab.recovered"    # {"model_key", "plan_digest", "report", "module", "id"} of the adopted recovered model
RECOVERY_METHODS = ("finetune", "gradual", "iterative", "lottery")


@dataclasses.dataclass
class RecoveryJob:
    """A recovery run in a worker thread: per-epoch rows as they come, then a summary and a report."""

    method: str
    settings: dict
    plan: dict
    total_epochs: int
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    history: list = dataclasses.field(default_factory=list)
    summary: dict | None = None
    report: dict | None = None
    module: object = None  # the recovered nn.Module, handed to the session when the run ends
    error: str | None = None
    thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


def recovery_epochs(method: str, epochs: int, rounds: int) -> int:
    """Epochs a run trains in all (lottery: dense, each round, and the random re-init control)."""
    return {"finetune": epochs, "gradual": epochs, "iterative": rounds * epochs,
            "lottery": (rounds + 2) * epochs}[method]


def schedule_curve(final_sparsity: float, epochs: int, initial_sparsity: float = 0.0, end_fraction: float = 0.75,
                   power: float = 3.0) -> list[dict]:
    """``[{"epoch", "step", "sparsity"}]`` of the gradual schedule the run would use, for plotting before it runs."""
    from core.train.recovery import steps_per_epoch
    from core.train.schedule import PolynomialDecay

    per_epoch = steps_per_epoch(model())
    total = max(2, epochs * per_epoch)
    schedule = PolynomialDecay(initial_sparsity, final_sparsity, 0, max(1, int(end_fraction * total)),
                               max(1, per_epoch // 4), power)
    return [{**point, "epoch": point["step"] / per_epoch} for point in schedule.curve(total)]


def _recover(job: RecoveryJob, handle, key: str) -> None:
    from core.train import recovery
    from core.prune.plan import Plan

    plan = Plan.from_dict(job.plan)
    settings, callbacks = dict(job.settings), {"on_epoch": job.history.append, "should_stop": job.stop.is_set}
    schedule = settings.pop("schedule", None)
    try:
        if job.method == "finetune":
            result = recovery.finetune(handle, plan, settings["epochs"], lr=settings["lr"], **callbacks)
        elif job.method == "gradual":
            result = recovery.gradual_prune(handle, plan, settings["epochs"], schedule=schedule,
                                            lr=settings["lr"], **callbacks)
        elif job.method == "iterative":
            result = recovery.iterative_prune(handle, plan, settings["rounds"], settings["epochs"],
                                              lr=settings["lr"], **callbacks)
        else:
            result = recovery.lottery_ticket(handle, plan, settings["rounds"], settings["epochs"],
                                             rewind_epoch=settings["rewind_epoch"], lr=settings["lr"], **callbacks)
        job.summary = result.summary()
        job.report = _recovered_metrics(handle, result, plan, key)
        job.module = result.module
    except PrunelabError as error:
        job.error = str(error)
    except Exception as error:  # anything else from the engine: one line for the page
        job.error = error_line(error, with_type=True)


def _recovered_metrics(handle, result, plan, key: str) -> dict:
    """A report shaped like ``measure()``'s: the recovered model against the dense baseline."""
    import numpy as np

    from core.deploy.evaluate import LiveEvaluator
    from core.deploy.measure import torch_outputs

    recovered = dataclasses.replace(handle, module=result.module, _digest=None)
    metrics = dict(LiveEvaluator(recovered, threads=2).baseline())
    dense = torch_outputs(handle.module, handle.data.x_test).argmax(1)
    metrics["agreement"] = float(np.mean(torch_outputs(result.module, handle.data.x_test).argmax(1) == dense))
    layer_sparsity = {name: 1.0 - float(mask.float().mean()) for name, mask in (result.masks or {}).items()}
    accuracy = result.accuracy
    note = (f"recovered by {result.method} ({len(result.history)} epochs): test accuracy one-shot "
            f"{accuracy['one_shot']:.1%} -> {accuracy['recovered']:.1%}, dense {accuracy['dense']:.1%}"
            if accuracy.get("recovered") is not None and accuracy.get("one_shot") is not None else
            f"recovered by {result.method} ({len(result.history)} epochs)")
    with _lock(key):
        baseline = _evaluator(handle, key).baseline()
    return {"model": handle.name, "plan": plan.to_dict(), "pruned": metrics, "baseline": baseline,
            "layer_sparsity": layer_sparsity, "groups": None, "notes": [note], "recovered": True}


def start_recovery(method: str, epochs: int, lr: float = 3e-3, rounds: int = 3, rewind_epoch: int = 0,
                   schedule: dict | None = None) -> None:
    """Start a recovery run of this session's model and plan. Raises PrunelabError when one is running
    or the model cannot be trained (no training split)."""
    import copy

    from core.train.schedule import PolynomialDecay

    if method not in RECOVERY_METHODS:
        raise PrunelabError(f"unknown recovery method '{method}' (choose from {', '.join(RECOVERY_METHODS)})")
    current = recovery_job()
    if current is not None and current.running:
        raise PrunelabError("a recovery run is already going; stop it first")
    handle = model()
    handle.require("finetune")
    if not handle.data.trainable:
        raise PrunelabError(f"fine-tuning needs training data: '{handle.data.name}' has no x_train/y_train")
    key = model_key()
    with _lock(key):
        private = dataclasses.replace(handle, module=copy.deepcopy(handle.module))
    settings = {"epochs": int(epochs), "lr": float(lr), "rounds": int(rounds), "rewind_epoch": int(rewind_epoch)}
    if schedule:
        settings["schedule"] = PolynomialDecay(**schedule)
    job = RecoveryJob(method, settings, plan_object().to_dict(), recovery_epochs(method, epochs, rounds))
    job.thread = threading.Thread(target=_recover, args=(job, private, key), name="prunelab-recovery", daemon=True)
    st.session_state[RECOVERY] = job
    st.session_state.pop(RECOVERED, None)
    job.thread.start()


def recovery_job() -> RecoveryJob | None:
    return st.session_state.get(RECOVERY)


def stop_recovery() -> None:
    job = recovery_job()
    if job is not None:
        job.stop.set()


def finish_recovery() -> dict | None:
    """When the run has ended, make its recovered model the one the metric panel measures; return the summary."""
    from core.prune.plan import Plan

    job = recovery_job()
    if job is None or job.running:
        return None
    if job.report is not None and RECOVERED not in st.session_state:
        st.session_state[RECOVERED] = {"model_key": model_key(), "plan_digest": Plan.from_dict(job.plan).digest,
                                       "report": job.report, "module": job.module, "id": uuid.uuid4().hex}
        job.report, job.module = None, None
    return job.summary


def recovered_report(plan_digest: str) -> dict | None:
    """The adopted recovered model's report while the model and plan are the ones it was trained for."""
    adopted = st.session_state.get(RECOVERED)
    if adopted is None:
        return None
    if adopted["model_key"] != model_key() or adopted["plan_digest"] != plan_digest:
        st.session_state.pop(RECOVERED, None)
        return None
    return adopted["report"]


def recovered_artifact(kind: str, plan_digest: str) -> bytes | None:
    """The adopted recovered model as ``kind`` (see module_bytes), or None when none is in use."""
    if recovered_report(plan_digest) is None:
        return None
    adopted = st.session_state[RECOVERED]
    return _recovered_bytes(adopted["module"], model().example_input(), adopted["id"], kind)


@st.cache_data(max_entries=4, show_spinner=False)
def _recovered_bytes(_module, _example, recovery_id: str, kind: str) -> bytes:
    from dashboard.session import module_bytes

    return module_bytes(_module, _example, kind)


def recovered_active() -> bool:
    return st.session_state.get(RECOVERED) is not None


def discard_recovered() -> None:
    st.session_state.pop(RECOVERED, None)
