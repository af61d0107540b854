"""Plan export to the formats other pruning tools read.

- ``torch-pruning``: the keyword arguments of ``torch_pruning.pruner.MetaPruner`` as JSON
  (``pruning_ratio``, ``pruning_ratio_dict`` keyed by module name, ``ignored_layers``,
  ``global_pruning``, ``round_to``) and a short Python snippet that maps the names back to modules.
- ``nni``: an NNI 2.x pruner ``config_list``: entries with ``op_names`` or ``op_types`` and
  ``sparsity_per_layer`` (``total_sparsity`` for a global plan), and a final ``exclude`` entry.
  In NNI the last entry that matches a module wins, so the default comes first and exclusions last.
- ``sparseml``: a SparseML recipe. A ConstantPruningModifier only *holds* existing masks, so each
  layer gets a ``!MagnitudePruningModifier`` whose ``init_sparsity`` equals its ``final_sparsity``
  (a constant target, applied in one shot), then one ``!ConstantPruningModifier`` keeps every
  pruned layer's mask fixed during fine-tuning.

Layer names are those of ``named_modules()``. Given a model (``plan_layers``), every layer is
listed with its resolved target; without one, the plan's default is expressed by module type
where the format allows it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import yaml

from core.errors import PrunelabError

FORMATS = ("torch-pruning", "nni", "sparseml")
DEFAULT_OP_TYPES = ["Linear", "Conv1d", "Conv2d", "Conv3d"]
# Torch-Pruning has no importance for some criteria (they rank single weights); their snippet uses magnitude.
TORCH_PRUNING_FALLBACK = "tp.importance.MagnitudeImportance(p=2)"


def torch_pruning_importance(criterion: str) -> str:
    """The Torch-Pruning importance equivalent to ``criterion``, as the Python text the snippet writes."""
    from core.prune.criteria import criterion as lookup

    return lookup(criterion).torch_pruning or TORCH_PRUNING_FALLBACK


@dataclass(frozen=True)
class LayerTarget:
    """One prunable layer: its module name and type, the weight's parameter name, its target."""

    name: str
    kind: str           # module class name, e.g. "Conv2d"
    parameter: str      # e.g. "conv1.weight"
    sparsity: float     # 0.0 for a layer left dense
    ignored: bool = False


def plan_layers(plan, handle) -> list[LayerTarget]:
    """Every prunable layer of ``handle`` (a ModelHandle) with the target ``plan`` gives it.

    ``ignore=None`` resolves to the final classifier, as the engine does (core.prune.resolved).
    """
    from core.inspect import prunable_layers  # exporting a plan file alone needs no torch
    from core.prune.resolved import resolve

    resolved = resolve(plan, handle)
    ignored = set(resolved.ignored)
    return [LayerTarget(layer.name, type(layer.module).__name__, f"{layer.name}.{layer.weight_name}",
                        0.0 if layer.name in ignored else resolved.asked(layer.name), layer.name in ignored)
            for layer in prunable_layers(handle.module)]


def to_torch_pruning(plan, layers: list[LayerTarget] | None = None) -> dict:
    """``MetaPruner`` keyword arguments, names in place of modules (see the module docstring)."""
    if layers is None:
        ratios, ignored = plan.layer_targets, list(plan.ignore or ())
    else:
        ratios = {layer.name: layer.sparsity for layer in layers
                  if not layer.ignored and (layer.name in plan.layer_targets or plan.scope == "layer")}
        ignored = [layer.name for layer in layers if layer.ignored]
    return {"pruning_ratio": plan.sparsity, "pruning_ratio_dict": ratios, "ignored_layers": ignored,
            "global_pruning": plan.scope == "global", "round_to": _round_to(plan),
            "importance": torch_pruning_importance(plan.criterion)}


def _round_to(plan) -> int | None:
    """Torch-Pruning's round_to: the plan's number, or what ``auto`` means on this CPU; None for 1."""
    from core.prune.resolved import resolve_rounding

    round_to, _ = resolve_rounding(plan)
    return round_to if round_to > 1 else None


SNIPPET_FIRST_LINE = "# Prune `model` (an nn.Module) with Torch-Pruning as the prunelab plan says."


def torch_pruning_snippet(arguments: dict, json_name: str = "pruning_ratio.json") -> str:
    """Python that reads the JSON written from ``to_torch_pruning`` and prunes ``model`` with it.

    ``json_name`` is written as a Python string literal (repr), so no file name can add code.
    """
    return f'''{SNIPPET_FIRST_LINE}
# `example_inputs` is one batch of inputs, e.g. torch.randn(1, 3, 32, 32).
import json
import torch_pruning as tp

settings = json.load(open({json_name!r}))
modules = dict(model.named_modules())
pruner = tp.pruner.MetaPruner(
    model,
    example_inputs,
    importance={arguments["importance"]},
    pruning_ratio=settings["pruning_ratio"],
    pruning_ratio_dict={{modules[name]: ratio for name, ratio in settings["pruning_ratio_dict"].items()}},
    ignored_layers=[modules[name] for name in settings["ignored_layers"]],
    global_pruning=settings["global_pruning"],
    round_to=settings["round_to"],
)
pruner.step()
'''


