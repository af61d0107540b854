"""Attention heads: find self-attention layers, score whole heads, remove them.

An attention layer is found by its structure, not its class: a module with query, key and value
Linear children (``query``/``key``/``value``, ``q_proj``/``k_proj``/``v_proj``, ``q``/``k``/``v``)
or one fused ``qkv`` Linear, a head count attribute (``num_attention_heads``, ``num_heads``, ...)
and an output projection (a child such as ``o_proj``/``proj``, or the Linear that reads the
module's output, as in BERT's ``attention.output.dense``). Hugging Face BERT, ViT/DeiT and Swin,
timm-style fused attention and grouped-query attention (k/v heads shared by several query heads)
all match. ``nn.MultiheadAttention`` ties its head size to the embedding width and is pruned by
whole heads through the channel groups instead (core.prune.channel).

Removing a head removes its rows of q, k and v, its columns of the output projection and its
slice of per-head parameters (Swin's relative position bias); the head size and the width of the
residual stream stay. Head-count attributes are updated so the module runs, exports and reloads.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.hooks import forward_once

PROJECTION_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q", "k", "v"),
                    ("q_lin", "k_lin", "v_lin"))
FUSED_NAMES = ("qkv", "in_proj", "Wqkv", "c_attn")
OUTPUT_NAMES = ("o_proj", "out_proj", "proj", "o", "out_lin", "dense", "c_proj")
HEAD_ATTRIBUTES = ("num_attention_heads", "num_heads", "n_heads", "n_head")
KV_HEAD_ATTRIBUTES = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
HEAD_SIZE_ATTRIBUTES = ("attention_head_size", "head_dim", "head_size")
WIDTH_ATTRIBUTES = ("all_head_size", "attn_dim", "split_size")  # heads x head size, read by forward passes


@dataclass
class Attention:
    """One self-attention layer: its projections by layer name and its head layout."""

    name: str
    module: nn.Module
    projections: tuple[str, ...]     # q, k, v layer names, or the one fused qkv layer
    output: str | None               # the output projection's layer name
    heads: int
    kv_heads: int                    # key/value heads; equal to heads unless grouped-query attention
    head_size: int

    @property
    def fused(self) -> bool:
        return len(self.projections) == 1

    @property
    def leader(self) -> str:
        """The layer whose plan target sets this attention's share of heads (the query projection)."""
        return self.projections[0]

    def as_dict(self) -> dict:
        return {"name": self.name, "projections": list(self.projections), "output": self.output,
                "heads": self.heads, "kv_heads": self.kv_heads, "head_size": self.head_size}


def _attribute(module: nn.Module, names: tuple[str, ...]) -> int | None:
    for source in (module, getattr(module, "config", None)):
        for name in names:
            value = getattr(source, name, None) if source is not None else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _projections(module: nn.Module) -> tuple[str, ...] | None:
    children = dict(module.named_children())
    for names in PROJECTION_NAMES:
        if all(isinstance(children.get(name), nn.Linear) for name in names):
            return names
    for name in FUSED_NAMES:
        if isinstance(children.get(name), nn.Linear):
            return (name,)
    return None


def _layout(module: nn.Module, projections: tuple[str, ...]) -> tuple[int, int, int] | None:
    """(heads, kv_heads, head_size) when the projections' shapes agree with the head attributes."""
    heads = _attribute(module, HEAD_ATTRIBUTES)
    if heads is None:
        return None
    layers = [getattr(module, name) for name in projections]
    if len(layers) == 1:
        if layers[0].out_features % (3 * heads):
            return None
        return heads, heads, layers[0].out_features // (3 * heads)
    query, key, value = layers
    size = _attribute(module, HEAD_SIZE_ATTRIBUTES) or query.out_features // heads
    if query.out_features != heads * size or key.out_features != value.out_features or key.out_features % size:
        return None
    kv_heads = key.out_features // size
    return (heads, kv_heads, size) if heads % kv_heads == 0 else None


