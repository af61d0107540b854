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


def metrics_table(pruned: dict, baseline: dict) -> pd.DataFrame:
    """Dense and pruned figures side by side, every metric with its name and unit."""
    dense, after = _flat(baseline), _flat(pruned)
    rows = [{"metric": metric_label(name), "dense": metric(name, dense.get(name)),
             "this run": metric(name, after.get(name))}
            for name in METRICS if dense.get(name) is not None or after.get(name) is not None]
    return pd.DataFrame(rows)


def difference_tables(diff: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The comparison of two runs (core.api.compare_runs) as labelled tables: layers in %, metrics in units."""
    layers = pd.DataFrame([{"layer": row["layer"], "run A": percent(row["a"]), "run B": percent(row["b"]),
                            "B - A": None if row["delta"] is None else f"{100 * row['delta']:+.1f} pts"}
                           for row in diff["layers"]])
    metrics = pd.DataFrame([{"metric": metric_label(row["metric"]), "run A": metric(row["metric"], row["a"]),
                             "run B": metric(row["metric"], row["b"])}
                            for row in diff["metrics"] if row["metric"] in METRICS])
    return layers, metrics
