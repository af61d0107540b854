"""ONNX export of a PyTorch model, and the fast path that writes new weights into an exported graph.

The export keeps initializer names equal to the model's ``state_dict`` keys (``features.0.0.weight``):
the TorchScript-based exporter runs without constant folding, so Conv+BatchNorm are not fused
into renamed ``onnx::Conv_39`` tensors at export time. ONNX Runtime fuses them itself when it
creates a session (ORT_ENABLE_ALL), so the deployed graph runs just as fast.

That naming is what makes the fast path possible: an unstructured or N:M plan changes weight
values only, so ``with_weights`` copies the new values into the exported graph's initializers
instead of exporting again. (Overriding initializers through ``SessionOptions.add_initializer``
is not an option: ONNX Runtime folds BatchNorm into the convolution before the override applies,
so the outputs come out wrong.)
"""
from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from core.errors import PrunelabError, error_line
from core.files import write_atomic
from core.inspect import prunable_layers
from core.outputs import leaves

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17


def strip_reparametrizations(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with pruning masks and parametrizations baked into plain weights.

    Without this the graph would carry ``weight_orig`` and ``weight_mask`` (twice the size)
    and lose the layer names.
    """
    # torch.nn.utils.prune leaves the computed weight as a non-leaf tensor, which deepcopy refuses:
    # hand deepcopy a detached copy of each such tensor.
    memo = {id(value): value.detach().clone() for child in module.modules() for value in vars(child).values()
            if isinstance(value, torch.Tensor) and not value.is_leaf}
    module = copy.deepcopy(module, memo)
    for child in module.modules():
        for hook in list(child._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(child, hook._tensor_name)
        if parametrize.is_parametrized(child):
            for name in list(child.parametrizations.keys()):
                parametrize.remove_parametrizations(child, name, leave_parametrized=True)
    return module.eval()


def export_onnx(module: nn.Module, example_input: torch.Tensor, path: str | Path | None = None) -> bytes:
    """Export ``module`` to one self-contained ONNX file with a dynamic batch axis (and a dynamic
    sequence axis for token ids), keeping every output the model returns; return its bytes.

    Uses the TorchScript-based exporter (about 50 ms on the demo models) and falls back to the
    dynamo exporter when that one is missing or fails. With ``path`` the file is also written
    atomically. Raises PrunelabError when neither exporter can handle the model.
    """
    module = strip_reparametrizations(module)
    try:
        model_bytes = _export_legacy(module, example_input)
    except Exception as legacy_error:  # the legacy exporter raises many kinds; try the other one
        try:
            model_bytes = _export_dynamo(module, example_input)
        except Exception as dynamo_error:
            raise PrunelabError(f"cannot export the model to ONNX: {error_line(legacy_error)}; "
                                f"the dynamo exporter says: {error_line(dynamo_error)}") from None
    if path is not None:
        write_atomic(path, model_bytes)
    return model_bytes


def is_tokens(example_input: torch.Tensor) -> bool:
    """Token ids (batch, sequence) of integers: exported with a dynamic sequence axis too."""
    return example_input.ndim == 2 and not example_input.is_floating_point()


def output_names(module: nn.Module, example_input: torch.Tensor) -> list[str]:
    """ONNX names of the model's outputs: 'logits' for one tensor, else each tensor's path ('output_1_0')."""
    with torch.no_grad():
        found = leaves(module(example_input))
    if len(found) == 1:
        return [OUTPUT_NAME]
    return [f"output_{name}".replace(".", "_") for name, _ in found]


def _axes(module: nn.Module, example_input: torch.Tensor) -> tuple[list[str], dict]:
    """Output names and the dynamic axes: batch everywhere, and the sequence of token inputs."""
    names = output_names(module, example_input)
    inputs = {0: "batch", 1: "sequence"} if is_tokens(example_input) else {0: "batch"}
    return names, {INPUT_NAME: inputs, **{name: {0: "batch"} for name in names}}


def _export_legacy(module: nn.Module, example_input: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    names, axes = _axes(module, example_input)
    # nn.MultiheadAttention's inference fast path (_native_multi_head_attention) has no ONNX
    # translation; the plain path exports as MatMul/Softmax ops and keeps in_proj_weight by name.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example_input,), buffer, dynamo=False, opset_version=OPSET,
                              input_names=[INPUT_NAME], output_names=names, dynamic_axes=axes,
                              do_constant_folding=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return buffer.getvalue()


def _export_dynamo(module: nn.Module, example_input: torch.Tensor) -> bytes:
    shapes = {0: torch.export.Dim("batch", min=1)}
    if is_tokens(example_input):
        shapes[1] = torch.export.Dim("sequence", min=1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example_input,), dynamo=True, external_data=False,
                                    input_names=[INPUT_NAME], output_names=output_names(module, example_input),
                                    dynamic_shapes=(shapes,), optimize=True, verbose=False)
    return program.model_proto.SerializeToString()


def initializer_layers(model: onnx.ModelProto, module: nn.Module) -> dict[str, str]:
    """Initializer name -> prunable layer name, for every layer weight the graph carries by name."""
    names = {initializer.name for initializer in model.graph.initializer}
    found = {}
    for layer in prunable_layers(module):
        key = f"{layer.name}.{layer.weight_name}"
        if key in names:
            found[key] = layer.name
    return found


def changed_tensors(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of state dict ``after`` that are new or differ from ``before``.

    Only these go through ``with_weights``: the exporter stores identical constant tensors once
    (two all-ones running_var buffers share one initializer), so an unchanged tensor may have no
    initializer of its own.
    """
    return {key: tensor for key, tensor in after.items()
            if key not in before or before[key].shape != tensor.shape or not torch.equal(before[key], tensor)}


def with_weights(template: onnx.ModelProto, state: dict[str, torch.Tensor]) -> bytes | None:
    """The template graph with its initializers replaced by ``state``'s tensors of the same name.

    Returns None when the template cannot take them: a floating-point tensor of ``state`` that
    the graph does not carry by name, or one whose shape differs (the caller then exports again).
    ``template`` itself is not modified.
    """
    by_name = {initializer.name: initializer for initializer in template.graph.initializer}
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        initializer = by_name.get(key)
        if initializer is None or tuple(initializer.dims) != tuple(tensor.shape):
            return None
    model = onnx.ModelProto()
    model.CopyFrom(template)
    for initializer in model.graph.initializer:
        tensor = state.get(initializer.name)
        if tensor is None or not tensor.is_floating_point():
            continue
        values = np.ascontiguousarray(tensor.detach().cpu().numpy().astype(np.float32))
        initializer.ClearField("float_data")
        initializer.data_type = onnx.TensorProto.FLOAT
        initializer.raw_data = values.tobytes()
    return model.SerializeToString()


def initializer_spans(model_bytes: bytes) -> dict[str, tuple[int, int]]:
    """Initializer name -> (start, end) of its ``raw_data`` inside the serialized model, read from the
    protobuf wire format (ModelProto.graph = 7, GraphProto.initializer = 5, TensorProto.name = 8,
    raw_data = 9). Lets ``patched_weights`` write new values without parsing and serializing the graph."""
    spans = {}
    for number, start, end in _fields(model_bytes, 0, len(model_bytes)):
        if number != 7:
            continue
        for field, tensor_start, tensor_end in _fields(model_bytes, start, end):
            if field != 5:
                continue
            name, raw = None, None
            for key, value_start, value_end in _fields(model_bytes, tensor_start, tensor_end):
                if key == 8:
                    name = bytes(model_bytes[value_start:value_end]).decode()
                elif key == 9:
                    raw = (value_start, value_end)
            if name is not None and raw is not None:
                spans[name] = raw
    return spans


def _varint(buffer: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def _fields(buffer: bytes, position: int, end: int):
    """(field number, start, end) of each length-delimited field of one message; other fields skipped."""
    while position < end:
        key, position = _varint(buffer, position)
        wire = key & 7
        if wire == 0:
            _, position = _varint(buffer, position)
        elif wire == 1:
            position += 8
        elif wire == 5:
            position += 4
        elif wire == 2:
            length, position = _varint(buffer, position)
            yield key >> 3, position, position + length
            position += length
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")


def float_spans(template: onnx.ModelProto, model_bytes: bytes) -> dict[str, tuple[int, int, tuple[int, ...]]]:
    """Name -> (start, end, dims) of every float32 initializer stored as raw data in ``model_bytes``
    (the serialized ``template``)."""
    spans = initializer_spans(model_bytes)
    return {initializer.name: (*spans[initializer.name], tuple(initializer.dims))
            for initializer in template.graph.initializer
            if initializer.data_type == onnx.TensorProto.FLOAT and initializer.name in spans}


def patched_weights(model_bytes: bytes, spans: dict, state: dict[str, torch.Tensor]) -> bytes | None:
    """``model_bytes`` with ``state``'s tensors written over the raw data of the float32 initializers of the
    same name and shape (``spans`` from ``float_spans``): the bytes ``with_weights`` builds, without parsing
    and serializing the graph. None when a floating-point tensor has no such initializer."""
    buffer = bytearray(model_bytes)
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        span = spans.get(key)
        if span is None or span[2] != tuple(tensor.shape):
            return None
        buffer[span[0]:span[1]] = np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype="<f4").tobytes()
    return bytes(buffer)
