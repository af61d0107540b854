"""The resolved plan: what one Plan means for one model, decided once.

Which layers stay dense (the plan's ``ignore``, else the final classifier; under N:M also the
layers whose inputs do not split into groups of M), what each layer's target is and in which
unit, which target a coupled group takes, and how kept channels round: the engine, the sweeps,
plan export, the CLI and the dashboard all read a ResolvedPlan instead of re-deriving a rule.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from core.errors import PrunelabError
from core.limits import brief
from core.prune.plan import AUTO, Plan, granularity_kind

# What a layer's target is a share of, per granularity kind (attention layers in channel plans
# lose whole heads: core.prune.shrink reports those in heads).
UNITS = {"unstructured": "weight", "channel": "channel", "N:M": "N:M"}
CLASSIFIER_REASON = "left dense: the final classifier"
IGNORED_REASON = "left dense: in the plan's ignore list"


@dataclass(frozen=True)
class ResolvedPlan:
    """A Plan read against one model's prunable layers.

    layers: every prunable layer, in definition order.
    ignored: layers left dense by the plan's ``ignore`` (None there: the final classifier).
    ungroupable: N:M plans: {layer: reason} for layers the pattern cannot group, which stay dense.
    dropped: blocks removed whole (the plan's ``drop`` and the blocks its ``depth`` share adds, lowest score
        first), in call order; filled by ``with_depth``. block_scores: (block, score) pairs when the ``depth``
        share ranked them; block_score: what the scores are ('influence' or 'fisher', from the plan's
        criterion: core.prune.depth.BlockRanking). outputs: (block, "tensor" | "tuple:N") for the dropped blocks.
    round_to: the multiple kept channels round to (channel plans; 1 otherwise): the plan's own number, or
        under ``round_to: auto`` the multiple this CPU's kernels want (core.kernels.channel_multiple), which
        a small group halves (``rounding``). rounding_reason: why, in a few words ("" when the plan set it).
    """

    plan: Plan
    layers: tuple[str, ...]
    ignored: tuple[str, ...]
    ungroupable: tuple[tuple[str, str], ...] = ()
    dropped: tuple[str, ...] = ()
    block_scores: tuple[tuple[str, float], ...] = ()
    block_score: str = ""
    outputs: tuple[tuple[str, str], ...] = ()
    round_to: int = 1
    rounding_reason: str = ""

    @property
    def auto_rounding(self) -> bool:
        """Whether the rounding follows the CPU (the plan's ``round_to: auto``)."""
        return self.plan.round_to == AUTO

    def rounding(self, channels: int) -> int:
        """The multiple a group of ``channels`` rounds its kept count to: ``round_to``, halved under ``auto``
        until the group holds a few multiples (core.kernels.group_multiple)."""
        from core.kernels import group_multiple

        return group_multiple(self.round_to, channels) if self.auto_rounding else self.round_to

    @property
    def rounding_note(self) -> str:
        """One line saying how kept channels were rounded, for the notes ("" outside channel plans)."""
        if self.plan.granularity != "channel":
            return ""
        if not self.auto_rounding:
            return f"kept channels rounded to multiples of {self.round_to} (the plan's round_to)"
        from core.kernels import MIN_UNITS

        return (f"kept channels rounded to multiples of {self.round_to} (round_to: auto; {self.rounding_reason}; "
                f"groups under {MIN_UNITS * self.round_to} channels round to smaller multiples)")

    def removed(self, name: str) -> bool:
        """Whether layer ``name`` goes with a block the plan removes whole."""
        return any(name.startswith(f"{block}.") for block in self.dropped)

    def with_depth(self, module, example_input, data=None, output_kind: str = "logits",
                   pad_id: int | None = None) -> ResolvedPlan:
        """This resolution with the blocks the plan removes named (see core.prune.depth.blocks_to_drop):
        runs the model once with gradients to find them, and on calibration data when ``depth`` ranks them,
        by the ranking the plan's criterion gives blocks (core.prune.depth.BlockRanking; ``output_kind`` and
        ``pad_id`` as in ModelHandle). Raises PrunelabError for a ``drop`` name that is not a removable block."""
        if not self.plan.removes_blocks:
            return self
        from core.prune.blocks import find_blocks
        from core.prune.depth import BlockRanking, blocks_to_drop

        if example_input is None:
            raise PrunelabError("removing blocks needs an example input to find them")
        blocks = find_blocks(module, example_input)
        ranking = BlockRanking.for_criterion(self.plan.criterion, data=data, example_input=example_input,
                                             output_kind=output_kind, pad_id=pad_id, seed=self.plan.seed)
        names, scores = blocks_to_drop(module, self.plan.drop, self.plan.depth, ranking, blocks)
        outputs = {block.name: block.output for block in blocks}
        return dataclasses.replace(self, dropped=tuple(names), block_scores=tuple(scores.items()),
                                   block_score=ranking.score if scores else "",
                                   outputs=tuple((name, outputs[name]) for name in names))

    @property
    def included(self) -> tuple[str, ...]:
        """The layers the plan prunes, in definition order."""
        return tuple(name for name in self.layers if name not in self.ignored)

    @property
    def unit(self) -> str:
        """What a target is a share of: 'weight', 'channel' or 'N:M'."""
        return UNITS[granularity_kind(self.plan.granularity)]

    @property
    def dense(self) -> dict[str, str]:
        """{layer: why it stays dense} for every layer the plan leaves whole."""
        why = CLASSIFIER_REASON if self.plan.ignore is None else IGNORED_REASON
        return {**dict(self.ungroupable), **dict.fromkeys(self.ignored, why)}

    def asked(self, name: str) -> float:
        """The target the plan gives ``name`` itself: its override, else the plan's sparsity."""
        return self.plan.layer_targets.get(name, self.plan.sparsity)

    def target(self, name: str) -> float:
        """The share of ``name``'s unit the plan removes: 0 when it stays dense, n/m under N:M,
        else its own target (channel plans: see ``group_target`` for a coupled layer)."""
        if name in self.dense:
            return 0.0
        if self.plan.nm is not None:
            n, m = self.plan.nm
            return n / m
        return self.asked(name)

    def group_target(self, leader: str, members) -> tuple[float | None, list[str]]:
        """The target of a coupled channel group or attention layer, and the layers that named one.

        The first layer with its own override among the leader and then the members decides; None
        when none has one (the plan's sparsity applies, or the global ranking in global scope). The
        caller notes when the named layers disagree.
        """
        targets = self.plan.layer_targets
        named = [name for name in dict.fromkeys([leader, *members]) if name in targets]
        return (targets[named[0]] if named else None), named

    def kept_channels(self, channels: int, target: float, blocks: int = 1) -> int:
        """Channels a unit of ``channels`` keeps at ``target``, rounded to ``round_to`` and to ``blocks``."""
        from core.prune.select import kept_channels

        return kept_channels(channels, target, self.rounding(channels), blocks)

    def with_plan(self, plan: Plan) -> ResolvedPlan:
        """This resolution for ``plan``, a plan that differs only in targets, criterion or settings
        (the same granularity and ``ignore``), without running the model again."""
        if (plan.granularity, plan.ignore) != (self.plan.granularity, self.plan.ignore):
            raise ValueError("with_plan needs the same granularity and ignore list; resolve the plan afresh")
        same_depth = (plan.drop, plan.depth) == (self.plan.drop, self.plan.depth) and (
            not plan.depth or plan.criterion == self.plan.criterion)  # a depth share ranks blocks by the criterion
        round_to, reason = resolve_rounding(plan)
        return dataclasses.replace(self, plan=plan, round_to=round_to, rounding_reason=reason,
                                   **({} if same_depth else {"dropped": (), "block_scores": (), "block_score": "",
                                                             "outputs": ()}))

    def to_dict(self) -> dict:
        """The plan's plain values with the default ``ignore`` and the blocks removed spelled out (what was applied)."""
        values = {**self.plan.to_dict(), "ignore": list(self.ignored)}
        if self.plan.granularity == "channel":
            values["round_to"] = self.round_to  # what auto resolved to on this CPU
        if self.dropped:
            values["drop"] = list(self.dropped)
            values.pop("depth", None)  # the share is now the named blocks
        return values


def check_names(plan: Plan, layers) -> None:
    """Raise PrunelabError naming any layer in ``plan``'s ``layers`` or ``ignore`` not among ``layers``."""
    layers = list(layers)
    for name in [name for name, _ in plan.layers] + list(plan.ignore or ()):
        if name not in layers:
            raise PrunelabError(f"plan names layer {brief(name)}, which the model does not have "
                                f"(layers: {', '.join(layers) or 'none'})")


def validate_for(plan: Plan, module) -> None:
    """Raise PrunelabError naming any layer in ``plan``'s ``layers`` or ``ignore`` that ``module`` lacks."""
    from core.inspect import prunable_layers  # plans stay readable without torch; it loads here

    check_names(plan, [layer.name for layer in prunable_layers(module)])


def resolve_names(plan: Plan, layers, classifier: str | list[str] | None, ungroupable: dict[str, str] | None = None
                  ) -> ResolvedPlan:
    """Resolve ``plan`` against layer names alone; ``classifier`` is the layer (or layers) left dense by default."""
    check_names(plan, layers)
    defaults = [classifier] if isinstance(classifier, str) else list(classifier or [])
    ignored = plan.ignore if plan.ignore is not None else tuple(name for name in defaults if name)
    round_to, reason = resolve_rounding(plan)
    return ResolvedPlan(plan, tuple(layers), tuple(name for name in layers if name in ignored),
                        tuple((ungroupable or {}).items()), round_to=round_to, rounding_reason=reason)


def resolve_rounding(plan: Plan) -> tuple[int, str]:
    """The multiple ``plan`` rounds kept channels to and why: 1 outside channel plans, the plan's number,
    or under ``auto`` the multiple this CPU's kernels want (core.kernels.channel_multiple)."""
    if plan.granularity != "channel":
        return 1, ""
    if plan.round_to != AUTO:
        return plan.round_to, ""
    from core.kernels import channel_multiple

    return channel_multiple()


def resolve(plan: Plan, model, example_input=None, dense_default: list[str] | None = None) -> ResolvedPlan:
    """Resolve ``plan`` against ``model`` (a ModelHandle with a module, or an nn.Module and its example input).

    The final classifier is found by running ``example_input`` once, unless ``dense_default`` already
    names the layers plans leave dense (core.inspect.dense_by_default of this model). Raises
    PrunelabError for a layer the model lacks.
    """
    from core.inspect import dense_by_default, prunable_layers
    from core.prune.nm import layout

    module = getattr(model, "module", model)
    if module is None:
        raise PrunelabError("resolving a plan needs the PyTorch model (core.api.resolve_plan reads an ONNX graph)")
    if example_input is None and hasattr(model, "example_input"):
        example_input = model.example_input()
    layers = prunable_layers(module)
    ungroupable = {}
    if plan.nm is not None:
        m = plan.nm[1]
        ungroupable = {layer.name: f"stays dense: its inputs do not split into groups of {m}"
                       for layer in layers if layout(layer.weight, m) is None}
    classifier = None if plan.ignore is not None else \
        list(dense_default) if dense_default is not None else dense_by_default(module, example_input)
    return resolve_names(plan, [layer.name for layer in layers], classifier, ungroupable)
