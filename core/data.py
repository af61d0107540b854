"""Evaluation and calibration data: the Dataset every model's figures read, the built-in digits splits, a
user's .npz, or random inputs. Text (sentences and token streams) is cut into Datasets by core.text_data."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import PrunelabError
from core.files import ASSETS
from core.limits import check_npz, random_count

DIGITS_FILE = ASSETS / "digits.npz"
SPLIT_SEED = 0


@dataclass(frozen=True, eq=False)
class Dataset:
    """Arrays for evaluation (test), selection and allocation (val), training (train) and calibration.

    Calibration (the activations criteria, reconstruction, BatchNorm and INT8 read) takes the
    calibration split when the data has one (unlabelled items kept for that alone), else train, else val.
    Inputs are shaped ``(n, *input_shape[1:])``: float32, or int64 token ids for token models;
    labels are int64 or ``None`` when the data has no labels, in which case prunelab reports
    agreement with the dense model (or embedding fidelity) instead of accuracy.
    """

    name: str
    x_test: np.ndarray
    y_test: np.ndarray | None
    x_val: np.ndarray
    y_val: np.ndarray | None
    x_train: np.ndarray | None = None
    y_train: np.ndarray | None = None
    synthetic: bool = False  # seeded random inputs: fit for agreement, not for statistics
    origin: dict = field(default_factory=dict)  # split -> where its items come from, in words
    stride: int | None = None  # causal LM test windows overlapping, each start this many tokens after the last
    x_calibration: np.ndarray | None = None  # unlabelled items for calibration only

    def describe_splits(self) -> str:
        """Where each split's items come from, e.g. 'test: x (300 items); val: 20% of x_train held out (96 items)'."""
        parts = []
        for split in ("test", "val", "train", "calibration"):
            x = getattr(self, f"x_{split}")
            if x is not None:
                parts.append(f"{split}: {self.origin.get(split, f'the {split} split')} ({len(x)} items)")
        return "; ".join(parts)

    @property
    def labelled(self) -> bool:
        return self.y_test is not None

    @property
    def trainable(self) -> bool:
        return self.x_train is not None and self.y_train is not None

    @cached_property
    def digest(self) -> str:
        """A short fingerprint of the arrays, for cache keys (hashed once: a Dataset's arrays never change;
        the dashboard asks for it dozens of times per rerun)."""
        hasher = hashlib.sha256(self.name.encode())
        for array in (self.x_test, self.y_test, self.x_val, self.y_val, self.x_train, self.y_train,
                      self.x_calibration):
            hasher.update(b"-" if array is None else np.ascontiguousarray(array).tobytes())
        return hasher.hexdigest()[:16]

    @property
    def calibration_split(self) -> str:
        """The split calibration reads: 'calibration' when the data has one, else 'train', else 'val'."""
        return next(split for split in ("calibration", "train", "val") if getattr(self, f"x_{split}") is not None)

    def calibration(self, count: int = 128) -> np.ndarray:
        """The first ``count`` inputs of the calibration split, for what needs activations."""
        return getattr(self, f"x_{self.calibration_split}")[:count]

    def calibration_labels(self, count: int = 128) -> np.ndarray | None:
        """The labels of ``calibration(count)``: train's when calibration reads a labelled train split, else None."""
        return self.y_train[:count] if self.calibration_split == "train" and self.y_train is not None else None

    def batches(self, split: str = "train", batch_size: int = 64):
        """Yield ``(x, y)`` numpy batches of a split in order; y is None when unlabelled."""
        x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        if x is None:
            raise PrunelabError(f"the data '{self.name}' has no {split} split")
        for start in range(0, len(x), batch_size):
            yield x[start:start + batch_size], None if y is None else y[start:start + batch_size]

    @property
    def integer(self) -> bool:
        """True for token ids (int64 inputs), False for float32 inputs."""
        return bool(np.issubdtype(self.x_test.dtype, np.integer))

    def head(self, count: int) -> Dataset:
        """The first ``count`` test items (everything else kept), for measuring big models within bounds."""
        if count >= len(self.x_test):
            return self
        y_test = None if self.y_test is None else self.y_test[:count]
        return replace(self, name=f"{self.name}, first {count} of {len(self.x_test)} items",
                       x_test=self.x_test[:count], y_test=y_test)

    def as_float(self) -> Dataset:
        """The same data with float32 inputs (integer features fed to a float model)."""
        def cast(x):
            return None if x is None else x.astype(np.float32)
        return replace(self, x_test=cast(self.x_test), x_val=cast(self.x_val), x_train=cast(self.x_train),
                       x_calibration=cast(self.x_calibration))

    def check_shape(self, input_shape: tuple[int, ...]) -> None:
        """Raise when the per-item shape of the inputs differs from the model's input shape."""
        expected = tuple(input_shape[1:])
        if tuple(self.x_test.shape[1:]) != expected:
            kind = "sequences of length" if self.integer and len(expected) == 1 else "items of shape"
            found = self.x_test.shape[1] if kind.startswith("sequences") else tuple(self.x_test.shape[1:])
            wanted = expected[0] if kind.startswith("sequences") else expected
            raise PrunelabError(f"data '{self.name}' has {kind} {found}, the model takes {wanted}")


