"""INT8 quantization of an exported (pruned) ONNX model with onnxruntime.quantization.

Modes: 'int8-static' (pre-processing, then static QDQ quantization calibrated on a few batches of
the model's data: fast INT8 convolutions on CPU; activations are unsigned and weights signed, the
U8S8 pairing ONNX Runtime's x86 kernels fuse into QLinearConv. With signed activations, the
convolutions that feed a residual Add stayed FP32 behind DequantizeLinear and digits-resnet ran
2-4x slower than FP32 instead of 2.3x faster), 'int8-dynamic' (weights INT8, activations
quantized at run time: right for Linear/attention models, several times slower than FP32 for
convolutions on CPU) and 'int8' (automatic: static when the graph has convolutions, else dynamic).
Work happens in a temporary directory that is removed afterwards.
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
from core.errors import PrunelabError, error_line

MODES = ("int8", "int8-static", "int8-dynamic")
CALIBRATION_ITEMS = 128
CALIBRATION_BATCH = 64


def check_mode(mode: str) -> None:
    """Raise PrunelabError for a quantization mode other than MODES."""
    if mode not in MODES:
        raise PrunelabError(f"unknown quantization '{mode}' (choose from: {', '.join(MODES)})")


def resolve_mode(model: onnx.ModelProto, mode: str) -> str:
    """'int8-static' or 'int8-dynamic'; 'int8' picks static when the graph holds a convolution."""
    check_mode(mode)
    if mode != "int8":
        return mode
    has_convolution = any(node.op_type in ("Conv", "ConvTranspose") for node in model.graph.node)
    return "int8-static" if has_convolution else "int8-dynamic"


class _Calibration:
    """A CalibrationDataReader over a few batches of the model's calibration inputs."""

    def __init__(self, input_name: str, x: np.ndarray, batch_size: int = CALIBRATION_BATCH):
        self._batches = iter([{input_name: np.ascontiguousarray(x[start:start + batch_size])}
                              for start in range(0, len(x), batch_size)])

    def get_next(self):
        return next(self._batches, None)


def _input_name(model: onnx.ModelProto) -> str:
    initializers = {tensor.name for tensor in model.graph.initializer}
    return next(value.name for value in model.graph.input if value.name not in initializers)


def quantize_model(model_bytes: bytes, data: Dataset, mode: str = "int8") -> bytes:
    """The INT8 version of ``model_bytes`` as one self-contained ONNX file.

    ``data`` supplies calibration inputs for static quantization. Raises PrunelabError for an
    unknown mode or a graph onnxruntime.quantization cannot handle.
    """
    model = onnx.load_from_string(model_bytes)
    resolved = resolve_mode(model, mode)
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
                calibration = data.calibration(CALIBRATION_ITEMS).astype(np.float32)
                quantize_static(str(prepared), str(output), _Calibration(_input_name(model), calibration),
                                quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            else:
                quantize_dynamic(str(prepared), str(output), weight_type=QuantType.QInt8)
        except Exception as error:  # the quantizer raises many kinds for graphs it cannot handle
            raise PrunelabError(f"{resolved} quantization failed: {error_line(error)[:300]}") from None
        return output.read_bytes()