def to_nni(plan, layers: list[LayerTarget] | None = None) -> list[dict]:
    """An NNI 2.x ``config_list`` (see the module docstring for the order)."""
    key = "total_sparsity" if plan.scope == "global" else "sparsity_per_layer"
    config = []
    if layers is None:
        config.append({key: plan.sparsity, "op_types": list(DEFAULT_OP_TYPES)})
        overrides, ignored = plan.layer_targets, list(plan.ignore or ())
    else:
        included = [layer for layer in layers if not layer.ignored]
        if plan.scope == "global":
            config.append({key: plan.sparsity, "op_names": [layer.name for layer in included
                                                            if layer.name not in plan.layer_targets]})
            overrides = plan.layer_targets
        else:
            overrides = {layer.name: layer.sparsity for layer in included}
        ignored = [layer.name for layer in layers if layer.ignored]
    for sparsity, names in _group_by_value(overrides).items():
        config.append({"sparsity_per_layer": sparsity, "op_names": names})
    if ignored:
        config.append({"exclude": True, "op_names": ignored})
    return [entry for entry in config if entry.get("op_names", True)]


def to_sparseml(plan, layers: list[LayerTarget] | None = None) -> str:
    """A SparseML recipe (YAML text with ``!Modifier`` tags; see the module docstring)."""
    mask_type = {"unstructured": "unstructured", "channel": "filter"}.get(plan.granularity, plan.granularity)
    if layers is None:
        if plan.layer_targets or plan.ignore is not None:
            raise PrunelabError("a SparseML recipe names each layer: export it with the model (--model) so "
                                "per-layer targets and ignored layers can be resolved")
        targets = {"__ALL_PRUNABLE__": plan.sparsity}
    else:
        targets = {layer.parameter: layer.sparsity for layer in layers if not layer.ignored and layer.sparsity > 0}
    lines = ["version: 1.1.0", f"# prunelab plan {plan.digest}: {plan.granularity}, criterion {plan.criterion}",
             "pruning_modifiers:"]
    for parameter, sparsity in targets.items():
        lines += ["  - !MagnitudePruningModifier", f"    params: {_flow(parameter)}",
                  f"    init_sparsity: {sparsity!r}", f"    final_sparsity: {sparsity!r}",
                  "    start_epoch: 0.0", "    end_epoch: 1.0", "    update_frequency: 1.0",
                  f"    mask_type: {json.dumps(mask_type)}", f"    global_sparsity: {plan.scope == 'global'}"]
    if targets:
        lines += ["  - !ConstantPruningModifier", f"    params: {_flow(*targets)}", "    start_epoch: 0.0"]
    return "\n".join(lines) + "\n"


def export_plan(plan, format: str, layers: list[LayerTarget] | None = None, stem: str = "plan") -> dict[str, str]:
    """The files for ``format``: file suffix -> text (torch-pruning gives ``.json`` and a ``.py``
    snippet that reads ``<stem>.json``). Raises PrunelabError for an unknown format."""
    if format == "torch-pruning":
        arguments = to_torch_pruning(plan, layers)
        return {".json": json.dumps(arguments, indent=2) + "\n",
                ".py": torch_pruning_snippet(arguments, f"{stem}.json")}
    if format == "nni":
        return {".json": json.dumps(to_nni(plan, layers), indent=2) + "\n"}
    if format == "sparseml":
        return {".yaml": to_sparseml(plan, layers)}
    raise PrunelabError(f"unknown plan format {format!r} (formats: {', '.join(FORMATS)})")


def load_recipe(text: str):
    """Parse a SparseML recipe with its ``!Modifier`` tags into plain values: ``{"!Name": {...}}`` per modifier."""
    class RecipeLoader(yaml.SafeLoader):
        pass

    RecipeLoader.add_multi_constructor("!", lambda loader, tag, node: {f"!{tag}": loader.construct_mapping(node)})
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - SafeLoader subclass


def _group_by_value(targets: dict[str, float]) -> dict[float, list[str]]:
    groups: dict[float, list[str]] = {}
    for name, sparsity in targets.items():
        groups.setdefault(sparsity, []).append(name)
    return groups


def _flow(*items: str) -> str:
    """A YAML flow list of quoted strings (the token ``__ALL_PRUNABLE__`` stays bare)."""
    if items == ("__ALL_PRUNABLE__",):
        return "__ALL_PRUNABLE__"
    return "[" + ", ".join(json.dumps(item) for item in items) + "]"
