"""Which blocks of a model can go whole: found from the autograd graph of one forward pass.

A module is a **removable block** when its output has its input's shape and a *skip path* joins
them: walking back from the output through the graph, some path reaches the input through an
addition and only through operations without weights in between (activations, normalizations,
reshapes). Then the block computes ``input + branch(input)`` (up to a normalization or an
activation) and removing it leaves its skip path: the identity. This covers ResNet basic and
bottleneck blocks without a projection, MobileNetV2 inverted residuals with a skip, and
transformer layers (BERT/MiniLM and ViT, Llama's decoder layers), whose residuals live inside
the layer, without reading a class name.

A module whose skip path runs only through blocks inside it (an encoder holding its layers, a
stage of residual blocks) is a sequence of blocks, not one; a block inside a block (BERT's
attention sub-layer) is part of its enclosing block. Modules with a residual addition that is
not a clean skip (a projection shortcut, a shape change) are named with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Operations a skip path may run through: no weights of their own that reshape what flows (the
# normalizations' scale and shift keep the residual stream's meaning). Matched by name prefix.
SKIP_OPERATIONS = ("AddBackward", "ReluBackward", "GeluBackward", "SiluBackward", "HardtanhBackward",
                   "ThresholdBackward", "NativeLayerNormBackward", "CloneBackward", "ToCopyBackward",
                   "ViewBackward", "UnsafeViewBackward", "ReshapeAliasBackward", "AliasBackward")
ADD = "AddBackward"


@dataclass(frozen=True)
class Block:
    """A module a depth plan can remove (``removable``) or one that looks like a block but cannot
    go, with the ``reason``; ``shape`` is the input shape of the traced pass, ``output`` how the
    module returns its hidden state ("tensor", or "tuple:N" for a tuple of N items)."""

    name: str
    kind: str
    removable: bool
    reason: str = ""
    shape: tuple[int, ...] = ()
    output: str = "tensor"


@dataclass
class _Call:
    module: nn.Module
    input_node: object = None
    output_node: object = None
    input_shape: tuple = ()
    output_shape: tuple = ()
    output: str = "tensor"


def hidden_state(value):
    """The hidden state of a module's arguments or result: the first tensor, in a tuple or a ModelOutput."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            found = hidden_state(item)
            if found is not None:
                return found
    return None


def _output_kind(output) -> str:
    if isinstance(output, torch.Tensor):
        return "tensor"
    if isinstance(output, tuple) and not hasattr(output, "keys"):
        return f"tuple:{len(output)}"
    return "other"


def _node(tensor: torch.Tensor | None):
    return None if tensor is None else tensor.grad_fn


def _trace(module: nn.Module, example_input) -> dict[str, _Call]:
    """Input and output autograd nodes of every submodule's first call in one forward pass with gradients."""
    calls: dict[str, _Call] = {}
    names = {child: name for name, child in module.named_modules() if name}

    def before(child, args, kwargs):
        if child in names and names[child] not in calls:
            tensor = hidden_state(args) if args else hidden_state(kwargs.get("hidden_states"))
            if tensor is not None and tensor.is_floating_point():
                calls[names[child]] = _Call(child, _node(tensor), None, tuple(tensor.shape))

    def after(child, args, kwargs, output):
        call = calls.get(names.get(child, ""))
        if call is not None and call.module is child and call.output_node is None:
            tensor = hidden_state(output)
            if tensor is not None:
                call.output_node, call.output_shape = _node(tensor), tuple(tensor.shape)
                call.output = _output_kind(output)

    hooks = [child.register_forward_pre_hook(before, with_kwargs=True) for child in names]
    hooks += [child.register_forward_hook(after, with_kwargs=True) for child in names]
    states = [(parameter, parameter.requires_grad) for parameter in module.parameters()]
    example = example_input
    if isinstance(example, torch.Tensor) and example.is_floating_point():
        example = example.detach().clone().requires_grad_(True)
    try:
        for parameter, _ in states:
            parameter.requires_grad_(True)
        with torch.enable_grad():
            module(example)
    finally:
        for handle in hooks:
            handle.remove()
        for parameter, state in states:
            parameter.requires_grad_(state)
    return calls


def _reaching(start, goal) -> dict:
    """Autograd nodes between ``start`` and ``goal``: node -> True when some path from it reaches ``goal``
    (nodes created before ``goal`` cannot, so the walk stops there)."""
    floor = goal._sequence_nr() if hasattr(goal, "_sequence_nr") else -1
    reaches: dict = {}
    stack = [(start, False)]
    while stack:
        node, expanded = stack.pop()
        if node is None or (node in reaches and not expanded):
            continue
        if node is goal:
            reaches[node] = True
            continue
        if not expanded:
            if type(node).__name__ == "AccumulateGrad" or node._sequence_nr() < floor:
                reaches[node] = False
                continue
            reaches[node] = False
            stack.append((node, True))
            stack.extend((child, False) for child, _ in node.next_functions if child is not None)
            continue
        reaches[node] = any(reaches.get(child, False) for child, _ in node.next_functions if child is not None)
    return reaches


