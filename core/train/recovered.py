"""A recovered (fine-tuned) model, measured like any plan: on ONNX Runtime, against its dense model."""
from __future__ import annotations

from torch import nn

from core.deploy.evaluate import LiveEvaluator
from core.deploy.measure import Artifact, torch_outputs
from core.sources import ModelHandle


def measure_recovered(handle: ModelHandle, module: nn.Module, **settings) -> tuple[dict, Artifact]:
    """Metrics of ``module``, a recovered copy of ``handle``'s model, and its ONNX artifact.

    The metrics are those LiveEvaluator gives a plan (INT8 when ``settings`` ask for it), plus
    ``agreement``: the share of test inputs on which ``module`` and the dense model agree on top-1.
    ``settings`` are LiveEvaluator's (threads, batch_size, quantize, data, live).
    Raises PrunelabError as LiveEvaluator does.
    """
    report, artifact, _ = LiveEvaluator(handle.with_module(module), **settings).measure_artifact(None)
    inputs = handle.data.x_test
    dense, recovered = torch_outputs(handle.module, inputs), torch_outputs(module, inputs)
    agreement = float((dense.argmax(1) == recovered.argmax(1)).mean())
    return {**report["pruned"], "agreement": agreement}, artifact