def _split(count: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(count)
    train_end, val_end = int(0.6 * count), int(0.8 * count)
    return order[:train_end], order[train_end:val_end], order[val_end:]


def write_digits_file(path: Path = DIGITS_FILE) -> None:
    """Write scikit-learn's bundled digits (8x8, values 0..16) with the fixed seeded split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.uint8)  # (1797, 8, 8)
    labels = digits.target.astype(np.int64)
    train, val, test = _split(len(labels))
    np.savez_compressed(path, x_train=images[train], y_train=labels[train], x_val=images[val],
                        y_val=labels[val], x_test=images[test], y_test=labels[test])


def _upsample(images: np.ndarray, size: int) -> np.ndarray:
    tensor = torch.from_numpy(images)
    return F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False).numpy()


def digits(size: int = 8) -> Dataset:
    """The digits splits as float32 ``(n, 1, size, size)`` in [0, 1]; size 8 or 32 (upsampled)."""
    if not DIGITS_FILE.exists():
        raise PrunelabError(f"the digits data file is missing: {DIGITS_FILE}")
    arrays = {}
    with np.load(DIGITS_FILE) as stored:
        for split in ("train", "val", "test"):
            images = stored[f"x_{split}"].astype(np.float32)[:, None] / 16.0  # (n, 1, 8, 8)
            arrays[f"x_{split}"] = images if size == 8 else _upsample(images, size)
            arrays[f"y_{split}"] = stored[f"y_{split}"].astype(np.int64)
    origin = {split: f"the digits {split} split" for split in ("train", "val", "test")}
    return Dataset(name=f"digits-{size}x{size}", origin=origin, **arrays)


def load_npz(path: str | Path, input_shape: tuple[int, ...] | None = None, pad_id: int = 0) -> Dataset:
    """Read a user's ``.npz`` with ``x`` (and ``y``; optionally ``x_train``/``y_train``, ``x_val``/``y_val``,
    and ``x_calibration``: unlabelled items that calibration reads instead of train or val).

    Token models may name their inputs ``input_ids`` (with an optional ``attention_mask``, and
    ``input_ids_val``/``input_ids_train``/``input_ids_calibration`` for the other splits): integer inputs
    stay int64, floats become float32. Positions a mask leaves out are set to ``pad_id``, because prunelab's token
    models derive the mask from the padding.
    Tuning (sensitivity, allocation, BatchNorm re-estimation, calibration) never sees the items
    accuracy is measured on: without ``x_val``, a seeded VAL_SHARE of ``x_train`` is held out as val
    (and not trained on); without either, VAL_SHARE of ``x`` is held out as val and the test split is
    the rest. ``Dataset.describe_splits`` says which happened.
    Raises PrunelabError naming the file for a missing, unreadable or ill-shaped file.
    """
    path = Path(path)
    if not path.is_file():
        raise PrunelabError(f"data file not found: {path}")
    check_npz(path)  # sizes and types from the headers, before anything is decompressed
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except Exception as error:  # numpy raises many kinds for a corrupt archive
        raise PrunelabError(f"cannot read data file {path}: {error.__class__.__name__}") from None
    arrays = _token_arrays(arrays, path, pad_id)
    if "x" not in arrays:
        raise PrunelabError(f"data file {path} has no array named 'x' or 'input_ids' "
                            f"(found: {', '.join(arrays) or 'none'})")
    x = _inputs(arrays["x"], path, "x")
    y = _labels(arrays.get("y"), len(x), path, "y")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape[1:]):
        raise PrunelabError(f"data file {path}: x has items of shape {tuple(x.shape[1:])}, "
                            f"the model takes {tuple(input_shape[1:])}")
    x_train, x_calibration = (_like_x(arrays.get(key), x, path, key) for key in ("x_train", "x_calibration"))
    y_train = _labels(arrays.get("y_train"), 0 if x_train is None else len(x_train), path, "y_train")
    origin = {"test": "x", "train": "x_train", "calibration": "x_calibration"}
    if "x_val" in arrays:
        x_val = _inputs(arrays["x_val"], path, "x_val")
        y_val = _labels(arrays.get("y_val"), len(x_val), path, "y_val")
        origin["val"] = "x_val"
    elif x_train is not None and len(x_train) >= 2:
        keep, held = hold_out(len(x_train))
        x_val, y_val = x_train[held], None if y_train is None else y_train[held]
        x_train, y_train = x_train[keep], None if y_train is None else y_train[keep]
        origin.update(val=f"{VAL_SHARE:.0%} of x_train held out", train="the rest of x_train")
    elif len(x) >= 2:
        keep, held = hold_out(len(x))
        x_val, y_val = x[held], None if y is None else y[held]
        x, y = x[keep], None if y is None else y[keep]
        origin.update(val=f"{VAL_SHARE:.0%} of x held out (no x_val or x_train in the file)",
                      test=f"the other {1 - VAL_SHARE:.0%} of x")
    else:
        raise PrunelabError(f"data file {path} has {len(x)} item(s) and no x_val or x_train: add x_val/y_val "
                            f"(or x_train/y_train) so tuning never uses the test items")
    return Dataset(name=path.name, x_test=x, y_test=y, x_val=x_val, y_val=y_val,
                   x_train=x_train, y_train=y_train, origin=origin, x_calibration=x_calibration)


def _like_x(values, x: np.ndarray, path: Path, key: str) -> np.ndarray | None:
    """An optional split's inputs, whose items must be shaped like ``x``'s (None when the file has none)."""
    if values is None:
        return None
    values = _inputs(values, path, key)
    if values.shape[1:] != x.shape[1:]:
        raise PrunelabError(f"data file {path}: {key} items {values.shape[1:]} differ from x items {x.shape[1:]}")
    return values


VAL_SHARE = 0.2


def hold_out(count: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Seeded indices ``(kept, held out)`` holding out VAL_SHARE of ``count`` items (at least one) as val."""
    order = np.random.default_rng(seed).permutation(count)
    held = max(1, int(round(VAL_SHARE * count)))
    return np.sort(order[held:]), np.sort(order[:held])


