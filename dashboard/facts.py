"""The session's model and plain facts about it: the cached loader, the model's identity (its key for
caches and its lock), what it can do, its data, and the tables read from it (layers, blocks, coupled
channel groups, weight histograms). Pages reach these through ``dashboard.session``; the plan read
against the model and its measurement live there.
"""
from __future__ import annotations

import streamlit as st

from core import api
from dashboard import consent, state, uploads


def builtin_names() -> list[str]:
    return list(api.builtin_models())


def builtin_description(name: str) -> str:
    return api.builtin_models().get(name, "")


@st.cache_resource(max_entries=6, show_spinner="Loading the model…")
def _load(spec: str, weights: str | None, trust: bool, data: str | None, input_shape: str | None,
          metric: str | None = None):
    return api.load_model(spec, input_shape=input_shape or None, weights=weights, trust=trust, data=data,
                          metric=metric)


def source() -> dict:
    return state.source(api.default_model())


def model():
    """This session's ModelHandle (shared, read-only: pass it back to core, never look inside)."""
    current = source()
    consent.check_source(current, api.builtin_models())
    return _load(current["spec"], current["weights"], current["trust"], current["data"], current["input_shape"],
                 current.get("metric"))


def model_key() -> str:
    """A key naming this session's model and data, for the caches and the model's lock."""
    handle = model()
    return f"{handle.digest}-{handle.data.digest}" + (f"-{handle.metric.digest}" if handle.metric else "")


def use_source(spec: str, weights: str | None = None, trust: bool = False, data: str | None = None,
               input_shape: str | None = None, metric: str | None = None) -> None:
    """Switch this session to another model (or metric); loads it first, so a bad file leaves the old one in place."""
    candidate = {"spec": spec, "weights": weights, "trust": bool(trust), "data": data, "input_shape": input_shape,
                 "metric": metric or None}
    current = source()
    try:
        consent.check_source(candidate, api.builtin_models())  # code needs --allow-code and a tick
        _load(**candidate)
    except Exception:
        uploads.discard(*(candidate[key] for key in ("spec", "weights", "data")
                          if candidate[key] not in current.values()))
        raise
    state.set_source(candidate)


def can(operation: str) -> bool:
    return model().can(operation)


def capabilities() -> list[str]:
    return [operation for operation in ("unstructured", "channel", "finetune") if can(operation)]


def granularities() -> list[str]:
    """The granularities this session's model can take (no channels for .onnx and .pt2 sources)."""
    return [name for name in api.GRANULARITIES if name != "channel" or can("channel")]


def quality_label() -> str:
    """The model's headline quality figure: 'cosine' (embeddings), 'accuracy' (labelled data) or 'agreement';
    a model returning several tensors is swept on 'agreement', 'detections' or 'output match'."""
    handle = model()
    if handle.output_kind == "embedding":
        return "cosine"
    if handle.output_kind == "outputs":
        from core.outputs import swept_label
        return swept_label(handle.outputs)
    return "accuracy" if handle.data.labelled else "agreement"


def has_perplexity() -> bool:
    """True for a causal language model scored on text (random token ids give no perplexity)."""
    return api.has_perplexity(model())

def has_batchnorm() -> bool:
    return bool(layer_table()["totals"].get("batchnorm_layers", 0))


def data_name() -> str:
    handle = model()
    data = handle.data
    if handle.output_kind == "causal":  # perplexity depends on the window length and stride: say both
        context = data.x_test.shape[1]
        return (f"{data.name} ({len(data.x_test)} test windows, context {context} tokens, "
                f"stride {data.stride or context})")
    return f"{data.name} ({len(data.x_test)} test items{'' if data.labelled else ', no labels'})"


def data_splits() -> str:
    """Which items each number comes from, e.g. 'test: 360 items (the file's test split); val: ...'."""
    return model().data.describe_splits()


# ---------------------------------------------------------------- facts about the model

@st.cache_data(max_entries=16, show_spinner=False)
def _inspect(_handle, key: str) -> dict:
    with state.lock(key):
        return api.layer_table(_handle)


def layer_table() -> dict:
    """``{"layers": [rows], "totals": {...}}`` for this session's model (see core.api.layer_table)."""
    return _inspect(model(), model_key())


@st.cache_data(max_entries=16, show_spinner=False)
def _blocks(_handle, key: str) -> list[dict]:
    with state.lock(key):
        return api.block_table(_handle)


def block_table() -> list[dict]:
    """Blocks a depth plan can remove (with influence) and residual ones it cannot (see core.api.block_table);
    [] for a model that cannot be traced with gradients."""
    handle = model()
    return _blocks(handle, model_key()) if handle.module is not None else []


@st.cache_data(max_entries=16, show_spinner=False)
def _block_scores(_handle, key: str, criterion: str) -> tuple[str, dict[str, float]]:
    with state.lock(key):
        return api.block_scores(_handle, criterion)


def block_scores(criterion: str) -> tuple[str, dict[str, float]]:
    """What ranks the removable blocks under ``criterion`` ('influence' or 'fisher') and each block's score
    (see core.api.block_scores); ("influence", {}) for a model that cannot be traced with gradients."""
    handle, removable = model(), [block for block in block_table() if block["removable"]]
    if handle.module is None or api.CRITERIA[criterion].block_score == "influence":  # the table has them
        return "influence", {block["name"]: block["influence"] for block in removable}
    return _block_scores(handle, model_key(), criterion) if removable else ("influence", {})


def layer_names() -> list[str]:
    return [row["name"] for row in layer_table()["layers"]]


@st.cache_data(max_entries=64, show_spinner=False)
def _histogram(_handle, key: str, layer: str, bins: int) -> dict:
    with state.lock(key):
        return api.histogram(_handle, layer, bins=bins, absolute=True)


def histogram(layer: str, bins: int = 60) -> dict:
    return _histogram(model(), model_key(), layer, bins)


def threshold(layer: str, sparsity: float) -> float:
    """The |w| below which a fraction ``sparsity`` of the layer's weights lie (from a fine histogram)."""
    return api.threshold_of(histogram(layer, bins=400), sparsity)


@st.cache_data(max_entries=16, show_spinner=False)
def _groups(_handle, key: str) -> list[dict]:
    with state.lock(key):
        return api.coupled_groups(_handle)


def groups() -> list[dict]:
    """Channel coupling groups ``[{"leader", "members", "channels"}]``; [] when the model cannot do channels."""
    handle = model()
    return _groups(handle, model_key()) if handle.can("channel") else []



def is_language_model() -> bool:
    """True for a causal language model with a tokenizer: the Tune page offers a prompt."""
    handle = model()
    return handle.output_kind == "causal" and handle.tokenizer is not None
