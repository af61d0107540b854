"""Text as Datasets of token ids: sentences for an encoder (``load_text``: one per line, a seeded share
held out as val) and documents for a causal language model (``load_documents``: one token stream cut by
position into train, val and test, each into context-length windows; ``with_stride`` re-cuts the test
windows for sliding-window perplexity). Bounded before anything large is made (core.limits)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from core.data import VAL_SHARE, Dataset, hold_out
from core.errors import PrunelabError
from core.limits import CHARS_PER_TOKEN, TEXT_LINES, check_text_lines, check_text_size

TEXT_CHUNK = 1024  # sentences tokenized at once, so the tokenizer's own arrays stay small


def load_text(path: str | Path, encode, seq_len: int) -> Dataset:
    """Read a ``.txt`` with one sentence per line (blank lines skipped) and tokenize it with ``encode``.

    ``encode(sentences, seq_len)`` returns int64 ids shaped ``(n, seq_len)``, padded and truncated.
    A seeded VAL_SHARE of the sentences is held out as val, the rest is the test split.
    Bounded before anything large is made: the file by ``text_limit()`` (PRUNELAB_MAX_TEXT_MB), the
    sentences by TEXT_LINES and the token ids by ``data_limit()``; a line is cut to CHARS_PER_TOKEN
    characters per token before tokenizing (the tokenizer truncates to ``seq_len`` tokens anyway).
    """
    path = Path(path)
    if not path.is_file():
        raise PrunelabError(f"data file not found: {path}")
    if encode is None:
        raise PrunelabError(f"text data {path.name} needs a model with a tokenizer (a Hugging Face directory "
                            f"with its tokenizer files, or a text built-in); pass token ids in an .npz instead")
    ids = _encoded(path, encode, seq_len)
    keep, held = hold_out(len(ids))
    origin = {"test": f"{len(keep)} sentences of {path.name}", "val": f"{VAL_SHARE:.0%} of the sentences held out"}
    return Dataset(name=path.name, x_test=ids[keep], y_test=None, x_val=ids[held], y_val=None, origin=origin)


def with_calibration_text(data: Dataset, path: Path, encode, seq_len: int) -> Dataset:
    """``data`` with the sentences of ``path`` (one per line) as its calibration split."""
    ids = _encoded(path, encode, seq_len)
    return replace(data, x_calibration=ids,
                   origin={**data.origin, "calibration": f"{len(ids)} other sentences of {path.name}"})


def _encoded(path: Path, encode, seq_len: int) -> np.ndarray:
    """Token ids ``(sentences, seq_len)`` of a bounded ``.txt`` with one sentence per line."""
    sentences = _sentences(path, seq_len)
    return np.concatenate([np.asarray(encode(sentences[start:start + TEXT_CHUNK], seq_len), dtype=np.int64)
                           for start in range(0, len(sentences), TEXT_CHUNK)])


def _sentences(path: Path, seq_len: int) -> list[str]:
    """The non-empty lines of a bounded ``.txt``, each cut to CHARS_PER_TOKEN * seq_len characters."""
    check_text_size(path.stat().st_size, path.name)
    width, sentences = CHARS_PER_TOKEN * max(1, int(seq_len)), []
    try:
        with open(path, encoding="utf-8") as stream:
            for line in stream:  # one line at a time: the file is bounded, its line count is checked as read
                line = line.strip()
                if line:
                    sentences.append(line[:width])
                    if len(sentences) > TEXT_LINES:
                        break
    except (UnicodeDecodeError, OSError) as error:
        raise PrunelabError(f"cannot read text file {path}: {error.__class__.__name__}") from None
    check_text_lines(len(sentences), int(seq_len), path.name)
    if len(sentences) < 2:
        raise PrunelabError(f"text file {path} needs at least two non-empty lines, one sentence each")
    return sentences


TEXT_SHARES = (0.8, 0.1)  # train, then val, then the rest (test): consecutive stretches of the token stream


def split_stream(ids: np.ndarray) -> dict[str, np.ndarray]:
    """A token stream cut by position into train (first 80%), val (next 10%) and test (last 10%).

    Never shuffled: held-out text is text the model has not seen, not sentences from its neighbourhood.
    """
    train_end = int(TEXT_SHARES[0] * len(ids))
    val_end = train_end + int(TEXT_SHARES[1] * len(ids))
    return {"train": ids[:train_end], "val": ids[train_end:val_end], "test": ids[val_end:]}


def windows(ids: np.ndarray, context: int, stride: int | None = None) -> np.ndarray:
    """Windows of ``context`` tokens starting every ``stride`` tokens (None: ``context``, no overlap);
    a tail too short for a whole window is dropped."""
    stride = context if stride is None else stride
    count = (len(ids) - context) // stride + 1 if len(ids) >= context else 0
    starts = np.arange(count)[:, None] * stride + np.arange(context)[None, :]  # (windows, context)
    return np.ascontiguousarray(ids[starts]).astype(np.int64)


def with_stride(data: Dataset, stride: int) -> Dataset:
    """``data`` with its test windows re-cut every ``stride`` tokens, for sliding-window perplexity.

    The test windows are joined back into their token stream (they are consecutive and do not
    overlap) and cut again: each window then scores only the tokens the one before it did not
    (core.deploy.fidelity.next_token_quality). Raises PrunelabError when ``stride`` is outside
    ``1..context`` or the test split already overlaps.
    """
    context = data.x_test.shape[1]
    if not 1 <= int(stride) <= context:
        raise PrunelabError(f"stride {stride} must be between 1 and the context length {context}")
    if data.stride not in (None, context):
        raise PrunelabError(f"the test windows of {data.name} already overlap (stride {data.stride})")
    cut = windows(data.x_test.reshape(-1), context, int(stride))
    origin = {**data.origin, "test": f"{data.origin.get('test', 'the test split')}, re-cut every {stride} tokens"}
    return replace(data, x_test=cut, y_test=None, origin=origin, stride=int(stride))


def load_documents(path: str | Path, tokenize, context: int) -> Dataset:
    """A ``.txt`` of documents for a causal language model, as context-length windows of token ids.

    The whole file is tokenized as one stream by ``tokenize(text) -> ids``, split by position
    (``split_stream``) and each split cut into windows of ``context`` tokens (``windows``).
    Raises PrunelabError when the file is missing, unreadable, has no tokenizer to read it, or is
    too short to give every split a window.
    """
    path = Path(path)
    if not path.is_file():
        raise PrunelabError(f"data file not found: {path}")
    if tokenize is None:
        raise PrunelabError(f"text data {path.name} needs a model with a tokenizer; pass token ids in an .npz instead")
    check_text_size(path.stat().st_size, path.name)
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as error:
        raise PrunelabError(f"cannot read text file {path}: {error.__class__.__name__}") from None
    ids = np.asarray(tokenize(text), dtype=np.int64)
    parts = {split: windows(stream, context) for split, stream in split_stream(ids).items()}
    short = [split for split, items in parts.items() if len(items) == 0]
    if short:
        raise PrunelabError(f"text file {path} gives {len(ids)} tokens: too few for a {context}-token window in the "
                            f"{', '.join(short)} split (needs about {int(context / 0.1)} tokens)")
    origin = {split: f"{name} of {path.name}'s {len(ids)} tokens, {len(parts[split])} windows of {context}"
              for split, name in (("train", "the first 80%"), ("val", "the next 10%"), ("test", "the last 10%"))}
    return Dataset(name=path.name, x_test=parts["test"], y_test=None, x_val=parts["val"], y_val=None,
                   x_train=parts["train"], origin=origin)