def _inputs(values, path: Path, key: str) -> np.ndarray:
    """Integer inputs (token ids) as int64, anything else as float32."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.integer) and values.ndim == 2:  # (items, tokens)
        return values.astype(np.int64)
    if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.number):
        raise PrunelabError(f"data file {path}: '{key}' must hold numbers, got {values.dtype}")
    return values.astype(np.float32)


def _token_arrays(arrays: dict, path: Path, pad_id: int) -> dict:
    """Map ``input_ids[_split]`` to ``x[_split]``, applying ``attention_mask[_split]`` as padding."""
    arrays = dict(arrays)
    for suffix in ("", "_val", "_train", "_calibration"):
        ids, mask = arrays.pop(f"input_ids{suffix}", None), arrays.pop(f"attention_mask{suffix}", None)
        if ids is None:
            if mask is not None:
                raise PrunelabError(f"data file {path}: 'attention_mask{suffix}' without 'input_ids{suffix}'")
            continue
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer) or ids.ndim != 2:
            raise PrunelabError(f"data file {path}: 'input_ids{suffix}' must be integers shaped (items, tokens), "
                                f"got {ids.dtype} {ids.shape}")
        if mask is not None:
            ids = _apply_mask(ids.astype(np.int64), np.asarray(mask), path, suffix, pad_id)
        arrays[f"x{suffix}"] = ids
    return arrays


def _apply_mask(ids: np.ndarray, mask: np.ndarray, path: Path, suffix: str, pad_id: int) -> np.ndarray:
    if mask.shape != ids.shape:
        raise PrunelabError(f"data file {path}: 'attention_mask{suffix}' has shape {mask.shape}, "
                            f"'input_ids{suffix}' {ids.shape}")
    attended_padding = int(((mask != 0) & (ids == pad_id)).sum())
    if attended_padding:
        raise PrunelabError(f"data file {path}: 'attention_mask{suffix}' marks {attended_padding} padding tokens "
                            f"(id {pad_id}) as real; prunelab derives the mask from the padding")
    return np.where(mask != 0, ids, pad_id)


def _labels(labels, count: int, path: Path, key: str) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != count:
        raise PrunelabError(f"data file {path}: '{key}' must be a 1-D array of {count} labels, "
                            f"got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise PrunelabError(f"data file {path}: '{key}' must hold integer class labels, got {labels.dtype}")
    return labels.astype(np.int64)


def random_data(input_shape: tuple[int, ...], count: int = 256, seed: int = 0,
                vocab_size: int | None = None, pad_id: int = 0) -> Dataset:
    """Seeded random inputs with no labels: prunelab then reports agreement, never accuracy.

    With ``vocab_size`` the inputs are int64 token ids drawn from the vocabulary (never ``pad_id``,
    so every position counts); otherwise standard normal float32 values.
    """
    item_shape = tuple(input_shape[1:])
    count = random_count(item_shape, count)  # fewer items for big inputs; refuses one that cannot fit
    rng = np.random.default_rng(seed)
    if vocab_size is not None:
        x = rng.integers(0, vocab_size - 1, size=(count, *item_shape), dtype=np.int64)
        x[x >= pad_id] += 1  # skip the padding id
    else:
        x = np.empty((count, *item_shape), dtype=np.float32)
        step = max(1, 2**24 // max(1, 8 * x[0].size))  # float64 draws in ~16 MB slices: the same values, bounded memory
        for start in range(0, count, step):
            x[start:start + step] = rng.standard_normal((min(step, count - start), *item_shape))
    half = count // 2
    origin = {"test": f"seeded random inputs (seed {seed})", "val": "other seeded random inputs"}
    return Dataset(name=f"random-{seed}", x_test=x[half:], y_test=None, x_val=x[:half], y_val=None, synthetic=True,
                   origin=origin)
