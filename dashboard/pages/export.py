"""Export: download the pruned model the Tune page measures, and the plan that reproduces it from the CLI."""
from __future__ import annotations

import streamlit as st

from dashboard import formatting, handover, session, state, summary

FILES = [  # (kind, button label, file suffix, mime type, what it is)
    ("onnx", "Pruned ONNX", ".onnx", "application/octet-stream",
     "one self-contained file for ONNX Runtime: the very graph measured (INT8 when INT8 is on)"),
    ("state_dict", "State dict", ".pt", "application/octet-stream",
     "torch.save of the pruned weights (load with torch.load(..., weights_only=True)); channel plans change the "
     "layer shapes, so load it into the pruned architecture (or rebuild it from the plan)"),
    ("pt2", "torch.export program", ".pt2", "application/octet-stream",
     "load with torch.export.load(...).module(); takes any batch size"),
]


def measured_ui(report: dict) -> None:
    """What the downloads hold, as measured for exactly this plan and these settings (figures as on Tune)."""
    pruned, dense = report["pruned"], report["baseline"]
    quality = formatting.quality(pruned, dense)
    speed, _, _ = summary.speed_values(pruned)
    int8 = " INT8" if state.quantize() else ""
    st.markdown(f"Measured for this plan{int8}: {quality['title'].lower()} {quality['value']} "
                f"(dense {formatting.quality(dense)['value']}), "
                f"p50 {formatting.milliseconds(pruned['latency_ms']['p50'])}, speedup {speed} "
                f"({summary.speed_verdict(report)}), "
                f"{formatting.size(pruned['onnx_bytes'])} .onnx ({formatting.size(pruned['compressed_bytes'])} "
                f"gzip), {formatting.percent(pruned.get('removed'))} of prunable weights removed.")
    st.caption(f"Plan: {session.plan_label()}. Splits: {report.get('settings', {}).get('splits', '')}.")


def files_ui(stem: str) -> None:
    """One download per format. The file is built when the button is pressed, from the model, plan and
    settings captured when the page was drawn (see handover.download)."""
    st.subheader("Pruned model")
    for kind, label, suffix, mime, what in FILES:
        needs_torch = kind != "onnx"
        disabled = not session.can("unstructured") or (needs_torch and not session.can("finetune"))
        st.download_button(label, data=handover.download(kind), file_name=f"{stem}{suffix}", mime=mime, help=what,
                           icon=":material/download:", key=f"export-{kind}", disabled=disabled, on_click="ignore")
        st.caption(what + (" (INT8 applies to the ONNX file only)" if needs_torch and state.quantize() else ""))


def plan_ui(stem: str) -> None:
    text = session.plan_yaml()
    st.subheader("Plan")
    st.code(text, language="yaml")
    st.download_button("Plan (YAML)", text, file_name=f"{stem}-plan.yaml", mime="text/yaml",
                       icon=":material/description:", key="export-plan", on_click="ignore")
    st.caption("Reproduce from the command line:")
    st.code(handover.reproduce_command(), language="bash", wrap_lines=True)


st.title("Export")
st.caption("Download the pruned model the Tune page measures, in the format you deploy, and the plan (YAML) that "
           "rebuilds it with the CLI.")
with session.guard("preparing the export"):
    if session.recovered() is not None:
        st.info("The downloads hold the fine-tuned weights from the Recover page.", icon=":material/model_training:")
    with st.spinner("Measuring this plan on ONNX Runtime…"):
        report = session.measure()  # cached when the Tune page measured it already
    measured_ui(report)
    stem = handover.file_stem()
    left, right = st.columns(2, gap="large")
    with left:
        files_ui(stem)
    with right:
        plan_ui(stem)
