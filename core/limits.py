"""Bounds on what a small hostile file can make prunelab allocate, and short reprs for messages.

A 4 MB ``.npz`` can declare 4 GiB of zeros, a 400-byte ``.onnx`` can declare a 1x3x100000x100000
input and a 500-byte YAML plan can expand through aliases into billions of nodes. Every such
size is checked here against a limit before anything is allocated. Each limit is read from the
environment at each call, so a person can raise it: ``PRUNELAB_MAX_DATA_GB`` (float data and
token ids, default 1 GiB), ``PRUNELAB_MAX_TEXT_MB`` (a ``.txt`` of sentences, default 16 MiB) and
``PRUNELAB_MAX_MODEL_GB`` (the parameters a Hugging Face config asks for, as float32, default 4 GiB)
and ``PRUNELAB_MAX_PLANS`` (plans in one explore grid, default 500).
"""
from __future__ import annotations

import json
import math
import os
import reprlib
import zipfile
from pathlib import Path

import numpy as np
import yaml
from numpy.lib import format as npy

from core.errors import PrunelabError

DEFAULT_DATA_GB = 1.0
DATA_LIMIT_VARIABLE = "PRUNELAB_MAX_DATA_GB"
RANDOM_DATA_BYTES = 128 * 2**20  # seeded random inputs: at most this much float32, fewer items for big shapes
PLAN_NODES = 1_000_000            # values in a plan after alias expansion (a real plan has one per layer)
PLAN_DEPTH = 20                   # nesting of a plan (a real plan nests two levels)
PLAN_BYTES = 16 * 2**20           # a plan file (one line per layer)
DEFAULT_MODEL_GB = 4.0            # a Hugging Face config's parameters as float32 (about a billion)
MODEL_LIMIT_VARIABLE = "PRUNELAB_MAX_MODEL_GB"
DEFAULT_PLANS = 500               # plans in one explore grid (the default grid has 24; each takes seconds)
PLANS_VARIABLE = "PRUNELAB_MAX_PLANS"
DEFAULT_TEXT_MB = 16.0            # a .txt of sentences (assets/sentences.txt is 20 KB)
TEXT_LIMIT_VARIABLE = "PRUNELAB_MAX_TEXT_MB"
TEXT_LINES = 100_000              # sentences in one .txt, whatever its size
CHARS_PER_TOKEN = 16              # a line is cut to this many characters per token of the sequence before tokenizing
TOKENS = 8192                     # the longest sequence for a token model that does not declare its own maximum

_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxlist, _BRIEF.maxtuple, _BRIEF.maxdict = 2, 6, 8, 4
_BRIEF.maxstring, _BRIEF.maxother, _BRIEF.maxlong = 40, 40, 40


def brief(value) -> str:
    """A repr of ``value`` cut to about 100 characters without walking more than a few items of it."""
    text = _BRIEF.repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def clip(text: str, limit: int = 200) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def data_limit() -> int:
    """The most bytes of float data prunelab reads or makes for one model, from PRUNELAB_MAX_DATA_GB."""
    return _environment_bytes(DATA_LIMIT_VARIABLE, DEFAULT_DATA_GB, 2**30, "GiB")


def model_limit() -> int:
    """The most bytes of float32 parameters a Hugging Face config may ask for, from PRUNELAB_MAX_MODEL_GB."""
    return _environment_bytes(MODEL_LIMIT_VARIABLE, DEFAULT_MODEL_GB, 2**30, "GiB")


def plan_limit() -> int:
    """The most plans one explore grid may hold, from PRUNELAB_MAX_PLANS (default DEFAULT_PLANS)."""
    text = os.environ.get(PLANS_VARIABLE, "").strip()
    if not text:
        return DEFAULT_PLANS
    if not text.isdigit() or int(text) < 1:
        raise PrunelabError(f"{PLANS_VARIABLE} must be a positive whole number of plans, got {brief(text)}")
    return int(text)


def text_limit() -> int:
    """The largest ``.txt`` of sentences prunelab reads (or accepts as an upload), from PRUNELAB_MAX_TEXT_MB."""
    return _environment_bytes(TEXT_LIMIT_VARIABLE, DEFAULT_TEXT_MB, 2**20, "MiB")


