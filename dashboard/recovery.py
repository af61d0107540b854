"""Recovery runs (fine-tuning, gradual, iterative, lottery ticket) for the Recover page.

A run is a background job (dashboard/jobs.py) on a private copy of the model; its rows are the
per-epoch history for the live curve. When it ends, the recovered model becomes the one this
session measures (the Tune page's metrics) and hands over (the Export page's files) while the
plan stays the one it was trained for; "Discard" or any plan change ends that.
"""
from __future__ import annotations

import math
import uuid

from core import api
from core.errors import PrunelabError
from dashboard import jobs, session, state

JOB = "recovery run"
BATCH = api.TRAINING_BATCH  # items per optimizer step, as every recovery method trains
EPOCHS, LEARNING_RATE = api.Training.epochs, api.Training.lr  # the Recover page's starting values
METHODS = tuple(api.RECOVERY_METHODS)
SCHEDULE_END_FRACTION, SCHEDULE_POWER = api.SCHEDULE_END_FRACTION, api.SCHEDULE_POWER  # AGP defaults (core)


def recovery_epochs(method: str, epochs: int, rounds: int) -> int:
    return api.recovery_epochs(method, epochs, rounds)


def gradual_target(plan: api.Plan | None = None) -> float:
    """The largest target of the plan: where a gradual schedule ends (each layer ends at its own target)."""
    plan = state.plan() if plan is None else plan
    return max([plan.sparsity, *plan.layer_targets.values()])


def schedule_curve(final_sparsity: float, epochs: int, initial_sparsity: float = 0.0,
                   end_fraction: float = api.SCHEDULE_END_FRACTION, power: float = api.SCHEDULE_POWER
                   ) -> tuple[dict, list[dict]]:
    """The gradual schedule a run would use (PolynomialDecay's arguments) and its curve, for plotting."""
    return api.schedule_curve(session.model(), final_sparsity, epochs, initial_sparsity, end_fraction, power)


def start_recovery(method: str, epochs: int, lr: float = LEARNING_RATE, rounds: int = 3, rewind_epoch: int = 0,
                   schedule: dict | None = None) -> None:
    """Start a recovery run of this session's model and plan. Raises PrunelabError when one is running,
    the method is unknown, or the model cannot be trained (no training split)."""
    if method not in METHODS:
        raise PrunelabError(f"unknown recovery method '{method}' (choose from {', '.join(METHODS)})")
    handle = session.model()
    handle.require("finetune")
    if not handle.data.trainable and handle.output_kind != "causal":  # a language model trains on its own text
        raise PrunelabError(f"fine-tuning needs training data: '{handle.data.name}' has no x_train/y_train")
    plan = session.plan_object()
    if method == "gradual" and gradual_target() <= 0:
        raise PrunelabError("gradual pruning needs a target above 0%: set one on the Tune page")
    with state.lock(session.model_key()):
        private = api.private_copy(handle)
    settings = {"method": method, "epochs": int(epochs), "lr": float(lr), "rounds": int(rounds),
                "rewind_epoch": int(rewind_epoch), "schedule": schedule, "plan_digest": plan.digest}

    steps = recovery_epochs(method, int(epochs), int(rounds)) * math.ceil(len(private.data.x_train) / BATCH)

    def work(job: jobs.Job):
        summary, recovered = api.recover(private, plan, method, epochs=int(epochs), lr=float(lr), rounds=int(rounds),
                                         rewind_epoch=int(rewind_epoch), schedule=schedule,
                                         on_epoch=job.rows.append, should_stop=job.stop.is_set,
                                         on_step=lambda step, loss: job.report(step, steps, f"loss {loss:.3f}"))
        return {"summary": summary, "handle": recovered}

    session.discard_recovered()
    jobs.start(JOB, work, settings, total=steps)  # job.done counts optimizer steps, job.rows the epochs


def recovery_job() -> jobs.Job | None:
    return jobs.get(JOB)


def stop_recovery() -> None:
    jobs.stop(JOB)


def finish_recovery() -> dict | None:
    """When the run has ended, make its recovered model the one this session measures; return the summary."""
    job = recovery_job()
    if job is None or job.running or job.result is None:
        return None
    if not job.settings.get("adopted"):
        settings = {key: value for key, value in job.settings.items() if key != "schedule"}
        session.adopt_recovered(job.result["handle"], job.settings["plan_digest"], job.result["summary"], settings,
                                uuid.uuid4().hex)
        job.settings["adopted"] = True
    return job.result["summary"]


def recovered_active() -> bool:
    return session.recovered() is not None


def discard_recovered() -> None:
    session.discard_recovered()
