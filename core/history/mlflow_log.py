"""Optional MLflow logging of recorded runs: the plan as params, the pruned metrics, the files as artifacts.

MLflow is an extra (``pip install prunelab[mlflow]``) and is imported only when used. A ``file:``
URI (or a plain directory) names MLflow's file store, which recent MLflow versions keep behind
``MLFLOW_ALLOW_FILE_STORE``; asking for one here is taken as that opt-in.
"""
from __future__ import annotations

import os
from pathlib import Path

from core.errors import PrunelabError
from core.history.compare import flat_metrics
from core.history.runs import Run


def _client(uri: str):
    try:
        import mlflow
    except ImportError:
        raise PrunelabError("MLflow logging needs the mlflow extra: pip install 'prunelab[mlflow]'") from None
    if "://" not in uri or uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return mlflow.MlflowClient(tracking_uri=uri)


def log_runs(runs: list[Run], uri: str, experiment: str = "prunelab") -> dict[int, str]:
    """Log each run as one MLflow run in ``experiment``; returns prunelab id -> MLflow run id.

    Params: the plan's fields (per-layer targets as ``layers.<name>``) and the model. Metrics: the
    pruned model's numeric metrics (``latency_ms.p50`` ...) and the baseline's as ``baseline.*``.
    Artifacts: every artifact file of the run that still exists (the ONNX model among them).
    """
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    logged = {}
    for run in runs:
        mlflow_run = client.create_run(experiment_id, run_name=f"prunelab-{run.id} {run.label}".strip(),
                                       tags={"prunelab.run_id": str(run.id), "prunelab.model": run.model,
                                             "prunelab.model_digest": run.model_digest or ""})
        run_id = mlflow_run.info.run_id
        for key, value in _params(run).items():
            client.log_param(run_id, key, value)
        metrics = flat_metrics(run.pruned)
        metrics.update({f"baseline.{key}": value for key, value in
                        flat_metrics(run.metrics.get("baseline") or {}).items()})
        for key, value in metrics.items():
            client.log_metric(run_id, key, float(value))
        for path in run.artifacts.values():
            if Path(path).is_file():
                client.log_artifact(run_id, path, "prunelab")
        client.set_terminated(run_id)
        logged[run.id] = run_id
    return logged


def _params(run: Run) -> dict[str, str]:
    params = {"model": run.model}
    for key, value in run.plan.items():
        if key == "layers":
            params.update({f"layers.{name}": str(target) for name, target in (value or {}).items()})
        else:
            params[key] = str(value)
    return params
