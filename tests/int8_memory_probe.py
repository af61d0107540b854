"""Run in a fresh process by test_quantize: static INT8 of one model, printing the memory it took as JSON."""
from __future__ import annotations

import gc
import json
import resource
import sys

import onnx

from core.deploy.calibration import plan_calibration
from core.deploy.export import export_onnx
from core.deploy.measure import total_macs
from core.deploy.quantize import quantize_model
from core.sources import load_model


def main(spec: str, input_shape: str) -> None:
    handle = load_model(spec, input_shape=input_shape)
    model_bytes = export_onnx(handle.module, handle.example_input())
    macs = total_macs(handle.module, handle.example_input())
    plan = plan_calibration(onnx.load_from_string(model_bytes), len(model_bytes), 128, macs)
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # ru_maxrss is in KiB on Linux
    quantize_model(model_bytes, handle.data, "int8-static", macs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"before": before, "peak": peak, "estimate": plan.estimated_bytes,
                      "batch": plan.batch_size, "items": plan.items, "activation": plan.activation_bytes}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
