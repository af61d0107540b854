"""The model, data and plan in the page's address, so a copied link shows the same sliders and metrics.

``restore`` reads the address on a session's first run; ``publish`` writes the current state back
after every run (only when it changed). The address reads like the plan file:

    /tune?model=digits-resnet&granularity=channel&criterion=l1&scope=layer&sparsity=30
         &layers=layer5.conv2:40,layer1.conv1:20&round_to=8&int8=1

(``width=1``: a transformer's channel plan also prunes the residual stream, ``recalibrate=0``: no
BatchNorm re-estimation, ``drop=layer1,layer5``: whole blocks removed, ``reconstruct=0``: no
least-squares refit of the layers that read removed units.)

Sparsities are whole or decimal percents. A value the dashboard cannot use is reported once on
the page and the rest of the address still applies. A link is held to the same rules as the Model
page (dashboard/consent.py): it never carries the trust that importing code needs, and files must
be uploads or lie under the server's model folder.
"""
from __future__ import annotations

import streamlit as st

from dashboard import consent, session, state

READ = "prunelab.url.read"       # set once the address was read in this session
PROBLEM = "prunelab.url.problem"  # a line saying what in the address could not be used
FIELDS = ("granularity", "criterion", "scope")
FACTORY_FIELDS = ("factory-spec", "factory-shape")  # the Model page's factory architecture and input shape
PLAN_KEYS = (*FIELDS, "sparsity", "layers", "round_to", "recalibrate", "width", "drop", "reconstruct", "int8")


def _percent(value: float) -> str:
    return f"{100 * value:.4g}"


def encode(source: dict, plan: state.Plan, quantize: str | None) -> dict[str, str]:
    """Query parameters for a model source, a plan and the INT8 switch."""
    params = {"model": source["spec"]}
    if source.get("data"):
        params["data"] = source["data"]
    if source.get("input_shape"):
        params["shape"] = ",".join(str(size) for size in source["input_shape"]) \
            if not isinstance(source["input_shape"], str) else source["input_shape"]
    params.update({field: str(getattr(plan, field)) for field in FIELDS})
    params["sparsity"] = _percent(plan.sparsity)
    layers = [(name, value) for name, value in plan.layers if value != plan.sparsity]
    if layers:
        params["layers"] = ",".join(f"{name}:{_percent(value)}" for name, value in layers)
    if plan.round_to != state.AUTO_ROUND:
        params["round_to"] = str(plan.round_to)
    if not plan.recalibrate:
        params["recalibrate"] = "0"
    if plan.prune_width:
        params["width"] = "1"
    if plan.drop:
        params["drop"] = ",".join(plan.drop)
    if not plan.reconstruct:
        params["reconstruct"] = "0"
    if quantize:
        params["int8"] = "1"
    return params


def decode(params: dict[str, str]) -> state.Plan:
    """The plan in query parameters (missing fields take the default plan's). Raises PrunelabError
    naming a bad field, or ValueError for a number that does not read as one."""
    changes = {field: params[field] for field in FIELDS if params.get(field)}
    if params.get("sparsity"):
        changes["sparsity"] = float(params["sparsity"]) / 100
    layers = {}
    for item in filter(None, (params.get("layers") or "").split(",")):
        name, _, value = item.rpartition(":")
        layers[name] = float(value) / 100
    changes["layers"] = layers
    if params.get("round_to"):
        text = params["round_to"]
        changes["round_to"] = state.AUTO_ROUND if text == state.AUTO_ROUND else int(text)
    if params.get("recalibrate") == "0":
        changes["recalibrate"] = False
    if params.get("width") == "1":
        changes["prune_width"] = True
    if params.get("drop"):
        changes["drop"] = [name for name in params["drop"].split(",") if name]
    if params.get("reconstruct") == "0":
        changes["reconstruct"] = False
    return state.default_plan().replace(**changes)


def restore() -> None:
    """Apply the address to a new session (once); a bad model or plan leaves the default in place."""
    if st.session_state.get(READ):
        return
    st.session_state[READ] = True
    params = st.query_params.to_dict()
    if not any(params.get(key) for key in (*PLAN_KEYS, "model")):
        return
    try:  # without a model, a hand-written ?granularity=channel&sparsity=30 applies to the current one
        if params.get("model") and (params["model"] != session.source()["spec"] or params.get("data")
                                    or params.get("shape")):
            session.use_source(params["model"], data=params.get("data") or None, input_shape=params.get("shape"))
        plan = decode(params)  # validates every field and layer value
        known, unknown = _known_layers(plan.layer_targets)
        state.set_plan(plan.replace(layers=known))
        state.set_quantize(params.get("int8") == "1")
        if unknown:
            shown = ", ".join(repr(name[:40]) for name in unknown[:3])
            st.session_state[PROBLEM] = (f"The link names {len(unknown):,} layer(s) this model does not have "
                                         f"({shown}{', ...' if len(unknown) > 3 else ''}); they were left out.",
                                         state.plan(), session.source()["spec"])
    except Exception as error:  # anything in a hand-edited address: one line on the page, defaults stay
        line = str(error).splitlines()[0][:300]
        if _wait_in_factory_fields(params):
            line += " (on the Model page, tab file.py:factory, which the link has filled in)"
        st.session_state[PROBLEM] = (line, state.plan(), session.source()["spec"])


def _wait_in_factory_fields(params: dict) -> bool:
    """A link to code that did not load (the visitor has not trusted it yet): its model and input shape wait
    in the Model page's factory fields, so ticking the trust box and pressing Load is all that is left.
    True when the link named such code."""
    spec = params.get("model") or ""
    if not spec or spec == session.source()["spec"] or not consent.describe(spec, session.builtin_names())[1]:
        return False
    for key, value in zip(FACTORY_FIELDS, (spec, params.get("shape") or "")):
        if value:
            st.session_state.setdefault(key, value)
    return True


def _known_layers(layers: dict) -> tuple[dict, list[str]]:
    """The link's per-layer targets for layers of the open model, and the names it does not have."""
    names = set(session.layer_names())
    return ({name: value for name, value in layers.items() if name in names},
            [name for name in layers if name not in names])


def publish() -> None:
    """Write this session's model, data and plan into the address when they changed."""
    try:
        wanted = encode(session.source(), state.plan(), state.quantize())
    except Exception:  # nothing to publish before a model loads
        return
    if st.query_params.to_dict() != wanted:
        st.query_params.from_dict(wanted)


def problem_ui() -> None:
    """The one line about an address that could not be used, shown until the plan or the model changes (the
    Tune page reruns by itself once a plan's final figures are in)."""
    problem = st.session_state.get(PROBLEM)
    if not problem or problem[1:] != (state.plan(), session.source()["spec"]):
        st.session_state.pop(PROBLEM, None)
        return
    # its words come from the address: shown as plain text, never as Markdown (images, links)
    st.warning("The link's settings could not all be used; the rest of the link applies:", icon=":material/link_off:")
    st.text(problem[0])
