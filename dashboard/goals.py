"""Goal-driven allocation for the Tune page: a goal in people's terms in, per-layer targets out.

A goal is one of GOALS (fewer MACs, a latency, a largest accepted accuracy drop, a share of the
weights removed); ``allocate_to_goal`` turns it into per-layer targets through core.api.allocate,
which spends the sensitivity sweep's curves where they hurt least. Part of the session layer.
"""
from __future__ import annotations

import streamlit as st

from core import api
from core.errors import PrunelabError
from dashboard import session, state, sweeps

# name -> (label, unit shown next to the number, (min, max, default, step), channel plans only)
GOALS = {
    "macs": ("Fewer MACs", "times fewer MACs", (1.1, 20.0, 2.0, 0.1), True),
    "latency": ("Faster", "p50 latency at most (ms)", (0.001, 1000.0, 1.0, 0.01), True),
    "drop": ("Accuracy drop at most", "largest drop (pts)", (0.0, 50.0, 1.0, 0.1), False),
    "sparsity": ("Smaller", "weights removed (%)", (1.0, 95.0, 50.0, 1.0), False),
}


# The "drop" goal speaks of the quality figure the model has: name -> (label, unit, bounds, units per fraction).
QUALITY_DROPS = {
    "accuracy": ("Accuracy drop at most", "largest drop (pts)", (0.0, 50.0, 1.0, 0.1), 100.0),
    "agreement": ("Agreement drop at most", "largest drop in agreement (pts)", (0.0, 50.0, 1.0, 0.1), 100.0),
    "detections": ("Detections-kept drop at most", "largest drop in top detections kept (pts)",
                   (0.0, 50.0, 1.0, 0.1), 100.0),
    "output match": ("Output error at most", "largest rise in output error (pts of rel. L2)",
                     (0.0, 50.0, 1.0, 0.1), 100.0),
    "cosine": ("Cosine drop at most", "largest drop in cosine to dense", (0.0, 0.5, 0.01, 0.005), 1.0),
}


# A language model scored on text also gets a largest perplexity rise (lower is better, so a rise is the loss):
# name -> (label, unit, bounds, in percent of the dense perplexity).
PERPLEXITY_RISES = {
    "perplexity": ("Perplexity rise at most", "largest rise in perplexity (points)", (0.0, 1e6, 5.0, 0.5), False),
    "perplexity%": ("Perplexity rise at most (%)", "largest rise in perplexity (% of dense)", (0.0, 1e4, 5.0, 1.0),
                    True),
}


OWN = "metric:"  # a goal named OWN + a number of the model's own metric: the largest drop of that number
OWN_BOUNDS = (0.0, 1e6, 0.01, 0.001)  # in the metric's own units
# The Goal box's switch: a latency goal priced by the dense model's profile (ms per layer), not whole-model timing.
BY_PROFILE = "w.tune.goal.by_profile"


def goal_text(name: str) -> tuple[str, str, tuple]:
    """(label, unit, (min, max, default, step)) of a goal as this session's model reads it."""
    if name.startswith(OWN):
        figure = name[len(OWN):]
        return f"{figure} drop at most", f"largest drop in {figure}", OWN_BOUNDS
    if name == "drop":
        return QUALITY_DROPS[session.quality_label()][:3]
    if name in PERPLEXITY_RISES:
        return PERPLEXITY_RISES[name][:3]
    return GOALS[name][:3]


def goal_key(name: str) -> str:
    """The widget key of a goal's value (per quality figure: a cosine budget is not a number of points)."""
    return f"w.tune.goal.{name}" + (f".{session.quality_label()}" if name == "drop" else "")


def accepted_drop() -> tuple[float, str]:
    """The largest quality drop the Goal box accepts, as a fraction, and in words ('1.0 pts', '0.010')."""
    _, _, (_, _, default, _) = goal_text("drop")
    value = float(st.session_state.get(goal_key("drop"), default))
    per_fraction = QUALITY_DROPS[session.quality_label()][3]
    return value / per_fraction, (f"{value:.1f} pts" if per_fraction == 100.0 else f"{value:.3f}")


def goals_for(granularity: str) -> list[str]:
    """The goals a plan of ``granularity`` can reach (MACs and latency only move with channel pruning), and a
    largest drop of each number the model's own metric returns; a language model scored on text leads with a
    largest perplexity rise."""
    rises = list(PERPLEXITY_RISES) if session.has_perplexity() else []
    return (rises + [name for name, (_, _, _, channel_only) in GOALS.items()
                     if granularity == "channel" or not channel_only]
            + [f"{OWN}{figure}" for figure in session.metric_names()])