def _environment_bytes(variable: str, default: float, unit: int, unit_name: str) -> int:
    """``variable`` (a positive number of ``unit_name``) in bytes, ``default`` when unset; read at each call."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return int(default * unit)
    try:
        amount = float(text)
    except ValueError:
        amount = math.nan
    if not math.isfinite(amount) or amount <= 0:
        raise PrunelabError(f"{variable} must be a positive number of {unit_name}, got {brief(text)}")
    return int(amount * unit)


def check_text_size(size: int, what: str) -> None:
    """Refuse a ``.txt`` of sentences larger than ``text_limit()`` bytes, before it is read."""
    limit = text_limit()
    if size > limit:
        raise PrunelabError(f"text data {what} is {gib(size)}; the limit is {gib(limit)} "
                            f"(set {TEXT_LIMIT_VARIABLE} to allow more)")


def check_text_lines(count: int, seq_len: int, what: str) -> None:
    """Refuse more than TEXT_LINES sentences, or more than ``data_limit()`` bytes of int64 token ids."""
    if count > TEXT_LINES:
        raise PrunelabError(f"text data {what} has more than {TEXT_LINES:,} lines; prunelab evaluates on "
                            f"at most {TEXT_LINES:,} sentences (use a sample of them)")
    limit = data_limit()
    if count * seq_len * 8 > limit:
        raise PrunelabError(f"text data {what}: {count:,} sentences of {seq_len} tokens would take "
                            f"{gib(count * seq_len * 8)} as token ids; {_raise_limit_hint(limit)}")


def check_tokens(length: int, maximum: int | None, what: str) -> None:
    """Refuse a sequence length above the model's ``maximum`` positions (TOKENS when it declares none)."""
    if maximum is None:
        maximum, reason = TOKENS, "prunelab's limit for a model that declares no maximum"
    else:
        reason = "its max_position_embeddings"
    if length > maximum:
        raise PrunelabError(f"{what} takes at most {maximum} tokens ({reason}); "
                            f"a sequence length of {length:,} was asked for")


def gib(count: int) -> str:
    return f"{count / 2**30:.3g} GiB" if count >= 2**28 else f"{count / 2**20:.3g} MiB"


def _raise_limit_hint(limit: int) -> str:
    return f"the limit is {gib(limit)}; set {DATA_LIMIT_VARIABLE} to allow more"


def check_npz(path: Path) -> None:
    """Read the header of every array in a ``.npz`` and refuse it before any array is decompressed.

    Refused: arrays of Python objects (reading them would unpickle), anything that is not a
    numpy array, and archives whose arrays would take more than ``data_limit()`` bytes as
    float32 (the type prunelab converts inputs to).
    """
    limit = data_limit()
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                shape, dtype = _npy_header(archive, member, path)
                if dtype.hasobject:
                    raise PrunelabError(f"data file {path}: array '{_key(member)}' holds Python objects "
                                        f"(dtype object); prunelab reads numeric arrays only")
                total += math.prod(shape) * max(dtype.itemsize, 4)
                if total > limit:
                    raise PrunelabError(f"data file {path}: array '{_key(member)}' of shape {brief(shape)} "
                                        f"would take {gib(total)} in memory; {_raise_limit_hint(limit)}")
    except zipfile.BadZipFile:
        raise PrunelabError(f"cannot read data file {path}: not a .npz archive (numpy.savez)") from None


def _key(member: zipfile.ZipInfo) -> str:
    return clip(member.filename.removesuffix(".npy"), 60)


def _npy_header(archive: zipfile.ZipFile, member: zipfile.ZipInfo, path: Path) -> tuple[tuple, np.dtype]:
    """The declared shape and dtype of one ``.npy`` member, reading only its first bytes."""
    try:
        with archive.open(member) as stream:
            version = npy.read_magic(stream)
            reader = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
            if reader is None:
                raise ValueError(f"npy format version {version}")
            shape, _, dtype = reader(stream)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as error:
        raise PrunelabError(f"cannot read data file {path}: member '{_key(member)}' is not a numpy array "
                            f"({error.__class__.__name__})") from None
    return tuple(int(size) for size in shape), np.dtype(dtype)


