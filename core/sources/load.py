"""Turn a MODEL argument (and optional weights, input shape and data) into a ModelHandle."""
from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import onnx
import torch
from torch import nn

from core.data import Dataset, load_npz, random_data
from core.errors import PrunelabError, error_line
from core.limits import check_tokens, clip
from core.outputs import layout as output_layout
from core.sources import huggingface
from core.sources.handle import ModelHandle
from core.text_data import load_documents, load_text, with_calibration_text, with_stride
from core.user_code import import_location
from core.zoo.registry import BUILTINS, builtin


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """Read ``"1,3,32,32"`` into a tuple; raise PrunelabError on anything but positive integers."""
    if text is None or text == "":
        return None
    try:
        shape = tuple(int(part) for part in str(text).replace("x", ",").split(","))
    except ValueError:
        raise PrunelabError(f"input shape '{text}' must be integers separated by commas, like 1,3,32,32") from None
    if len(shape) < 2 or any(size <= 0 for size in shape):
        raise PrunelabError(f"input shape '{text}' needs a batch size and at least one positive dimension")
    return shape


def load_model(spec: str, input_shape: tuple[int, ...] | str | None = None, weights: str | Path | None = None,
               trust: bool = False, data: str | Path | Dataset | None = None,
               stride: int | None = None, metric: str | None = None) -> ModelHandle:
    """Load ``spec`` (a built-in name, ``file.py:factory``, ``module:factory``, ``.pt2``, ``.pt``, ``.onnx``
    or a Hugging Face directory holding ``config.json`` and weights).

    ``weights`` is a state dict for a factory model, read with ``weights_only=True``. ``trust``
    allows unpickling a full module, which runs code from the file. ``data`` is a ``.npz`` path, a
    ``.txt`` of sentences (token models with a tokenizer) or a Dataset; without it a built-in uses
    its own data and anything else gets seeded random inputs (random token ids for token models):
    agreement, not accuracy. A factory is called with torch's random state seeded, so a randomly
    initialized model is the same on every load. ``stride`` (causal language models) re-cuts the test
    windows every ``stride`` tokens for sliding-window perplexity (core.text_data.with_stride); None keeps
    them apart. ``metric`` is the person's own ``file.py:function`` (core.metric), which every
    measurement of the model then reports (importing it runs its code). Raises PrunelabError
    naming the file or value at fault.
    """
    shape = parse_input_shape(input_shape) if isinstance(input_shape, str) else input_shape
    spec = str(spec).strip()
    if spec in BUILTINS:
        handle = _builtin(spec, weights, shape)
    elif ":" in spec and not Path(spec).exists() and not spec.endswith((".pt2", ".pt", ".pth", ".onnx")):
        handle = _factory(spec, weights)
    else:
        handle = _file(Path(spec), trust)
    if weights is not None and handle.source not in ("factory", "builtin"):
        raise PrunelabError(f"--weights applies to file.py:factory models, not to {Path(spec).name}")
    handle = _finish(handle, shape, data)
    if stride is not None:
        if handle.output_kind != "causal":
            raise PrunelabError(f"--stride applies to causal language models; {handle.name} is not one")
        handle.data = with_stride(handle.data, stride)
    if metric:
        from core.metric import load_metric

        handle.metric = load_metric(metric)
    return handle


def _builtin(name: str, weights, shape: tuple[int, ...] | None) -> ModelHandle:
    spec = builtin(name)
    if spec.directory is not None:
        if weights is not None:
            raise PrunelabError(f"--weights does not apply to {name}: its weights come with it")
        handle = _adapted(huggingface.load_directory(spec.directory()), name, "builtin", spec.description)
        handle.input_shape = tuple(shape) if shape and len(shape) == 2 else spec.input_shape
        _check_tokens(handle, handle.input_shape)
        handle.data = _text(handle, spec.text, handle.input_shape[1])
        if spec.calibration is not None:
            handle.data = with_calibration_text(handle.data, spec.calibration, handle.encode, handle.input_shape[1])
        return handle
    module = spec.factory()
    _load_weights(module, weights or spec.weights, name)
    return ModelHandle(name=name, source="builtin", module=module.eval(), input_shape=spec.input_shape,
                       data=spec.data(), description=spec.description)