def matching_sweep() -> dict | None:
    """This session's complete sweep when it matches the plan's granularity and criterion, else None."""
    result, plan = sweeps.finish_sensitivity(), state.plan()
    if result is None or not result.get("complete"):
        return None
    if (result["granularity"], result["criterion"]) != (plan.granularity, plan.criterion):
        return None
    return result


def needs_sweep() -> str | None:
    """What the page must say before Auto-allocate can work, or None when it can."""
    plan = state.plan()
    if session.nm_share(plan.granularity) is not None:
        return f"{plan.granularity} fixes every layer's sparsity; Auto-allocate works for unstructured "\
               "and channel."
    if matching_sweep() is None:
        return ("Auto-allocate spends the goal where a sensitivity sweep says it hurts least, so it first needs "
                f"a sweep of this model with {plan.granularity} / {plan.criterion}.")
    return None


def start_quick_sweep() -> None:
    """Start the 5-level sweep the plan's granularity and criterion need (progress shows on the page)."""
    plan = state.plan()
    sweeps.start_sensitivity(plan.granularity, plan.criterion, list(session.QUICK_LEVELS))


def _request(goal: str, value: float, result: dict) -> dict:
    if goal in PERPLEXITY_RISES:
        points = api.rise_in_points(result, "perplexity", value) if PERPLEXITY_RISES[goal][3] else value
        return {"max_accuracy_drop": points, "quality": "perplexity"}
    if goal.startswith(OWN):
        return {"max_accuracy_drop": value, "quality": goal[len(OWN):]}
    if goal == "macs":
        return {"target_mac_reduction": value}
    if goal == "latency":
        return {"target_latency_ms": value, "latency_cost": "profile" if st.session_state.get(BY_PROFILE) else "sweep"}
    if goal == "drop":
        return {"max_accuracy_drop": value / QUALITY_DROPS[session.quality_label()][3]}
    if goal == "sparsity":
        return {"target_sparsity": value / 100}
    raise PrunelabError(f"unknown goal '{goal}'")


# How a MAC or latency goal may be spent (core.search.spend): name -> words in the Spend on box.
SPENDS = {"width": "channels (width)", "depth": "whole blocks (depth)", "both": "blocks and channels",
          "best": "whichever keeps most quality"}
SPENDING = "tune.spending"  # the options the last depth-aware allocation compared (rows for a table)


def spend_choices(goal: str) -> list[str]:
    """The ways a goal can be spent: depth too only for MAC and latency goals on a model with removable blocks."""
    if goal not in ("macs", "latency") or not any(block["removable"] for block in session.block_table()):
        return ["width"]
    return list(SPENDS)


def allocate_to_goal(goal: str, value: float, spend: str = "width") -> dict[str, float]:
    """Fill the plan's per-layer targets to reach ``goal`` at ``value``; returns the targets.

    spend: "width" fills the sliders; "depth", "both" and "best" may also switch blocks off, and keep
    the options compared in session state (SPENDING) for the page to show.
    Raises PrunelabError without a matching sweep, or for a goal the curves cannot reach.
    """
    result, plan = matching_sweep(), state.plan()
    if result is None:
        raise PrunelabError(needs_sweep() or "run a sensitivity sweep first")
    st.session_state.pop(SPENDING, None)
    if spend != "width":
        return _spend(goal, value, spend, result, plan)
    with state.lock(session.model_key()):
        allocated = api.allocate(session.model(), granularity=plan.granularity, criterion=plan.criterion,
                                 max_sparsity=session.MAX_SPARSITY, sensitivity=result,
                                 round_to=plan.round_to, **_request(goal, value, result))
    state.update_plan(scope="layer", sparsity=0.0, layers=dict(allocated.layer_targets))
    return dict(allocated.layer_targets)


def _spend(goal: str, value: float, spend: str, result: dict, plan: state.Plan) -> dict[str, float]:
    with state.lock(session.model_key()):
        spending = api.spend_budget(session.model(), spend, criterion=plan.criterion, sensitivity=result,
                                    bounds=(0.0, session.MAX_SPARSITY), round_to=plan.round_to,
                                    **_request(goal, value, result))
    state.update_plan(scope="layer", sparsity=0.0, layers=dict(spending.plan.layer_targets),
                      drop=list(spending.plan.drop))
    st.session_state[SPENDING] = {"way": spending.way, "rows": spending.rows(), "resource": spending.resource}
    return dict(spending.plan.layer_targets)