def random_count(item_shape: tuple[int, ...], wanted: int) -> int:
    """How many seeded random float32 items of ``item_shape`` to draw: ``wanted``, fewer for big items.

    Raises PrunelabError before allocating when two items would not fit the data limit.
    """
    item_bytes = math.prod(item_shape) * 4
    limit = data_limit()
    if 2 * item_bytes > limit:
        raise PrunelabError(f"an input of shape {brief((1, *item_shape))} takes {gib(item_bytes)} per item; "
                            f"{_raise_limit_hint(limit)}, or pass a smaller --input-shape")
    return max(2, min(wanted, min(limit, RANDOM_DATA_BYTES) // max(1, item_bytes)))


def check_plan_size(values, what: str) -> None:
    """Refuse a plan value that nests deeper than PLAN_DEPTH or expands to more than PLAN_NODES values.

    Shared references (YAML aliases) count every time they appear, which is what any reader of
    the value would pay; the walk stops at the first limit, so it is cheap even for a bomb.
    """
    budget = PLAN_NODES
    stack = [(values, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > PLAN_DEPTH:
            raise PrunelabError(f"{what} nests deeper than {PLAN_DEPTH} levels; a plan is a flat mapping")
        if isinstance(value, dict):
            budget -= 2 * len(value)
            children = (item for pair in value.items() for item in pair)
        elif isinstance(value, (list, tuple, set, frozenset)):
            budget -= len(value)
            children = iter(value)
        else:
            continue
        if budget < 0:
            raise PrunelabError(f"{what} expands to more than {PLAN_NODES:,} values (YAML aliases?); "
                                f"a plan holds one value per layer")
        stack.extend((item, depth + 1) for item in children)


def read_plan_text(text: str, what: str, suffix: str):
    """Parse plan text as JSON (``suffix == ".json"``) or safe YAML, bounded in size, depth and aliases.

    Raises PrunelabError naming ``what`` for text too large, too deep or expanding too far,
    before the expansion is built; YAML and JSON syntax errors are left to the caller.
    """
    if len(text) > PLAN_BYTES:
        raise PrunelabError(f"{what} is {gib(len(text))}; a plan is a few KB (limit {gib(PLAN_BYTES)})")
    try:
        values = json.loads(text) if suffix == ".json" else _BoundedLoader(text, what).bounded_data()
    except RecursionError:
        raise PrunelabError(f"{what} nests deeper than {PLAN_DEPTH} levels; a plan is a flat mapping") from None
    check_plan_size(values, what)
    return values


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that counts every node as composed, an alias as the whole tree it names.

    The count reaches the limit long before any expansion is built (merge keys ``<<`` expand
    when the mapping is constructed, after composing), and depth is checked before Python's
    recursion limit, so neither a "billion laughs" file nor deep nesting gets far.
    """

    def __init__(self, text: str, what: str):
        super().__init__(text)
        self.what, self.expanded, self.depth, self.sizes = what, 0, 0, {}

    def bounded_data(self):
        try:
            return self.get_single_data()
        finally:
            self.dispose()

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self._count(self.sizes.get(id(node), 1))
            return node
        self.depth += 1
        if self.depth > PLAN_DEPTH:
            raise PrunelabError(f"{self.what} nests deeper than {PLAN_DEPTH} levels; a plan is a flat mapping")
        node = super().compose_node(parent, index)
        self.depth -= 1
        self.sizes[id(node)] = _node_size(node, self.sizes)
        self._count(1)
        return node

    def _count(self, size: int) -> None:
        self.expanded += size
        if self.expanded > PLAN_NODES:
            raise PrunelabError(f"{self.what} expands to more than {PLAN_NODES:,} values (YAML aliases?); "
                                f"a plan holds one value per layer")


def _node_size(node, sizes: dict) -> int:
    """1 + the sizes of the children, an aliased child counted at its full expanded size."""
    if isinstance(node, yaml.SequenceNode):
        return 1 + sum(sizes.get(id(item), 1) for item in node.value)
    if isinstance(node, yaml.MappingNode):
        return 1 + sum(sizes.get(id(key), 1) + sizes.get(id(value), 1) for key, value in node.value)
    return 1
