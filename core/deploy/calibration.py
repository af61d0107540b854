"""How much static INT8 calibration a model gets, and whether it fits in memory, decided before it starts.

ONNX Runtime's calibrator runs an augmented copy of the graph with graph optimizations off, so
every intermediate tensor of a calibration batch is materialized: memory grows with the batch
times the model's activations per item (a ResNet-50 at 224x224: 144 MB per item; batches of 64
peaked at 8.2 GB). The plan sizes the batch so one batch's activations stay within
ACTIVATION_BUDGET_BYTES, the number of items so calibration stays near CALIBRATION_BUDGET_MACS of
work, and refuses a model whose estimate exceeds MEMORY_BOUND_BYTES before any work starts.

The peak is the larger of two moments, measured over the resident memory when the plan is made
(``python -m tests.int8_memory_probe SPEC SHAPE --phases`` prints them): preparing the graph
(pre-processing, shape inference, augmenting it) holds copies of the graph only; calibrating holds
fewer copies plus the calibration session's arena. The arena keeps the first batch's tensors and
then a memory pattern (one block per batch shape, hence batches all of one size) on top of them,
so it exceeds the batch's activation bytes. Quantizing after calibration frees the session first
and stays below both.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx

from core.errors import PrunelabError

MEMORY_BOUND_BYTES = 4 << 30          # peak resident memory static quantization may reach
ACTIVATION_BUDGET_BYTES = 512 << 20   # one calibration batch's intermediate tensors
# Measured over the resident memory at planning (onnxruntime 1.32): a ResNet-50 (90 MB graph) at 64x64
# and 128x128, a small ResNet (4 MB graph) at 96x96, 160x160 and 224x224; batches all of one size.
PREPARE_COPIES = 4          # graph copies while pre-processing and augmenting: measured 3.6-4.1
CALIBRATION_COPIES = 3      # graph copies while the calibration session runs: measured 2.9
ACTIVATION_OVERHEAD = 1.5   # the calibration arena over one batch's activation bytes: measured 1.31-1.48
BASE_BYTES = 600 << 20                # the Python process with torch and onnxruntime loaded, when unknown
CALIBRATION_BUDGET_MACS = 1e11
MAX_ITEMS, MIN_ITEMS, MAX_BATCH = 128, 16, 64


@dataclass(frozen=True)
class CalibrationPlan:
    """Calibration items and batch size, with the memory estimate behind them."""

    items: int
    batch_size: int
    activation_bytes: int   # per item, all intermediate tensors
    estimated_bytes: int    # peak resident memory expected


def activation_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every intermediate tensor for one item (batch dimension 1), from ONNX shape inference.

    Tensors whose shape cannot be inferred count as nothing (an underestimate, never a failure).
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference refuses some graphs; plan as if activations were small
        return 0
    total = 0
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        tensor = value.type.tensor_type
        size = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize if tensor.elem_type else 4
        known = True
        for dim in tensor.shape.dim:
            if dim.dim_value > 0:
                size *= dim.dim_value
            elif not dim.dim_param:  # neither a number nor the symbolic batch
                known = False
        total += size if known else 0
    return total


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc), or BASE_BYTES where that cannot be read."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return BASE_BYTES


def plan_calibration(model: onnx.ModelProto, model_bytes: int, available: int, macs: int | None) -> CalibrationPlan:
    """The calibration plan for ``model``; PrunelabError, before any work, when it cannot fit MEMORY_BOUND_BYTES.

    ``available`` is how many calibration items the data has; ``macs`` the model's work per item, if known.
    """
    per_item = activation_bytes(model)
    batch = max(1, min(MAX_BATCH, ACTIVATION_BUDGET_BYTES // max(1, per_item)))
    items = MAX_ITEMS if not macs else int(max(MIN_ITEMS, min(MAX_ITEMS, CALIBRATION_BUDGET_MACS // macs)))
    items = max(1, min(items, available))
    batches = -(-items // min(batch, items))
    batch = -(-items // batches)  # batches as even as they go: the reader fills the last one up to this size
    preparing = PREPARE_COPIES * model_bytes
    calibrating = CALIBRATION_COPIES * model_bytes + ACTIVATION_OVERHEAD * batch * per_item
    estimate = resident_bytes() + max(preparing, calibrating)
    if estimate > MEMORY_BOUND_BYTES:
        raise PrunelabError(
            f"static INT8 calibration of this model would need about {estimate / 2**30:.1f} GB "
            f"({model_bytes / 2**20:.0f} MB graph held up to {PREPARE_COPIES} times, {per_item / 2**20:.0f} MB of "
            f"activations per item), over the {MEMORY_BOUND_BYTES / 2**30:.0f} GB bound: use --quantize "
            f"int8-dynamic, or prune it smaller first")
    return CalibrationPlan(items, int(batch), per_item, int(estimate))