def _skip_path(start, goal, reaches: dict) -> list | None:
    """The nodes of a path from ``start`` back to ``goal`` through SKIP_OPERATIONS only (one crossing an
    addition when there is one), or None."""
    usable: dict = {}

    def ok(node) -> bool:
        if node is goal:
            return True
        if node not in usable:
            usable[node] = False  # a cycle cannot happen in autograd; this only bounds the recursion
            usable[node] = (bool(reaches.get(node)) and type(node).__name__.startswith(SKIP_OPERATIONS)
                            and any(ok(child) for child, _ in node.next_functions if child is not None))
        return usable[node]

    if not ok(start):
        return None
    path, node = [], start
    while node is not goal:
        path.append(node)
        node = next(child for child, _ in node.next_functions if child is not None and ok(child))
    return path


def _joins(reaches: dict) -> bool:
    """Whether an addition inside the call has two operands that both depend on the call's input."""
    return any(type(node).__name__.startswith(ADD) and
               sum(bool(reaches.get(child)) for child, _ in node.next_functions if child is not None) >= 2
               for node, reached in reaches.items() if reached)


def _shape_text(shape: tuple) -> str:
    return "x".join(str(size) for size in shape[1:]) or "scalar"


def _verdict(call: _Call) -> tuple[str, list | None]:
    """("removable" | why a residual module cannot go | "" for no residual join, skip path)."""
    if call.input_node is None or call.output_node is None or call.input_node is call.output_node:
        return "", None
    if not any(True for _ in call.module.children()) and type(call.module).__module__.startswith("torch.nn"):
        return "", None  # one of torch's own layers holds no residual
    reaches = _reaching(call.output_node, call.input_node)
    if not reaches.get(call.output_node) or not _joins(reaches):
        return "", None
    if call.input_shape != call.output_shape:
        return (f"its output shape differs from its input's ({_shape_text(call.input_shape)} -> "
                f"{_shape_text(call.output_shape)})"), None
    path = _skip_path(call.output_node, call.input_node, reaches)
    if path is None or not any(type(node).__name__.startswith(ADD) for node in path):
        return "its shortcut passes through weights (a projection)", None
    return "removable", path


def _inside(name: str, outer: str) -> bool:
    return name.startswith(outer + ".")


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _own_additions(name: str, path: list, calls: dict, candidates: dict) -> bool:
    """Whether the skip path of ``name`` crosses an addition that no removable module inside it owns
    (else ``name`` is a sequence of blocks, such as an encoder holding its layers)."""
    covered = set()
    for other in candidates:
        if _inside(other, name):
            covered.update(candidates[other])
    return any(type(node).__name__.startswith(ADD) and node not in covered for node in path)


def find_blocks(module: nn.Module, example_input) -> list[Block]:
    """Every removable block of ``module``, and the residual modules beside them that cannot go (with
    the reason), in call order.

    ``example_input`` drives one forward pass with gradients (the module is not changed; parameters
    keep their ``requires_grad``). Blocks nested in a removable block are part of it; a module whose
    skip path runs only through blocks inside it is a sequence of blocks, not one.
    """
    calls = _trace(module, example_input)
    verdicts = {name: _verdict(call) for name, call in calls.items()}
    candidates = {name: path for name, (verdict, path) in verdicts.items() if verdict == "removable"}
    removable = [name for name, path in candidates.items() if _own_additions(name, path, calls, candidates)]
    outermost = [name for name in removable if not any(_inside(name, other) for other in removable)]
    kinds = {type(calls[name].module) for name in outermost}
    parents = {_parent(name) for name in outermost}
    lists = {name for name in parents if isinstance(module.get_submodule(name), (nn.ModuleList, nn.Sequential))}
    blocks = []
    for name, call in calls.items():
        verdict = verdicts[name][0]
        if not verdict and _parent(name) in lists:
            verdict = "no skip connection joins its input to its output"
        if name in outermost:
            blocks.append(Block(name, type(call.module).__name__, True, "", call.input_shape, call.output))
            continue
        beside = type(call.module) in kinds or _parent(name) in parents
        if (verdict and verdict != "removable" and beside and any(True for _ in call.module.parameters())
                and not any(_inside(name, other) for other in outermost)):
            blocks.append(Block(name, type(call.module).__name__, False, verdict, call.input_shape, call.output))
    return blocks


def removable_blocks(module: nn.Module, example_input) -> list[str]:
    """Names of the blocks of ``module`` a depth plan can remove, in call order."""
    return [block.name for block in find_blocks(module, example_input) if block.removable]
