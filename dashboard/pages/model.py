"""Model: choose what to prune (a demo, an uploaded file, or file.py:factory) and the data to measure it on."""
from __future__ import annotations

import streamlit as st

from dashboard import formatting, session

TRUST_TEXT = ("I trust this file: loading a pickled module unpickles it, which runs code from the file "
              "on this server")


CODE_TRUST_TEXT = "I trust this code: loading imports the file, which runs its code on this server"
CODE_OFF_TEXT = ("this dashboard was started without --allow-code, so it imports no code and unpickles no module; "
                 "whoever runs the server can start it with `prunelab dashboard --allow-code`")


def builtin_ui() -> None:
    names = session.builtin_names()
    current = session.source()["spec"]
    choice = st.selectbox("Demo model", names, index=names.index(current) if current in names else 0,
                          format_func=lambda name: f"{name}: {session.builtin_description(name)}")
    if st.button("Use this demo", disabled=choice == current and not session.source()["data"]):
        with session.guard("loading the demo"):
            session.use_source(choice)
            st.rerun()


def upload_ui() -> None:
    """Upload a .pt2, .onnx or (trusted) pickled module; the input shape when the file does not say."""
    uploaded = st.file_uploader("Model file", type=["pt2", "onnx", "pt", "pth"],
                                help=".pt2 from torch.export.save, an .onnx graph, or a pickled nn.Module (.pt)")
    trust = st.checkbox(TRUST_TEXT, value=False, disabled=not session.code_allowed(),
                        help=("state dicts never need this: use the factory tab" if session.code_allowed()
                              else CODE_OFF_TEXT))
    shape = st.text_input("Input shape (with batch)", placeholder="1,3,32,32", key="upload-shape",
                          help="only needed when the file does not record it")
    if st.button("Load file", disabled=uploaded is None):
        with session.guard(f"loading {uploaded.name}"):
            path = session.save_upload(uploaded.name, uploaded.getvalue(), session.UPLOAD_SUFFIXES)
            session.use_source(path, trust=trust, input_shape=shape or None)
            st.rerun()


def factory_ui() -> None:
    """A path to ``file.py:factory`` on this machine, plus an uploaded state dict (read weights-only)."""
    spec = st.text_input("Architecture", placeholder="/path/to/models.py:make_model",
                         help="a Python file on this machine and the function in it that builds the nn.Module; "
                              "loading imports the file, which runs its code")
    weights = st.file_uploader("State dict (.pt)", type=["pt", "pth"], key="factory-weights",
                               help="read with torch.load(weights_only=True): no code runs")
    shape = st.text_input("Input shape (with batch)", placeholder="1,3,32,32", key="factory-shape")
    trust = st.checkbox(CODE_TRUST_TEXT, value=False, key="factory-trust", disabled=not session.code_allowed(),
                        help=None if session.code_allowed() else CODE_OFF_TEXT)
    if st.button("Load factory", disabled=not spec):
        with session.guard("loading the factory model"):
            path = session.save_upload(weights.name, weights.getvalue(), {".pt", ".pth"}) if weights else None
            session.use_source(spec, weights=path, trust=trust, input_shape=shape or None)
            st.rerun()


def data_ui() -> None:
    uploaded = st.file_uploader("Evaluation data (.npz)", type=["npz"],
                                help="arrays x (and y for accuracy); optional x_train/y_train, x_val/y_val")
    if st.button("Use this data", disabled=uploaded is None):
        with session.guard(f"loading {uploaded.name}"):
            path = session.save_upload(uploaded.name, uploaded.getvalue(), {".npz"})
            current = session.source()
            session.use_source(current["spec"], current["weights"], current["trust"], path, current["input_shape"])
            st.rerun()


def summary_ui() -> None:
    """The loaded model in numbers: parameters, MACs, quality, latency, size."""
    handle_name, description = session.model().name, session.model().description
    totals = session.layer_table()["totals"]
    st.subheader(handle_name)
    st.caption(description or session.source()["spec"])
    first, second, third, fourth, fifth = st.columns(5)
    first.metric("Parameters", formatting.count(totals["params"]), border=True)
    second.metric("MACs", formatting.count(totals["macs"]), border=True, help="multiply-accumulates per item")
    dense = session.baseline()
    label = dense.get("label", "accuracy")
    value = dense.get(label)
    third.metric(label.capitalize(), formatting.percent(value), border=True,
                 help="on the test split" if label == "accuracy" else
                 "no labels: top-1 agreement with the dense model (100% until pruned)")
    fourth.metric("p50 latency", formatting.milliseconds(dense["latency_ms"]["p50"]), border=True,
                  help="ONNX Runtime, CPU, batch 1, 2 threads: the dense figure the Tune page compares against")
    fifth.metric("ONNX file", formatting.size(dense["onnx_bytes"]), border=True,
                 help=f"gzip: {formatting.size(dense['compressed_bytes'])}")
    st.caption(f"{totals['layers']} prunable layers · data: {session.data_name()} · "
               f"can prune: {', '.join(session.capabilities())}")
    st.caption(f"Splits: {session.data_splits()}. Accuracy is measured on test; sensitivity, allocation, "
               f"BatchNorm re-estimation and INT8 calibration use val and train only.")


st.title("Model")
st.caption("Pick the model to prune and the data to measure it on; the summary below is the dense baseline.")
with session.guard("loading the model"):
    summary_ui()
demo, upload, factory, data = st.tabs(["Demo", "Upload a file", "file.py:factory", "Data"])
with demo:
    builtin_ui()
with upload:
    upload_ui()
with factory:
    factory_ui()
with data:
    data_ui()
