"""Evaluation and calibration data: the built-in digits splits, a user's .npz, or random inputs."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
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
    """Arrays for evaluation (test), selection and allocation (val) and calibration or training (train).

    Inputs are float32 shaped ``(n, *input_shape[1:])``; labels are int64 or ``None`` when the
    data has no labels, in which case prunelab reports agreement with the dense model instead of
    accuracy.
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

    def describe_splits(self) -> str:
        """Where each split's items come from, e.g. 'test: x (300 items); val: 20% of x_train held out (96 items)'."""
        parts = []
        for split in ("test", "val", "train"):
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

    @property
    def digest(self) -> str:
        """A short fingerprint of the arrays, for cache keys."""
        hasher = hashlib.sha256(self.name.encode())
        for array in (self.x_test, self.y_test, self.x_val, self.y_val, self.x_train, self.y_train):
            hasher.update(b"-" if array is None else np.ascontiguousarray(array).tobytes())
        return hasher.hexdigest()[:16]

    def calibration(self, count: int = 128) -> np.ndarray:
        """A few inputs for criteria and quantization that need activations: train first, else val."""
        source = self.x_train if self.x_train is not None else self.x_val
        return source[:count]

    def batches(self, split: str = "train", batch_size: int = 64):
        """Yield ``(x, y)`` numpy batches of a split in order; y is None when unlabelled."""
        x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        if x is None:
            raise PrunelabError(f"the data '{self.name}' has no {split} split")
        for start in range(0, len(x), batch_size):
            yield x[start:start + batch_size], None if y is None else y[start:start + batch_size]

    def check_shape(self, input_shape: tuple[int, ...]) -> None:
        """Raise when the per-item shape of the inputs differs from the model's input shape."""
        expected = tuple(input_shape[1:])
        if tuple(self.x_test.shape[1:]) != expected:
            raise PrunelabError(
                f"data '{self.name}' has items of shape {tuple(self.x_test.shape[1:])}, "
                f"the model takes {expected}")


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
    origin = {split: f"the digits {split} split (seeded 60/20/20)" for split in ("train", "val", "test")}
    return Dataset(name=f"digits-{size}x{size}", origin=origin, **arrays)


def load_npz(path: str | Path, input_shape: tuple[int, ...] | None = None) -> Dataset:
    """Read a user's ``.npz`` with ``x`` (and ``y``; optionally ``x_train``/``y_train``, ``x_val``/``y_val``).

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
    if "x" not in arrays:
        raise PrunelabError(f"data file {path} has no array named 'x' (found: {', '.join(arrays) or 'none'})")
    x = np.asarray(arrays["x"], dtype=np.float32)
    y = _labels(arrays.get("y"), len(x), path, "y")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape[1:]):
        raise PrunelabError(f"data file {path}: x has items of shape {tuple(x.shape[1:])}, "
                            f"the model takes {tuple(input_shape[1:])}")
    x_train = arrays.get("x_train")
    y_train = _labels(arrays.get("y_train"), 0 if x_train is None else len(x_train), path, "y_train")
    if x_train is not None:
        x_train = np.asarray(x_train, dtype=np.float32)
        if x_train.shape[1:] != x.shape[1:]:
            raise PrunelabError(f"data file {path}: x_train items {x_train.shape[1:]} differ from x items "
                                f"{x.shape[1:]}")
    origin = {"test": "x", "train": "x_train"}
    if "x_val" in arrays:
        x_val = np.asarray(arrays["x_val"], dtype=np.float32)
        y_val = _labels(arrays.get("y_val"), len(x_val), path, "y_val")
        origin["val"] = "x_val"
    elif x_train is not None and len(x_train) >= 2:
        keep, held = _hold_out(len(x_train))
        x_val, y_val = x_train[held], None if y_train is None else y_train[held]
        x_train, y_train = x_train[keep], None if y_train is None else y_train[keep]
        origin.update(val=f"{VAL_SHARE:.0%} of x_train held out", train="the rest of x_train")
    elif len(x) >= 2:
        keep, held = _hold_out(len(x))
        x_val, y_val = x[held], None if y is None else y[held]
        x, y = x[keep], None if y is None else y[keep]
        origin.update(val=f"{VAL_SHARE:.0%} of x held out (no x_val or x_train in the file)",
                      test=f"the other {1 - VAL_SHARE:.0%} of x")
    else:
        raise PrunelabError(f"data file {path} has {len(x)} item(s) and no x_val or x_train: add x_val/y_val "
                            f"(or x_train/y_train) so tuning never uses the test items")
    return Dataset(name=path.name, x_test=x, y_test=y, x_val=x_val, y_val=y_val,
                   x_train=x_train, y_train=y_train, origin=origin)


VAL_SHARE = 0.2


def _hold_out(count: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Seeded indices ``(kept, held out)`` holding out VAL_SHARE of ``count`` items (at least one) as val."""
    order = np.random.default_rng(seed).permutation(count)
    held = max(1, int(round(VAL_SHARE * count)))
    return np.sort(order[held:]), np.sort(order[:held])


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


def random_data(input_shape: tuple[int, ...], count: int = 256, seed: int = 0) -> Dataset:
    """Seeded random inputs with no labels: prunelab then reports agreement, never accuracy."""
    item_shape = tuple(input_shape[1:])
    count = random_count(item_shape, count)  # fewer items for big inputs; refuses one that cannot fit
    rng = np.random.default_rng(seed)
    x = np.empty((count, *item_shape), dtype=np.float32)
    step = max(1, 2**24 // max(1, 8 * x[0].size))  # float64 draws in ~16 MB slices: the same values, bounded memory
    for start in range(0, count, step):
        x[start:start + step] = rng.standard_normal((min(step, count - start), *item_shape))
    half = count // 2
    origin = {"test": f"seeded random inputs (seed {seed})", "val": "other seeded random inputs"}
    return Dataset(name=f"random-{seed}", x_test=x[half:], y_test=None, x_val=x[:half], y_val=None, synthetic=True,
                   origin=origin)
