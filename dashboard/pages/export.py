"""Export: download the pruned model and the plan that reproduces it from the command line."""
from __future__ import annotations

import streamlit as st

from dashboard import formatting, session

FILES = [  # (kind, button label, file suffix, mime type, what it is)
    ("onnx", "Pruned ONNX", ".onnx", "application/octet-stream", "one self-contained file for ONNX Runtime"),
    ("state_dict", "State dict", ".pt", "application/octet-stream",
     "torch.save of the pruned weights; channel plans change the layer shapes, so load it into the pruned "
     "architecture (or rebuild it from the plan)"),
    ("pt2", "torch.export program", ".pt2", "application/octet-stream", "load with torch.export.load(...).module()"),
]


def plan_ui(stem: str, model_spec: str) -> None:
    text = session.plan_yaml()
    st.subheader("Plan")
    st.code(text, language="yaml")
    st.download_button("Plan (YAML)", text, file_name=f"{stem}-plan.yaml", mime="text/yaml",
                       icon=":material/description:")
    st.caption("Reproduce from the command line:")
    st.code(f"prunelab prune {model_spec} --plan {stem}-plan.yaml --out {stem}/", language="bash")


def files_ui(stem: str) -> None:
    """One download per format; the bytes are built when the button is pressed (and then cached)."""
    st.subheader("Pruned model")
    for kind, label, suffix, mime, what in FILES:
        st.download_button(label, data=lambda kind=kind: session.artifact(kind), file_name=f"{stem}{suffix}",
                           mime=mime, help=what, icon=":material/download:", key=f"export-{kind}",
                           disabled=not session.can("unstructured") or (kind != "onnx" and not session.can("finetune")))
        st.caption(what)


st.title("Export")
st.caption("Download the pruned model in the format you deploy, and the plan (YAML) that rebuilds it with the CLI.")
with session.guard("preparing the export"):
    handle = session.model()
    values = session.plan()
    stem = f"{handle.name}-{values['granularity'].replace(':', 'of')}-{round(100 * values['sparsity'])}"
    if session.recovered_report(session.plan_object().digest) is not None:
        st.info("The downloads hold the fine-tuned weights from the Recover page.", icon=":material/model_training:")
    report = st.session_state.get(session.LAST_REPORT)
    if report:
        pruned = report["pruned"]
        st.markdown(f"Last measured on the Tune page: {pruned.get('label', 'accuracy')} "
                    f"{formatting.percent(pruned.get(pruned.get('label', 'accuracy')))}, "
                    f"p50 {formatting.milliseconds(pruned['latency_ms']['p50'])}, "
                    f"{formatting.size(pruned['onnx_bytes'])} ONNX.")
    left, right = st.columns(2, gap="large")
    with left:
        files_ui(stem)
    with right:
        plan_ui(stem, session.source()["spec"])
