"""Model: choose what to prune (a demo, an uploaded file, file.py:factory or a Hugging Face directory) and the
data to measure it on."""
from __future__ import annotations

import streamlit as st

from dashboard import formatting, session, summary

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
    spec = st.text_input("Architecture", placeholder="/path/to/models.py:make_model", key="factory-spec",
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


def huggingface_ui() -> None:
    """A Hugging Face directory on this server (config.json and weights), loaded offline, weights only."""
    directory = st.text_input("Hugging Face directory", placeholder="/path/to/model-directory",
                              help="a folder with config.json and model.safetensors (or pytorch_model.bin), as "
                                   "save_pretrained writes it; the tokenizer files, if there, tokenize .txt data. "
                                   "Read offline; weights only, no code runs")
    shape = st.text_input("Tokens per input (or image input shape)", placeholder="1,64", key="hf-shape",
                          help="1,N feeds N token ids per sentence (padded/truncated); empty: the default")
    if st.button("Load directory", disabled=not directory):
        with session.guard("loading the Hugging Face directory"):
            session.use_source(directory.strip(), input_shape=shape or None)
            st.rerun()


def data_ui() -> None:
    uploaded = st.file_uploader("Evaluation data (.npz or .txt)", type=["npz", "txt"],
                                help=".npz: arrays x (and y for accuracy), or integer input_ids (and attention_mask); "
                                     "optional x_train/y_train, x_val/y_val, x_calibration (unlabelled, for "
                                     "calibration alone). .txt: one sentence a line, tokenized "
                                     "with the model's own tokenizer")
    if st.button("Use this data", disabled=uploaded is None):
        with session.guard(f"loading {uploaded.name}"):
            path = session.save_upload(uploaded.name, uploaded.getvalue(), {".npz", ".txt"})
            current = session.source()
            session.use_source(current["spec"], current["weights"], current["trust"], path, current["input_shape"],
                               current.get("metric"))
            st.rerun()


def metric_ui() -> None:
    """Your own metric, ``file.py:function(outputs, data) -> {name: number}``, under the same consent as code."""
    current = session.source()
    spec = st.text_input("Metric", value=current.get("metric") or "", placeholder="/path/to/metrics.py:mean_ap",
                         help="a Python file on this machine and the function in it that takes the model's outputs "
                              "and the scored items and returns named numbers (mAP, F1, BLEU...); they appear beside "
                              "the built-in figures on every card, in sensitivity sweeps, goals and History. "
                              "Loading imports the file, which runs its code")
    trust = st.checkbox(CODE_TRUST_TEXT, value=False, key="metric-trust", disabled=not session.code_allowed(),
                        help=None if session.code_allowed() else CODE_OFF_TEXT)
    use, remove = st.columns(2)
    if use.button("Use this metric", disabled=not spec.strip()):
        with session.guard("loading the metric"):
            session.use_source(current["spec"], current["weights"], current["trust"] or trust, current["data"],
                               current["input_shape"], spec.strip())
            st.rerun()
    if remove.button("Remove the metric", disabled=not current.get("metric")):
        with session.guard("removing the metric"):
            session.use_source(current["spec"], current["weights"], current["trust"], current["data"],
                               current["input_shape"])
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
    quality = formatting.quality(dense)
    third.metric(quality["title"], quality["value"], border=True,
                 help=quality["help"] + " (the dense model matches itself until pruned)")
    fourth.metric("p50 latency", formatting.milliseconds(dense["latency_ms"]["p50"]), border=True,
                  help="ONNX Runtime, CPU, batch 1, 2 threads: the dense figure the Tune page compares against")
    fifth.metric("ONNX file", formatting.size(dense["onnx_bytes"]), border=True,
                 help=f"gzip: {formatting.size(dense['compressed_bytes'])}")
    summary.own_metric_cards(dense)
    st.caption(f"{totals['layers']} prunable layers · data: {session.data_name()} · "
               f"can prune: {', '.join(session.capabilities())}")
    st.caption(f"Splits: {session.data_splits()}. {quality['title']} is measured on test; sensitivity and "
               f"allocation use val (and train); calibration (data-driven criteria, reconstruction, BatchNorm "
               f"re-estimation, INT8) reads the calibration split, else train, else val: never test.")


st.title("Model")
st.caption("Pick the model to prune and the data to measure it on; the summary below is the dense baseline.")
with session.guard("loading the model"):
    summary_ui()
demo, upload, factory, huggingface, data, own = st.tabs(["Demo", "Upload a file", "file.py:factory",
                                                         "Hugging Face", "Data", "Your metric"])
with demo:
    builtin_ui()
with upload:
    upload_ui()
with factory:
    factory_ui()
with huggingface:
    huggingface_ui()
with data:
    data_ui()
with own:
    metric_ui()
