"""INT8 quantization of an exported (pruned) ONNX model with onnxruntime.quantization.

Modes: 'int8-static' (pre-processing, then static QDQ quantization calibrated on a few batches of
the model's data: fast INT8 convolutions on CPU; activations are unsigned and weights signed, the
U8S8 pairing ONNX Runtime's x86 kernels fuse into QLinearConv. With signed activations, the
convolutions that feed a residual Add stayed FP32 behind DequantizeLinear and digits-resnet ran
2-4x slower than FP32 instead of 2.3x faster), 'int8-dynamic' (weights INT8, activations
quantized at run time: right for Linear/attention models, several times slower than FP32 for
convolutions on CPU) and 'int8' (automatic: static when the graph has convolutions and no attention,
else dynamic). Static calibration is sized to the model and refused up front when it cannot fit
the memory bound (core.deploy.calibration). Work happens in a temporary directory that is removed
afterwards.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from core.data import Dataset
from core.deploy.calibration import MAX_ITEMS, plan_calibration
from core.errors import PrunelabError, error_line

MODES = ("int8", "int8-static", "int8-dynamic")


def check_mode(mode: str) -> None:
    """Raise PrunelabError for a quantization mode other than MODES."""
    if mode not in MODES:
        raise PrunelabError(f"unknown quantization '{mode}' (choose from: {', '.join(MODES)})")


def resolve_mode(model: onnx.ModelProto, mode: str) -> str:
    """'int8-static' or 'int8-dynamic'; 'int8' picks static for convolutional graphs and dynamic for
    attention models (a Softmax in the graph: transformers, a ViT's patch convolution notwithstanding)."""
    check_mode(mode)
    if mode != "int8":
        return mode
    operators = {node.op_type for node in model.graph.node}
    convolutional = bool(operators & {"Conv", "ConvTranspose"}) and "Softmax" not in operators
    return "int8-static" if convolutional else "int8-dynamic"


class _Calibration:
    """A CalibrationDataReader over a few batches of the model's calibration inputs, all of one size.

    A shorter last batch is filled up with the first items again: repeated items leave min-max
    ranges unchanged, and ONNX Runtime keeps a memory pattern per input shape, so one more shape
    would hold a second block of activations (measured on a small ResNet at 224x224, batches of 26:
    a peak of 1.58 GB with a last batch of 24, 1.43 GB with it filled up).
    """

    def __init__(self, input_name: str, x: np.ndarray, batch_size: int):
        self._input_name, self._x, self._batch_size = input_name, x, batch_size
        self._start = 0

    def get_next(self):
        if self._start >= len(self._x):
            return None
        batch = self._x[self._start:self._start + self._batch_size]  # one batch at a time: bounded memory
        self._start += self._batch_size
        if len(batch) < self._batch_size:
            batch = np.concatenate([batch, self._x[:self._batch_size - len(batch)]])
        return {self._input_name: np.ascontiguousarray(batch)}


def _input_name(model: onnx.ModelProto) -> str:
    initializers = {tensor.name for tensor in model.graph.initializer}
    return next(value.name for value in model.graph.input if value.name not in initializers)


def quantize_model(model_bytes: bytes, data: Dataset, mode: str = "int8", macs: int | None = None) -> bytes:
    """The INT8 version of ``model_bytes`` as one self-contained ONNX file.

    ``data`` supplies calibration inputs for static quantization, as many and in batches as small as
    core.deploy.calibration plans for the model (``macs``: its work per item, if known). Raises
    PrunelabError for an unknown mode, a model whose static calibration would not fit the memory
    bound (before any work starts), or a graph onnxruntime.quantization cannot handle.
    """
    model = onnx.load_from_string(model_bytes)
    resolved = resolve_mode(model, mode)
    plan = None
    if resolved == "int8-static":
        plan = plan_calibration(model, len(model_bytes), len(data.calibration(MAX_ITEMS)), macs)
    input_name = _input_name(model) if plan else None
    del model  # read from the file from here on: one copy of the graph fewer while preparing and calibrating
    with tempfile.TemporaryDirectory(prefix="prunelab-int8-") as directory, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source, prepared, output = (Path(directory) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(model_bytes)
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        except Exception:  # pre-processing is an optimization; quantize the plain graph when it fails
            prepared = source
        try:
            if resolved == "int8-static":
                calibration = data.calibration(plan.items)
                reader = _Calibration(input_name, calibration, plan.batch_size)
                quantize_static(str(prepared), str(output), reader,
                                quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            else:
                quantize_dynamic(str(prepared), str(output), weight_type=QuantType.QInt8)
        except Exception as error:  # the quantizer raises many kinds for graphs it cannot handle
            raise PrunelabError(f"{resolved} quantization failed: {error_line(error)[:300]}") from None
        return output.read_bytes()
