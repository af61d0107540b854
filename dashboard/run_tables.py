"""A stored run as labelled tables in people's units (for the History page), instead of raw fields."""
from __future__ import annotations

import pandas as pd

from core.units import METRICS, metric, metric_label, percent

PLAN_FIELDS = {"granularity": "Granularity", "criterion": "Criterion", "scope": "Scope",
               "sparsity": "All layers (default target)", "round_to": "Round kept channels to",
               "recalibrate": "Re-estimate BatchNorm statistics",
               "prune_width": "Prune the residual stream too", "reconstruct": "Reconstruct",
               "ignore": "Left dense", "seed": "Seed"}


def _flat(metrics: dict) -> dict:
    flat = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": item for inner, item in value.items()
                         if isinstance(item, (int, float)) and not isinstance(item, bool)})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[key] = value
    return flat


def plan_table(plan: dict) -> pd.DataFrame:
    """The plan's settings as (setting, value) rows, with shares in %."""
    rows = []
    for field, label in PLAN_FIELDS.items():
        if field not in plan or plan[field] is None:
            continue
        value = plan[field]
        shown = percent(value) if field == "sparsity" else ("on" if value is True else "off" if value is False
                                                          else ", ".join(value) if isinstance(value, list) else value)
        rows.append({"setting": label, "value": str(shown)})
    return pd.DataFrame(rows)


def layer_table(plan: dict, measured: dict) -> pd.DataFrame:
    """Per-layer targets of the plan and the sparsity measured on the pruned model, in %."""
    names = list(dict.fromkeys([*(plan.get("layers") or {}), *measured]))
    return pd.DataFrame([{"layer": name, "target": percent((plan.get("layers") or {}).get(name, plan.get("sparsity"))),
                          "measured": percent(measured.get(name))} for name in names])


OWN = "metrics."  # the flat key prefix of the numbers a run's own metric (--metric) returned


def _label(name: str) -> str:
    return f"{name[len(OWN):]} (your metric)" if name.startswith(OWN) else metric_label(name)


def _value(name: str, value) -> str | None:
    return (None if value is None else f"{value:.4g}") if name.startswith(OWN) else metric(name, value)


def _shown(names) -> list[str]:
    """The figures a table shows: the run's own metric first, then the built-in ones."""
    names = list(names)
    return [name for name in names if name.startswith(OWN)] + [name for name in METRICS if name in names]


def metrics_table(pruned: dict, baseline: dict) -> pd.DataFrame:
    """Dense and pruned figures side by side, every metric with its name and unit (the run's own metric first)."""
    dense, after = _flat(baseline), _flat(pruned)
    rows = [{"metric": _label(name), "dense": _value(name, dense.get(name)), "this run": _value(name, after.get(name))}
            for name in _shown(dict.fromkeys([*dense, *after]))]
    return pd.DataFrame(rows)


def difference_tables(diff: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The comparison of two runs (core.api.compare_runs) as labelled tables: layers in %, metrics in units."""
    layers = pd.DataFrame([{"layer": row["layer"], "run A": percent(row["a"]), "run B": percent(row["b"]),
                            "B - A": None if row["delta"] is None else f"{100 * row['delta']:+.1f} pts"}
                           for row in diff["layers"]])
    rows = {row["metric"]: row for row in diff["metrics"]}
    metrics = pd.DataFrame([{"metric": _label(name), "run A": _value(name, rows[name]["a"]),
                             "run B": _value(name, rows[name]["b"])} for name in _shown(rows)])
    return layers, metrics
