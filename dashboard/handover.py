"""What the Export page hands over: file names, the files themselves and the command that rebuilds them.

Everything is of the model this session measures now: the pruned plan, INT8 when it is on, the
recovered model while one is in use (see ``session.measure``).
"""
from __future__ import annotations

from core import api
from dashboard import session, state


def file_stem() -> str:
    """A file name for this plan's downloads: model, granularity, share removed, and what else applies."""
    plan, report = state.plan(), session.last_report()
    removed = (report or {}).get("pruned", {}).get("removed")
    share = f"{round(100 * removed)}pct" if removed is not None else f"target{round(100 * plan.sparsity)}"
    parts = [session.model().name, plan.granularity.replace(":", "of"), share]
    if plan.granularity == "channel" and plan.round_to != state.AUTO_ROUND:
        parts.append(f"r{plan.round_to}")
    if session.per_layer(plan):
        parts.append("perlayer")
    if state.quantize():
        parts.append("int8")
    if session.recovered() is not None:
        parts.append("recovered")
    return "-".join(parts)


def download(kind: str):
    """A callable that builds the ``kind`` file (onnx, state_dict, pt2) of what this session measures now.

    Streamlit runs a download button's callable outside the script run, where session state is
    not this person's: model, plan, INT8 mode and recovered model are captured here, when the
    button is drawn.
    """
    current, adopted = session.plan_object(), session.recovered()
    chosen, lock = session.evaluator(state.quantize()), state.lock(session.model_key())
    recovered_handle = None if adopted is None else adopted["handle"]

    def build() -> bytes:
        with lock:
            return api.export_file(chosen, kind, current, recovered_handle)

    return build


def reproduce_command() -> str:
    """The CLI command that rebuilds this session's downloads from the plan file saved next to them."""
    spec, stem = session.source()["spec"], file_stem()
    quantize = f" --quantize {state.quantize()}" if state.quantize() else ""
    adopted = session.recovered()
    if adopted is None:
        return f"prunelab prune {spec} --plan {stem}-plan.yaml{quantize} --out {stem}/"
    settings = adopted["settings"]
    if settings["method"] == "finetune":
        return (f"prunelab prune {spec} --plan {stem}-plan.yaml{quantize} --finetune {settings['epochs']} "
                f"--lr {settings['lr']:g} --out {stem}/")
    rounds = f" --rounds {settings['rounds']}" if settings["method"] in ("iterative", "lottery") else ""
    rewind = f" --rewind-epoch {settings['rewind_epoch']}" if settings["method"] == "lottery" else ""
    return (f"prunelab recover {spec} --method {settings['method']} --plan {stem}-plan.yaml --epochs "
            f"{settings['epochs']}{rounds}{rewind} --lr {settings['lr']:g} --save {stem}-state_dict.pt")