def _output_by_name(module: nn.Module, width: int) -> str | None:
    children = dict(module.named_children())
    for name in OUTPUT_NAMES:
        child = children.get(name)
        if isinstance(child, nn.Linear) and child.in_features == width:
            return name
    return None


def _outputs_by_trace(root: nn.Module, found: dict[str, nn.Module], example_input) -> dict[str, str]:
    """{attention name: the Linear layer whose input is that attention module's output}, from one forward pass."""
    produced: dict[int, str] = {}
    readers: dict[str, str] = {}
    handles = []

    def remember(name):
        def hook(child, args, output):
            output = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(output, torch.Tensor):
                produced[output.data_ptr()] = name
        return hook

    def read(name):
        def hook(child, args):
            if args and isinstance(args[0], torch.Tensor) and args[0].data_ptr() in produced:
                readers.setdefault(produced[args[0].data_ptr()], name)
        return hook

    for name, module in found.items():
        handles.append(module.register_forward_hook(remember(name)))
    for name, module in root.named_modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_pre_hook(read(name)))
    forward_once(root, example_input, handles)
    return readers


def _called(root: nn.Module, layers: dict[str, nn.Module], example_input) -> set[str]:
    """The names among ``layers`` that one forward pass calls as modules."""
    called: set[str] = set()
    handles = [layer.register_forward_pre_hook(lambda child, args, name=name: called.add(name))
               for name, layer in layers.items()]
    forward_once(root, example_input, handles)
    return called


def attention_modules(root: nn.Module) -> list[str]:
    """Names of every module laid out as self-attention (projections matching a head count), whether or
    not its heads can be removed; nn.MultiheadAttention is recognised by type elsewhere."""
    return [name for name, module in root.named_modules() if name and not isinstance(module, nn.MultiheadAttention)
            and (projections := _projections(module)) and _layout(module, projections)]


def find_attention(root: nn.Module, example_input=None) -> list[Attention]:
    """The self-attention layers of ``root`` whose heads can be removed, in definition order.

    With ``example_input``, a layer whose projections the forward pass never calls as modules is left
    out: its weights go to a function that derives the head size from the input width (torchvision's
    Swin), so removing heads would break it.
    """
    candidates = {}
    for name, module in root.named_modules():
        if isinstance(module, nn.MultiheadAttention) or not name:
            continue
        projections = _projections(module)
        layout = projections and _layout(module, projections)
        if layout:
            candidates[name] = (module, projections, layout)
    if example_input is not None and candidates:
        layers = {f"{name}.{part}": module.get_submodule(part)
                  for name, (module, projections, _) in candidates.items() for part in projections}
        called = _called(root, layers, example_input)
        candidates = {name: value for name, value in candidates.items()
                      if all(f"{name}.{part}" in called for part in value[1])}
    traced = {}
    if example_input is not None and any(
            _output_by_name(module, layout[0] * layout[2]) is None for module, _, layout in candidates.values()):
        traced = _outputs_by_trace(root, {name: value[0] for name, value in candidates.items()}, example_input)
    found = []
    for name, (module, projections, (heads, kv_heads, size)) in candidates.items():
        local = _output_by_name(module, heads * size)
        output = f"{name}.{local}" if local else traced.get(name)
        found.append(Attention(name, module, tuple(f"{name}.{part}" for part in projections), output,
                               heads, kv_heads, size))
    return found


# ---- score and select ----------------------------------------------------------------------------

