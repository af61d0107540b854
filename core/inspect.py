"""Per-layer facts about a model: the prunable layers, their weight statistics, histograms and MACs.

A prunable layer is every Conv, Linear (transformers' ``Conv1D`` too, GPT-2's projections) and
attention input projection, named as in ``named_modules()``. Models without module structure (a
``.pt2`` program, an ONNX graph) fall back to their 2-D and 4-D weight tensors, named by the prefix
of the weight.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from core.errors import PrunelabError
from core.hooks import forward_once
from core.outputs import leaves

# Module type -> (kind, name of the weight it prunes, whether that weight is stored transposed).
# Subclasses match through the MRO.
LAYER_TYPES: dict[type, tuple[str, str, bool]] = {
    nn.Conv1d: ("conv1d", "weight", False),
    nn.Conv2d: ("conv2d", "weight", False),
    nn.Conv3d: ("conv3d", "weight", False),
    nn.Linear: ("linear", "weight", False),
    nn.MultiheadAttention: ("attention", "in_proj_weight", False),
}
# The same for classes of libraries prunelab does not import, by "module.QualifiedName".
# transformers' Conv1D computes x @ W + b with W stored (in, out): a Linear whose weight is transposed.
LAYER_TYPES_BY_NAME: dict[str, tuple[str, str, bool]] = {
    "transformers.pytorch_utils.Conv1D": ("linear", "weight", True),
}


@dataclass(frozen=True)
class Layer:
    """A prunable layer: its name, kind, the module that owns the weight and the weight's attribute.

    ``weight`` is always laid out as its kind expects (a linear layer's is (out, in)); for a layer
    storing it transposed it is a transposed view, so writing into it in place writes the layer's own.
    """

    name: str
    kind: str
    module: nn.Module
    weight_name: str
    transposed: bool = False

    @property
    def weight(self) -> torch.Tensor:
        weight = getattr(self.module, self.weight_name)
        return weight.t() if self.transposed else weight


def _layer_type(module: nn.Module) -> tuple[str, str, bool] | None:
    for cls in type(module).__mro__:
        found = LAYER_TYPES.get(cls) or LAYER_TYPES_BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")
        if found:
            return found if isinstance(getattr(module, found[1], None), torch.Tensor) else None
    return None


def prunable_layers(module: nn.Module) -> list[Layer]:
    """The prunable layers of ``module`` in definition order; falls back to named weight tensors."""
    layers = []
    for name, child in module.named_modules():
        found = _layer_type(child)
        if found and name:
            layers.append(Layer(name, found[0], child, found[1], found[2]))
    if layers:
        return layers
    owners = dict(module.named_modules())
    for name, parameter in module.named_parameters():
        prefix, _, attribute = name.rpartition(".")
        if attribute == "weight" and parameter.ndim in (2, 3, 4, 5) and prefix in owners:
            kind = "linear" if parameter.ndim == 2 else f"conv{parameter.ndim - 2}d"
            layers.append(Layer(prefix, kind, owners[prefix], attribute))
    return layers


def layer_by_name(module: nn.Module, name: str) -> Layer:
    layers = {layer.name: layer for layer in prunable_layers(module)}
    if name not in layers:
        raise PrunelabError(f"no prunable layer named '{name}' (layers: {', '.join(layers) or 'none'})")
    return layers[name]


def weight_stats(weight: np.ndarray) -> dict:
    """mean, std, min, max, and the 50/90/99th percentiles of |w|."""
    flat = weight.reshape(-1).astype(np.float64)
    magnitudes = np.abs(flat)
    p50, p90, p99 = np.percentile(magnitudes, [50, 90, 99])
    return {"mean": float(flat.mean()), "std": float(flat.std()), "min": float(flat.min()),
            "max": float(flat.max()), "abs_p50": float(p50), "abs_p90": float(p90), "abs_p99": float(p99)}


def layer_macs(module: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates per prunable layer for one item, from a forward pass with hooks."""
    macs: dict[str, int] = {}
    handles = []

    def hook_for(layer: Layer):
        def hook(child, inputs, output):
            output = output[0] if isinstance(output, tuple) else output
            batch = max(1, example_input.shape[0])
            weight = layer.weight
            if layer.kind == "attention":
                items = inputs[0].numel() // batch // child.embed_dim  # tokens per item
                count = items * weight.shape[0] * weight.shape[1] + 2 * items * items * child.embed_dim
                # out_proj is applied inside the functional call, so its hook never fires
                out_name = f"{layer.name}.out_proj"
                macs[out_name] = macs.get(out_name, 0) + items * child.embed_dim * child.embed_dim
            elif layer.kind == "linear":
                count = output.numel() // batch * weight.shape[1]
            else:  # convolution: each output element reads in_channels/groups * kernel weights
                count = output.numel() // batch * int(np.prod(weight.shape[1:]))
            macs[layer.name] = macs.get(layer.name, 0) + int(count)
        return hook

    for layer in prunable_layers(module):
        handles.append(layer.module.register_forward_hook(hook_for(layer)))
    forward_once(module, example_input, handles)
    return macs


def attention_heads(module: nn.Module, example_input=None) -> dict[str, tuple[int, str]]:
    """{layer: (heads, attention layer name)} for every layer whose output rows are attention heads:
    the q/k/v (or fused qkv) projections of self-attention and nn.MultiheadAttention itself."""
    from core.prune.heads import find_attention

    found = {name: (child.num_heads, name) for name, child in module.named_modules()
             if isinstance(child, nn.MultiheadAttention)}
    for attention in find_attention(module, example_input):
        found.update(dict.fromkeys(attention.projections, (attention.heads, attention.name)))
    return found


def _mac_formulas() -> dict:
    """torch's flop formulas by op, plus CPU flash attention (which torch's table leaves out)."""
    from torch.utils import flop_counter

    formulas = dict(flop_counter.flop_registry)
    cpu_attention = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    attention = formulas.get(torch.ops.aten._scaled_dot_product_efficient_attention)
    if cpu_attention is not None and attention is not None and cpu_attention not in formulas:
        formulas[cpu_attention] = attention  # same inputs (query, key, value, ...), same work
    return formulas


class _MacCounter(TorchDispatchMode):
    """Adds up the FLOPs of every matmul, convolution and attention kernel a forward pass dispatches."""

    def __init__(self):
        super().__init__()
        self.flops = 0
        self.formulas = _mac_formulas()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        formula = self.formulas.get(func._overloadpacket)
        if formula is not None:
            self.flops += int(formula(*args, **kwargs, out_val=output))
        return output


def count_macs(module: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates per item of the whole forward pass, counted the same way for every architecture.

    Every matrix multiply, convolution and attention kernel that runs is counted from its shapes
    (half of torch.utils.flop_counter's FLOPs): Linear and Conv layers, and also the attention
    matmuls (Q·K^T and attention·V) of nn.MultiheadAttention, Hugging Face attention and
    F.scaled_dot_product_attention. Elementwise work (activations, norms, softmax) is not counted.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel has no formula; the plain path does
    try:
        with torch.no_grad(), _MacCounter() as counter:
            module(example_input)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.flops // 2 // max(1, example_input.shape[0])


def module_macs(module: nn.Module, example_input: torch.Tensor, names: list[str]) -> dict[str, int]:
    """Multiply-accumulates per item inside each named submodule (whole blocks: their layers and their
    attention matmuls), counted as ``count_macs`` counts the whole pass."""
    batch = max(1, example_input.shape[0])
    counted: dict[str, int] = dict.fromkeys(names, 0)
    started: dict[str, int] = {}
    handles = []
    with _MacCounter() as counter:
        for name in names:
            child = module.get_submodule(name)
            handles.append(child.register_forward_pre_hook(
                lambda _child, _args, name=name: started.__setitem__(name, counter.flops)))
            handles.append(child.register_forward_hook(
                lambda _child, _args, _output, name=name: counted.__setitem__(
                    name, counted[name] + counter.flops - started[name])))
        forward_once(module, example_input, handles)
    return {name: flops // 2 // batch for name, flops in counted.items()}


def inspect_model(module: nn.Module, example_input: torch.Tensor) -> dict:
    """One row per prunable layer and totals.

    A row holds name, kind, shape, params, nonzero, sparsity, macs, stats, ``unit`` ('head' for
    attention projections, whose channel plans remove whole heads, else 'channel'), ``heads`` and
    ``attention`` (the head count and the attention layer, None for other layers). The totals'
    ``sparsity`` counts prunable weights only (``sparsity_counts`` says so); ``totals["macs"]`` is the
    whole forward pass (``count_macs``), ``totals["other_macs"]`` the part outside the prunable
    layers' rows (attention matmuls and the like); ``totals["batchnorm_layers"]`` how many BatchNorm
    layers a re-estimation would refresh.
    """
    macs = layer_macs(module, example_input)
    heads = attention_heads(module, example_input)
    rows = []
    for layer in prunable_layers(module):
        weight = layer.weight.detach().cpu().numpy()
        nonzero = int(np.count_nonzero(weight))
        count, attention = heads.get(layer.name, (None, None))
        rows.append({"name": layer.name, "kind": layer.kind, "shape": list(weight.shape),
                     "params": int(weight.size), "nonzero": nonzero,
                     "sparsity": 1.0 - nonzero / weight.size if weight.size else 0.0,
                     "macs": macs.get(layer.name), "stats": weight_stats(weight),
                     "unit": "channel" if count is None else "head", "heads": count, "attention": attention})
    all_params = sum(p.numel() for p in module.parameters())
    prunable = sum(row["params"] for row in rows)
    nonzero = sum(row["nonzero"] for row in rows)
    totals = {"layers": len(rows), "params": int(all_params), "prunable_params": int(prunable),
              "nonzero_prunable_params": int(nonzero), "sparsity": 1.0 - nonzero / prunable if prunable else 0.0,
              "sparsity_counts": "prunable weights (Conv, Linear and attention projections), not all parameters",
              "macs": count_macs(module, example_input) or None,
              "batchnorm_layers": sum(isinstance(part, nn.modules.batchnorm._BatchNorm) for part in module.modules())}
    totals["other_macs"] = None if totals["macs"] is None else \
        max(0, totals["macs"] - int(sum(row["macs"] or 0 for row in rows)))
    return {"layers": rows, "totals": totals}


def weight_histogram(module: nn.Module, name: str, bins: int = 60, absolute: bool = True) -> dict:
    """Histogram of a layer's weights (of |w| when ``absolute``): ``{"edges": [...], "counts": [...]}``."""
    weight = layer_by_name(module, name).weight.detach().cpu().numpy().reshape(-1)
    values = np.abs(weight) if absolute else weight
    counts, edges = np.histogram(values, bins=bins)
    return {"edges": edges.tolist(), "counts": counts.tolist(), "absolute": absolute,
            "zeros": int((weight == 0).sum())}


def threshold_of(histogram: dict, sparsity: float) -> float:
    """The value below which a share ``sparsity`` of a histogram's entries lie, interpolated within a bin
    (``histogram``: ``{"counts", "edges"}`` of magnitudes, as ``weight_histogram`` gives)."""
    counts, edges = histogram["counts"], histogram["edges"]
    target, running = sparsity * sum(counts), 0.0
    for count, low, high in zip(counts, edges[:-1], edges[1:]):
        if count and running + count >= target:
            return low + (high - low) * (target - running) / count
        running += count
    return edges[-1]


def final_classifier(module: nn.Module, example_input: torch.Tensor | None) -> str | None:
    """The last prunable layer whose output is the model's output (else the last one that ran)."""
    layers = prunable_layers(module)
    if not layers:
        return None
    if example_input is None:
        return layers[-1].name
    seen: list[tuple[str, torch.Tensor]] = []
    handles = [layer.module.register_forward_hook(
        lambda child, args, output, name=layer.name: seen.append(
            (name, output[0] if isinstance(output, tuple) else output))) for layer in layers]
    try:
        with torch.no_grad():
            output = module(example_input)
    finally:
        for handle in handles:
            handle.remove()
    output = output[0] if isinstance(output, (tuple, list)) else output
    for name, value in reversed(seen):
        if value is output:
            return name
    return seen[-1][0] if seen else layers[-1].name


def _output_writers(module: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Prunable layers whose outputs reach a model output through operations without weights (a
    detector's heads through concatenations and reshapes): their output channels are the output's."""
    layers = prunable_layers(module)
    produced: dict[object, str] = {}

    def remember(name):
        def hook(child, args, output):
            produced.setdefault(getattr(output[0] if isinstance(output, tuple) else output, "grad_fn", None), name)
        return hook

    handles = [layer.module.register_forward_hook(remember(layer.name)) for layer in layers]
    try:
        with torch.enable_grad():
            found = [tensor for _, tensor in leaves(module(example_input))]
    finally:
        for handle in handles:
            handle.remove()
    writers, stack, seen = [], [tensor.grad_fn for tensor in found if tensor.grad_fn is not None], set()
    while stack:
        function = stack.pop()
        if function is None or function in seen:
            continue
        seen.add(function)
        if function in produced:
            writers.append(produced[function])
            continue
        stack += [parent for parent, _ in function.next_functions]
    order = [layer.name for layer in layers]
    return sorted(set(writers), key=order.index)


def dense_by_default(module: nn.Module, example_input: torch.Tensor | None) -> list[str]:
    """The layers plans leave dense unless they say otherwise: the final classifier, or, for a model
    returning several tensors, every layer that writes one (see ``_output_writers``)."""
    if example_input is not None:
        with torch.no_grad():
            several = len(leaves(module(example_input))) > 1
        if several:
            return _output_writers(module, example_input)
    return [name for name in [final_classifier(module, example_input)] if name]