def _factory(spec: str, weights) -> ModelHandle:
    location, _, function_name = spec.rpartition(":")
    module_namespace = import_location(location)
    factory = getattr(module_namespace, function_name, None)
    if not callable(factory):
        raise PrunelabError(f"'{location}' has no callable named '{function_name}'")
    model = seeded_call(factory, spec)
    if not isinstance(model, nn.Module):
        raise PrunelabError(f"the factory {spec} returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        _load_weights(model, weights, spec)
    if huggingface.is_pretrained(model):
        return _adapted(huggingface.adapt(model), function_name, "factory", spec)
    return ModelHandle(name=function_name, source="factory", module=model.eval(), input_shape=(),
                       data=None, description=spec)


FACTORY_SEED = 0


def seeded_call(factory, spec: str):
    """``factory()`` with torch's random state seeded (and the caller's state restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(FACTORY_SEED)
        try:
            return factory()
        except Exception as error:
            raise PrunelabError(f"the factory {spec} raised {error_line(error, with_type=True)}") from None


def _adapted(adapted, name: str, source: str, description: str) -> ModelHandle:
    return ModelHandle(name=name, source=source, module=adapted.module, input_shape=adapted.input_shape or (),
                       data=None, description=description, output_kind=adapted.output_kind,
                       vocab_size=adapted.vocab_size, pad_id=adapted.pad_id, encode=adapted.encode,
                       tokenizer=adapted.tokenizer)


def _load_weights(model: nn.Module, weights, spec: str) -> None:
    """Load a state dict file into ``model``; PrunelabError naming the first keys or shapes that differ.

    A state saved from prunelab's wrapper of a Hugging Face model (keys ``model.*``) fits the model too.
    """
    state = _state_dict(weights)
    if huggingface.is_pretrained(model) and state and all(key.startswith("model.") for key in state):
        state = {key[len("model."):]: value for key, value in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).strip().splitlines()[1:3]]
        raise PrunelabError(f"weights {weights} do not fit {spec}: {clip(' '.join(lines))}") from None


def _torch_load(path: Path, weights_only: bool):
    """torch.load on the CPU with torch's warnings (old formats, changed sources) kept off the terminal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def _looks_like_torch(path: Path) -> bool:
    """True for a zip archive (torch.save's format) or a pickle stream (its older format)."""
    with open(path, "rb") as stream:
        head = stream.read(2)
    return zipfile.is_zipfile(path) or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _state_dict(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise PrunelabError(f"weights file not found: {path}")
    if not _looks_like_torch(path):
        raise PrunelabError(f"cannot read weights {path}: not a PyTorch file (torch.save writes a zip archive)")
    try:
        state = _torch_load(path, weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged or foreign file
        raise PrunelabError(f"cannot read weights {path}: not a state dict saved by torch.save "
                            f"({error.__class__.__name__})") from None
    if not isinstance(state, dict):
        raise PrunelabError(f"weights {path} hold a {type(state).__name__}, not a state dict")
    return state


def _file(path: Path, trust: bool) -> ModelHandle:
    if huggingface.is_hf_directory(path):
        return _adapted(huggingface.load_directory(path), path.name, "huggingface", str(path))
    if path.is_dir():
        raise PrunelabError(f"{path} is a directory without a config.json: a Hugging Face model directory "
                            f"holds config.json and model.safetensors")
    if not path.exists():
        hint = "" if path.suffix else f" (built-in models: {', '.join(BUILTINS)})"
        raise PrunelabError(f"model file not found: {path}{hint}")
    loaders = {".pt2": _pt2, ".onnx": _onnx, ".pt": _pickled, ".pth": _pickled}
    if path.suffix not in loaders:
        raise PrunelabError(f"unsupported model file {path.name}: use .pt2, .onnx, a trusted .pt, or file.py:factory")
    return loaders[path.suffix](path, trust)


def _pt2(path: Path, trust: bool) -> ModelHandle:
    try:
        program = torch.export.load(str(path))
    except Exception as error:
        raise PrunelabError(f"cannot read {path}: not a torch.export program ({error.__class__.__name__})") from None
    shape = None
    placeholders = [node for node in program.graph.nodes if node.op == "placeholder"
                    and node.name in {spec.arg.name for spec in program.graph_signature.input_specs
                                      if spec.kind.name == "USER_INPUT"}]
    if placeholders and hasattr(placeholders[0].meta.get("val"), "shape"):
        shape = tuple(int(size) if isinstance(size, int) else 1 for size in placeholders[0].meta["val"].shape)
    batch = shape[0] if shape and not _dynamic_batch(placeholders[0]) else None
    return ModelHandle(name=path.stem, source="pt2", module=program.module(), input_shape=shape or (),
                       data=None, description=str(path), fixed_batch=batch)


def _dynamic_batch(placeholder) -> bool:
    return not isinstance(placeholder.meta["val"].shape[0], int)


def _pickled(path: Path, trust: bool) -> ModelHandle:
    if not _looks_like_torch(path):
        raise PrunelabError(f"cannot read {path}: not a PyTorch file (neither torch.save's zip archive nor a pickle)")
    if not trust:
        try:
            _torch_load(path, weights_only=True)
        except Exception:
            raise PrunelabError(f"{path} is a pickled module; loading it runs code from the file, so pass "
                                f"--trust only if you trust its author") from None
        raise PrunelabError(f"{path} holds weights, not a model: pass the architecture as file.py:factory "
                            f"with --weights {path}")
    try:
        model = _torch_load(path, weights_only=False)
    except Exception as error:
        raise PrunelabError(f"cannot unpickle {path}: {clip(error_line(error, with_type=True))}") from None
    if not isinstance(model, nn.Module):
        raise PrunelabError(f"{path} holds a {type(model).__name__}, not a torch.nn.Module")
    return ModelHandle(name=path.stem, source="pickle", module=model.eval(), input_shape=(), data=None,
                       description=str(path))


def _onnx(path: Path, trust: bool) -> ModelHandle:
    try:
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph)
    except Exception as error:
        raise PrunelabError(f"cannot read {path}: not a valid ONNX model ({error.__class__.__name__})") from None
    initializers = {tensor.name for tensor in graph.graph.initializer}
    inputs = [value for value in graph.graph.input if value.name not in initializers]
    dims = inputs[0].type.tensor_type.shape.dim if inputs else []
    shape = tuple(dim.dim_value if dim.dim_value > 0 else 1 for dim in dims)
    return ModelHandle(name=path.stem, source="onnx", module=None, input_shape=shape, data=None,
                       onnx_path=path, description=str(path))


def _check_tokens(handle: ModelHandle, shape) -> None:
    """Refuse a token model's sequence length beyond its positions before anything is tokenized or drawn."""
    if handle.vocab_size is not None and shape and len(shape) == 2:
        check_tokens(int(shape[1]), huggingface.max_tokens(handle.module), handle.name)


def _finish(handle: ModelHandle, shape, data) -> ModelHandle:
    _check_tokens(handle, shape)
    dataset = _read_data(handle, data, shape)
    shape = shape or handle.input_shape or None
    if shape is None and dataset is not None:
        shape = (1, *dataset.x_test.shape[1:])
    if shape is None and handle.vocab_size is not None:
        shape = (1, huggingface.token_length(handle.module))
    if shape is None:
        lazy = " (its lazy layers take their sizes from the first input)" if _is_lazy(handle.module) else ""
        raise PrunelabError(f"cannot tell the input shape of {handle.name}{lazy}: pass --input-shape, e.g. 1,3,32,32")
    handle.input_shape = tuple(shape)
    if dataset is None:
        dataset = handle.data or random_data(handle.input_shape, vocab_size=handle.vocab_size, pad_id=handle.pad_id)
    dataset.check_shape(handle.input_shape)
    handle.data = dataset
    _materialise(handle)
    _check_finite(handle)
    _check_forward(handle)
    return handle


def read_data(handle: ModelHandle, data: str | Path) -> Dataset:
    """A data file for ``handle``: an ``.npz`` (images, features or token ids) or a ``.txt`` of sentences."""
    return _read_data(handle, data, handle.input_shape or None)


def _read_data(handle: ModelHandle, data, shape) -> Dataset | None:
    if not isinstance(data, (str, Path)):
        return data
    shape = shape or handle.input_shape  # a built-in's own sequence length when none was asked for
    if Path(data).suffix == ".txt":
        length = shape[1] if shape and len(shape) == 2 else huggingface.token_length(handle.module)
        return _text(handle, data, length)
    return load_npz(data, pad_id=handle.pad_id)


def _text(handle: ModelHandle, path, length: int) -> Dataset:
    """A ``.txt`` for a token model: a document stream in windows for a causal LM, else sentences."""
    if handle.output_kind == "causal":
        return load_documents(path, huggingface.stream_tokenizer(handle.tokenizer), length)
    return load_text(path, handle.encode, length)


DTYPE_WORDS = ("scalar type", "dtype", "Long", "expected scalar", "indices")


def _check_finite(handle: ModelHandle) -> None:
    """Refuse weights holding NaN or infinity: every measurement of such a model would be meaningless."""
    if handle.module is None:
        return
    for name, tensor in handle.module.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise PrunelabError(f"{handle.name}: weight '{clip(name, 80)}' holds NaN or infinite values; "
                                f"prunelab measures finite weights only")


def _is_lazy(module: nn.Module | None) -> bool:
    """True while ``module`` holds parameters or buffers of lazy layers (``nn.LazyLinear``...) not yet sized."""
    if module is None:
        return False
    tensors = [*module.parameters(), *module.buffers()]
    return any(isinstance(tensor, nn.parameter.UninitializedTensorMixin) for tensor in tensors)


def _materialise(handle: ModelHandle) -> None:
    """Size lazy layers with one seeded forward on the given input shape, as their authors intend."""
    if not _is_lazy(handle.module):
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(FACTORY_SEED)
        try:
            _forward(handle)
        except Exception as error:
            raise PrunelabError(f"{handle.name} has lazy layers, sized by one forward pass, and that pass failed "
                                f"on input of shape {handle.input_shape}: {error_line(error)}") from None
    if _is_lazy(handle.module):
        raise PrunelabError(f"{handle.name} has lazy layers that one forward pass on input of shape "
                            f"{handle.input_shape} left unsized: they must run in forward")


def _check_forward(handle: ModelHandle) -> None:
    if handle.module is None:
        return
    try:
        output = _forward(handle)
    except Exception as error:
        message = error_line(error)
        if not any(word in message for word in DTYPE_WORDS):
            raise PrunelabError(f"{handle.name} cannot take input of shape {handle.input_shape}: {message}") from None
        if not handle.data.integer or handle.vocab_size is not None:
            raise PrunelabError(_dtype_problem(handle, message)) from None
        handle.data = handle.data.as_float()  # integer features for a float model: feed them as floats
        try:
            output = _forward(handle)
        except Exception:
            raise PrunelabError(_dtype_problem(handle, message)) from None
    if isinstance(output, torch.Tensor) and output.ndim == 2:
        return
    try:
        handle.outputs = output_layout(output)
    except PrunelabError as error:
        raise PrunelabError(f"{handle.name}: {error}") from None
    handle.output_kind = "outputs"


def _forward(handle: ModelHandle):
    with torch.no_grad():
        return handle.module(handle.example_input(handle.fixed_batch or 2))


def _dtype_problem(handle: ModelHandle, message: str) -> str:
    dtype = handle.data.x_test.dtype
    wanted = ("integer token ids (an .npz with int64 'input_ids', or a .txt of sentences)"
              if not handle.data.integer else "float inputs")
    return (f"{handle.name} cannot take inputs of dtype {dtype} from '{handle.data.name}': it needs {wanted} "
            f"({message[:200]})")