def head_scores(attention: Attention, row_scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """One score per key/value head group: the mean row score of its query, key and value rows.

    ``row_scores`` maps each projection's layer name to one score per output row.
    """
    groups, size = attention.kv_heads, attention.head_size
    per_query = attention.heads // groups
    if attention.fused:
        rows = row_scores[attention.projections[0]].double().reshape(3, groups, per_query, size)
        return rows.mean(dim=(0, 2, 3))
    query, key, value = (row_scores[name].double() for name in attention.projections)
    return (query.reshape(groups, per_query * size).mean(1) + key.reshape(groups, size).mean(1)
            + value.reshape(groups, size).mean(1)) / 3


def kept_heads(attention: Attention, sparsity: float) -> int:
    """Key/value head groups kept at ``sparsity`` (the fraction of heads), rounded, never fewer than one."""
    groups = attention.kv_heads
    return max(1, groups - int(round(sparsity * groups)))


def select_heads(scores: torch.Tensor, kept: int) -> list[int]:
    """The key/value head groups to remove: the lowest-scored ones (ties: the later head)."""
    order = sorted(range(len(scores)), key=lambda index: (float(scores[index]), -index))
    return sorted(order[:len(scores) - kept])


# ---- apply ---------------------------------------------------------------------------------------

def _keep_rows(linear: nn.Linear, rows: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.detach()[rows].clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.detach()[rows].clone())
    linear.out_features = len(rows)


def _keep_columns(linear: nn.Linear, columns: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.detach()[:, columns].clone())
    linear.in_features = len(columns)


def _rows(heads: list[int], size: int) -> torch.Tensor:
    return torch.tensor([head * size + offset for head in heads for offset in range(size)], dtype=torch.long)


def _per_head_parameters(attention: Attention, skip: set[str]) -> list[tuple[nn.Module, str]]:
    """Parameters inside the attention module, outside its projections, with one entry per head (last dim)."""
    found = []
    for name, parameter in attention.module.named_parameters():
        owner_name, _, attribute = name.rpartition(".")
        if owner_name in skip or parameter.ndim < 2 or parameter.shape[-1] != attention.heads:
            continue
        found.append((attention.module.get_submodule(owner_name), attribute))
    return found


def remove_heads(root: nn.Module, attention: Attention, dropped: list[int]) -> None:
    """Remove key/value head groups ``dropped`` (with their query heads) from ``attention`` inside ``root``."""
    if not dropped:
        return
    groups, size = attention.kv_heads, attention.head_size
    per_query = attention.heads // groups
    kept_groups = [group for group in range(groups) if group not in set(dropped)]
    query_heads = [group * per_query + offset for group in kept_groups for offset in range(per_query)]
    layers = [root.get_submodule(name) for name in attention.projections]
    if attention.fused:
        third = attention.heads * size
        _keep_rows(layers[0], torch.cat([part * third + _rows(query_heads, size) for part in range(3)]))
    else:
        _keep_rows(layers[0], _rows(query_heads, size))
        for layer in layers[1:]:
            _keep_rows(layer, _rows(kept_groups, size))
    if attention.output is not None:
        _keep_columns(root.get_submodule(attention.output), _rows(query_heads, size))
    prefix = attention.name + "."
    inside = {name[len(prefix):] for name in [*attention.projections, attention.output]
              if name and name.startswith(prefix)}
    index = torch.tensor(query_heads, dtype=torch.long)
    for owner, attribute in _per_head_parameters(attention, inside):
        setattr(owner, attribute, nn.Parameter(getattr(owner, attribute).detach()[..., index].clone()))
    set_head_counts(attention, len(query_heads), len(kept_groups))


def set_head_counts(attention: Attention, heads: int, kv_heads: int) -> None:
    """Write the new head counts into the module (and into ``attention``) so its forward pass agrees."""
    module = attention.module
    for names, value in ((HEAD_ATTRIBUTES, heads), (KV_HEAD_ATTRIBUTES, kv_heads)):
        present = [name for name in names if isinstance(getattr(module, name, None), int)]
        for name in present or names[:1]:  # a module that read its count from a shared config gets its own
            setattr(module, name, value)
    for name in WIDTH_ATTRIBUTES:
        if isinstance(getattr(module, name, None), int):
            setattr(module, name, heads * attention.head_size)
    attention.heads, attention.kv_heads = heads, kv_heads
