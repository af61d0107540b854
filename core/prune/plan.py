"""The Plan value: what to prune and how much, validated when built, saved as YAML or JSON.

A plan is data. The dashboard's sliders, the CLI's ``--plan`` file and the Python API all
produce one frozen ``Plan``; the engine (core.prune.engine.apply_plan) only reads it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from core.errors import PrunelabError, error_line
from core.limits import PLAN_BYTES, brief, check_plan_size, gib, read_plan_text

# Every granularity a plan takes, in the order they are offered; "2:4" stands for any "N:M" string
# (at least N zeros in every M weights).
GRANULARITIES = ("unstructured", "channel", "2:4")
SCOPES = ("layer", "global")
# The largest per-layer target the dashboard offers and allocation assigns (the last level sweeps measure).
MAX_SPARSITY = 0.95
# round_to's default: the channel multiple follows the CPU's kernels (core.kernels).
AUTO = "auto"
# Keys a resolved plan file (``prunelab prune``'s plan.yaml) carries as a record; read back, they are skipped.
RECORD_KEYS = ("effective_sparsity", "kept")
NM_PATTERN = re.compile(r"^(\d+):(\d+)$")


def parse_nm(granularity: str) -> tuple[int, int] | None:
    """``(n, m)`` for an N:M granularity such as ``"2:4"``, else None."""
    match = NM_PATTERN.match(granularity)
    return (int(match.group(1)), int(match.group(2))) if match else None


def nm_share(granularity: str) -> float | None:
    """n/m for an N:M granularity (every layer that can take it loses exactly that share), else None."""
    nm = parse_nm(granularity)
    return None if nm is None else nm[0] / nm[1]


def granularity_kind(granularity: str) -> str:
    """``"N:M"`` for an N:M granularity, else the granularity itself (what a criterion's granularities list)."""
    return "N:M" if parse_nm(granularity) else granularity


def _fraction(value, what: str) -> float:
    """``value`` as a float in [0, 1), or PrunelabError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PrunelabError(f"{what} must be a number in [0, 1), got {brief(value)}")
    if not 0.0 <= float(value) < 1.0:
        raise PrunelabError(f"{what} must be in [0, 1), got {brief(value)}")
    return float(value)


@dataclass(frozen=True)
class Plan:
    """What to prune and how much.

    granularity: 'unstructured', 'channel' or 'N:M' (e.g. '2:4': at least N zeros in every M weights).
    criterion: a name from core.prune.criteria.CRITERIA (some rank channels only).
    scope: 'layer' (each layer meets its own target) or 'global' (one ranking over all included layers).
    sparsity: default target of every included layer, or the overall target in global scope; in [0, 1).
    layers: per-layer overrides, name -> sparsity (a dict is accepted; stored as a sorted tuple of pairs).
    ignore: layers left dense; None means "the final classifier".
    round_to: kept channels are rounded to a multiple of this (channel plans); "auto" (the default)
        takes the multiple this CPU's convolution kernels run best at (core.kernels), resolved once in
        the resolved plan.
    seed: seeds the random criterion and any sampling.
    recalibrate: re-estimate BatchNorm statistics on the model's real inputs after pruning
        (no labels needed; skipped for synthetic data and models without BatchNorm).
    prune_width: channel plans: also prune the residual stream that attention layers read (the
        hidden size, with positional embeddings and class tokens); by default it stays, and attention
        layers lose whole heads while feed-forward layers lose hidden neurons.
    drop: whole blocks to remove (residual blocks, transformer layers; see ``prunelab inspect``), each
        replaced by its skip path; combinable with any width plan (use sparsity 0 for depth alone).
    depth: share of the removable blocks to remove, cheapest first by the criterion's block ranking (block
        influence; under fisher the blocks' Fisher scores: core.prune.depth.BlockRanking), in [0, 1), rounded
        to the nearest whole block; the blocks in ``drop`` count towards it.
    reconstruct: channel plans: refit the layers that read removed channels or heads by least squares
        so they reproduce the dense model's outputs on the calibration items (core.prune.reconstruct;
        skipped for synthetic data).
    Raises PrunelabError naming the field and the value when something is out of range.
    """

    granularity: str = "unstructured"
    criterion: str = "l1"
    scope: str = "layer"
    sparsity: float = 0.5
    layers: tuple[tuple[str, float], ...] = ()
    ignore: tuple[str, ...] | None = None
    round_to: int | str = AUTO
    seed: int = 0
    recalibrate: bool = True
    prune_width: bool = False
    drop: tuple[str, ...] = ()
    depth: float = 0.0
    reconstruct: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.granularity, str) or (
                self.granularity not in GRANULARITIES and parse_nm(self.granularity) is None):
            raise PrunelabError(f"granularity must be one of {', '.join(GRANULARITIES)} (or any 'N:M'), "
                                f"got {brief(self.granularity)}")
        nm = parse_nm(self.granularity)
        if nm is not None and not 0 < nm[0] < nm[1]:
            raise PrunelabError(f"granularity {brief(self.granularity)}: N:M needs 0 < N < M")
        from core.prune.criteria import CRITERIA  # the one table of criteria (it loads torch)

        if self.criterion not in CRITERIA:
            raise PrunelabError(f"unknown criterion {brief(self.criterion)} (criteria: {', '.join(CRITERIA)})")
        if not CRITERIA[self.criterion].ranks(granularity_kind(self.granularity)):
            kinds = CRITERIA[self.criterion].granularities
            ranks = "channels only" if kinds == ("channel",) else f"{' and '.join(kinds)} weights only"
            raise PrunelabError(f"criterion {brief(self.criterion)} ranks {ranks}, not {self.granularity} weights")
        if self.scope not in SCOPES:
            raise PrunelabError(f"scope must be one of {', '.join(SCOPES)}, got {brief(self.scope)}")
        if self.scope == "global" and nm is None and CRITERIA[self.criterion].layer_scope_only:
            raise PrunelabError(f"scope 'global' does not apply to criterion '{self.criterion}': it "
                                f"{CRITERIA[self.criterion].layer_scope_only}")
        object.__setattr__(self, "sparsity", _fraction(self.sparsity, "sparsity"))
        object.__setattr__(self, "layers", self._normalized_layers(self.layers))
        object.__setattr__(self, "ignore", self._normalized_ignore(self.ignore))
        object.__setattr__(self, "drop", self._normalized_drop(self.drop))
        object.__setattr__(self, "depth", _fraction(self.depth, "depth"))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise PrunelabError(f"seed must be an integer, got {brief(self.seed)}")
        if self.round_to != AUTO and (isinstance(self.round_to, bool) or not isinstance(self.round_to, int)):
            raise PrunelabError(f"round_to must be an integer or 'auto', got {brief(self.round_to)}")
        for name in ("recalibrate", "prune_width", "reconstruct"):
            if not isinstance(getattr(self, name), bool):
                raise PrunelabError(f"{name} must be true or false, got {brief(getattr(self, name))}")
        if self.round_to != AUTO and self.round_to < 1:
            raise PrunelabError(f"round_to must be at least 1, got {brief(self.round_to)}")

    @staticmethod
    def _normalized_layers(layers) -> tuple[tuple[str, float], ...]:
        pairs = layers.items() if isinstance(layers, dict) else layers
        try:
            pairs = [(name, value) for name, value in pairs]
        except (TypeError, ValueError):
            raise PrunelabError(f"layers must map layer names to sparsities, got {brief(layers)}") from None
        names = [name for name, _ in pairs]
        if len(set(names)) != len(names):
            raise PrunelabError(f"layers names a layer twice: {brief(names)}")
        for name, _ in pairs:
            if not isinstance(name, str) or not name:
                raise PrunelabError(f"layers: layer names must be non-empty strings, got {brief(name)}")
        return tuple(sorted((name, _fraction(value, f"sparsity of layer '{name}'")) for name, value in pairs))

    @staticmethod
    def _normalized_ignore(ignore) -> tuple[str, ...] | None:
        if ignore is None:
            return None
        if isinstance(ignore, str) or not all(isinstance(name, str) and name for name in ignore):
            raise PrunelabError(f"ignore must be a list of layer names, got {brief(ignore)}")
        return tuple(sorted(set(ignore)))

    @staticmethod
    def _normalized_drop(drop) -> tuple[str, ...]:
        if drop is None:
            return ()
        if isinstance(drop, str) or not isinstance(drop, (list, tuple)) or not all(
                isinstance(name, str) and name for name in drop):
            raise PrunelabError(f"drop must be a list of block names, got {brief(drop)}")
        if len(set(drop)) != len(drop):
            raise PrunelabError(f"drop names a block twice: {brief(list(drop))}")
        return tuple(sorted(drop))

    @property
    def removes_blocks(self) -> bool:
        """Whether the plan takes whole blocks out (a ``drop`` list or a ``depth`` share)."""
        return bool(self.drop) or self.depth > 0

    @property
    def layer_targets(self) -> dict[str, float]:
        """The per-layer overrides as a dict."""
        return dict(self.layers)

    @property
    def label(self) -> str:
        """The plan in a few words: 'channel, l1, round to 8, global ranking, per-layer targets (2 layers
        own, others 50%)' or '..., all layers 50%'."""
        parts = [self.granularity, self.criterion]
        if self.granularity == "channel" and self.round_to != AUTO and self.round_to > 1:
            parts.append(f"round to {self.round_to}")
        if self.scope == "global":
            parts.append("global ranking")
        own = sum(1 for _, value in self.layers if value != self.sparsity)
        targets = (f"per-layer targets ({own} layer{'s' if own != 1 else ''} own, others {self.sparsity:.0%})"
                   if own else f"all layers {self.sparsity:.0%}")
        return f"{', '.join(parts)}, {targets}"

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(n, m)`` for an N:M plan, else None."""
        return parse_nm(self.granularity)

    def to_dict(self) -> dict:
        """Plain values (lists and dicts) for YAML or JSON; ``drop`` and ``depth`` only when set."""
        values = dataclasses.asdict(self)
        values["layers"] = dict(self.layers)
        values["ignore"] = None if self.ignore is None else list(self.ignore)
        values["drop"] = list(self.drop)
        for key in ("drop", "depth"):  # a width-only plan reads (and hashes) as it did before depth plans
            if not values[key]:
                del values[key]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> Plan:
        """Build from plain values; unknown keys are an error naming them."""
        if not isinstance(values, dict):
            raise PrunelabError(f"a plan must be a mapping of fields, got {type(values).__name__}")
        check_plan_size(values, "the plan")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known - set(RECORD_KEYS), key=str)
        if unknown:
            raise PrunelabError(f"unknown plan field(s): {', '.join(brief(str(key))[1:-1] for key in unknown[:5])} "
                                f"(fields: {', '.join(sorted(known))})")
        values = {key: value for key, value in values.items() if key not in RECORD_KEYS}
        if values.get("layers") is None:
            values.pop("layers", None)
        return cls(**values)

    @property
    def digest(self) -> str:
        """A short, stable fingerprint for cache keys."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def replace(self, **changes) -> Plan:
        """A copy with ``changes`` applied (validated again)."""
        unknown = sorted(set(changes) - {field.name for field in dataclasses.fields(self)})
        if unknown:
            raise PrunelabError(f"unknown plan field(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def save(self, path) -> Path:
        """Write as YAML (.yaml/.yml) or JSON (.json)."""
        path = Path(path)
        values = self.to_dict()
        if path.suffix in (".yaml", ".yml"):
            text = yaml.safe_dump(values, sort_keys=False)
        elif path.suffix == ".json":
            text = json.dumps(values, indent=2) + "\n"
        else:
            raise PrunelabError(f"plan file {path.name}: use a .yaml, .yml or .json name")
        path.write_text(text)
        return path

    @classmethod
    def load(cls, path) -> Plan:
        """Read a plan written by ``save`` (or by hand); PrunelabError on a missing or malformed file."""
        path = Path(path)
        if path.suffix not in (".yaml", ".yml", ".json"):
            raise PrunelabError(f"plan file {path.name}: use a .yaml, .yml or .json name")
        try:
            if path.stat().st_size > PLAN_BYTES:
                raise PrunelabError(f"plan file {path} is {gib(path.stat().st_size)}; a plan is a few KB")
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or "not text"
            raise PrunelabError(f"cannot read plan file {path}: {reason}") from None
        try:
            values = read_plan_text(text, f"plan file {path.name}", path.suffix)
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            raise PrunelabError(f"plan file {path.name} is not valid {path.suffix[1:].upper()}: "
                                f"{error_line(error)}") from None
        return cls.from_dict(values or {})
