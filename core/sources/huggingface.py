"""Hugging Face models: a directory with ``config.json`` and weights, or a ``PreTrainedModel`` from a factory.

Loaded offline with ``transformers`` (the ``hf`` extra): ``local_files_only``, ``HF_HUB_OFFLINE=1``,
weights from ``model.safetensors`` or, failing that, ``torch.load(weights_only=True)``. The model
is wrapped so prunelab can feed it one tensor and get one tensor back:

- token models take int64 ``input_ids`` shaped ``(batch, tokens)``; the attention mask is derived
  from the padding (ids equal to the pad id are masked), so the exported graph has one integer input;
- image models take float ``pixel_values``;
- a causal language model (``*ForCausalLM``, GPT-2's ``LMHeadModel``) returns its next-token logits
  for every position, flattened to ``(batch, tokens * vocabulary)``, and is fed no attention mask
  (causal attention already keeps padding after the text from touching it);
- a model with a task head returns its ``logits``; an encoder returns an embedding: the pooling
  its sentence-transformers files ask for (mean over real tokens by default, L2-normalized when a
  Normalize module follows), or its pooler output / mean over tokens for image encoders.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.errors import PrunelabError
from core.sources.hf_checks import check_parameters, read_config, refuse_remote_code

DEFAULT_TOKENS = 128  # sequence length when neither --input-shape nor the data says


@dataclass(frozen=True)
class Pooling:
    """How an encoder's token states become one embedding."""

    mode: str = "mean"        # mean | cls
    normalize: bool = False


class TokenModel(nn.Module):
    """``input_ids (batch, tokens) int64 -> logits or embedding (batch, features)``."""

    def __init__(self, model: nn.Module, pad_id: int, pooling: Pooling, causal: bool = False):
        super().__init__()
        self.model = model
        self.pad_id = int(pad_id)
        self.pooling = pooling
        self.causal = causal

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.causal:  # an all-ones mask: without one, transformers inspects position ids with aten::diff,
            # which the TorchScript-based ONNX exporter cannot translate
            logits = self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                use_cache=False).logits  # (batch, tokens, vocabulary)
            return logits.reshape(logits.shape[0], -1)
        mask = (input_ids != self.pad_id).long()
        output = self.model(input_ids=input_ids, attention_mask=mask)
        logits = getattr(output, "logits", None)
        if logits is not None:
            return logits.reshape(logits.shape[0], -1)
        states = output.last_hidden_state  # (batch, tokens, hidden)
        if self.pooling.mode == "cls":
            embedding = states[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(states.dtype)
            embedding = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        if self.pooling.normalize:
            embedding = nn.functional.normalize(embedding, dim=-1)
        return embedding


class ImageModel(nn.Module):
    """``pixel_values (batch, channels, height, width) -> logits or embedding (batch, features)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        output = self.model(pixel_values=pixel_values)
        logits = getattr(output, "logits", None)
        if logits is not None:
            return logits.reshape(logits.shape[0], -1)
        pooled = getattr(output, "pooler_output", None)
        if pooled is None:
            pooled = output.last_hidden_state.mean(1)
        return pooled.reshape(pooled.shape[0], -1)


@dataclass
class Adapted:
    """A wrapped Hugging Face model and what prunelab needs to feed it."""

    module: nn.Module
    output_kind: str                  # logits | embedding | causal
    input_shape: tuple[int, ...] | None
    vocab_size: int | None = None
    pad_id: int = 0
    encode: object = None             # (sentences, seq_len) -> int64 ids, when a tokenizer is there
    tokenizer: object = None          # the directory's tokenizer (text streams, prompts), or None


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise PrunelabError("Hugging Face models need the transformers package: "
                            "pip install 'prunelab[hf]'") from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def is_pretrained(model) -> bool:
    """True for a transformers ``PreTrainedModel`` (without importing transformers when it is not loaded)."""
    return any(cls.__name__ == "PreTrainedModel" and cls.__module__.startswith("transformers")
               for cls in type(model).__mro__)


def is_hf_directory(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def load_directory(path: Path) -> Adapted:
    """The model in a Hugging Face directory, wrapped (see the module docstring).

    Raises PrunelabError when transformers is missing, the config is unknown, or no weights file
    (``model.safetensors`` or ``pytorch_model.bin``) is there.
    """
    transformers = _transformers()
    safetensors = any(path.glob("*.safetensors"))
    if not safetensors and not any(path.glob("*.bin")):
        raise PrunelabError(f"{path} has a config.json but no weights (model.safetensors or pytorch_model.bin)")
    refuse_remote_code(transformers, read_config(path), path)
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        model_class = _model_class(transformers, config)
        check_parameters(_builder(model_class, config), path)  # before a single weight is allocated
        model = model_class.from_pretrained(str(path), local_files_only=True, use_safetensors=safetensors,
                                            weights_only=True, trust_remote_code=False, dtype=torch.float32)
    except PrunelabError:
        raise
    except Exception as error:  # transformers raises many kinds for a broken directory
        raise PrunelabError(f"cannot load the Hugging Face model in {path}: {_first_line(error)}") from None
    return adapt(model, directory=path)


def _model_class(transformers, config):
    """The class ``config.architectures`` names (a transformers model class only), else AutoModel."""
    for name in config.architectures or []:
        model_class = getattr(transformers, str(name), None)
        if isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel):
            return model_class
    return transformers.AutoModel


def _builder(model_class, config):
    """A function building ``model_class`` from ``config`` without initializing weights (Auto classes too).

    ``_from_config`` skips the weight initialization (50x faster on the meta device than the constructor).
    """
    if hasattr(model_class, "from_config"):
        return lambda: model_class.from_config(config, trust_remote_code=False)
    return lambda: model_class._from_config(config)


def adapt(model: nn.Module, directory: Path | None = None) -> Adapted:
    """Wrap a ``PreTrainedModel`` so it takes one tensor; read the tokenizer from ``directory`` if there."""
    config = model.config
    model.eval()
    if getattr(model, "main_input_name", "input_ids") == "pixel_values":
        size = getattr(config, "image_size", 224)
        size = size if isinstance(size, int) else 224
        channels = getattr(config, "num_channels", 3)
        kind = "logits" if _has_head(model) else "embedding"
        return Adapted(ImageModel(model).eval(), kind, (1, channels, size, size))
    pad_id = getattr(config, "pad_token_id", None)
    pad_id = 0 if pad_id is None else int(pad_id)
    causal = is_causal_lm(model)
    kind = "causal" if causal else "logits" if _has_head(model) else "embedding"
    tokenizer = _tokenizer(directory) if directory is not None else None
    encode = None if tokenizer is None else _encoder(tokenizer)
    return Adapted(TokenModel(model, pad_id, _pooling(directory), causal).eval(), kind, None,
                   vocab_size=int(config.vocab_size), pad_id=pad_id, encode=encode, tokenizer=tokenizer)


def is_causal_lm(model: nn.Module) -> bool:
    """True for a decoder language model: ``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ``GPT2LMHeadModel``..."""
    return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def _has_head(model: nn.Module) -> bool:
    """``BertForSequenceClassification`` has a task head and returns logits; ``BertModel`` does not."""
    return "For" in type(model).__name__


def _pooling(directory: Path | None) -> Pooling:
    """Mean pooling unless the sentence-transformers files say CLS; normalized when they say Normalize."""
    if directory is None:
        return Pooling()
    mode, normalize = "mean", False
    pooling = directory / "1_Pooling" / "config.json"
    modules = directory / "modules.json"
    try:
        if pooling.is_file() and json.loads(pooling.read_text()).get("pooling_mode_cls_token"):
            mode = "cls"
        if modules.is_file():
            entries = json.loads(modules.read_text())
            if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
                raise PrunelabError(f"{modules} must be a JSON list of sentence-transformers modules (objects "
                                    f"with a 'type'), got {type(entries).__name__}")
            normalize = any(str(entry.get("type", "")).endswith("Normalize") for entry in entries)
    except (ValueError, AttributeError, UnicodeDecodeError):
        pass  # unreadable sentence-transformers files: plain mean pooling
    return Pooling(mode, normalize)


def _tokenizer(directory: Path):
    """The directory's tokenizer, or None without one (token ids must then come from an .npz)."""
    if not any((directory / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        return None
    transformers = _transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True,
                                                          trust_remote_code=False)
    except Exception:  # a partial tokenizer
        return None


def _encoder(tokenizer):
    """``encode(sentences, seq_len) -> int64 ids``, padded and truncated with ``tokenizer``."""
    def encode(sentences: list[str], seq_len: int) -> np.ndarray:
        encoded = tokenizer(list(sentences), padding="max_length", truncation=True, max_length=int(seq_len),
                            return_tensors="np")
        ids = encoded["input_ids"].astype(np.int64)
        return np.where(encoded["attention_mask"] != 0, ids, tokenizer.pad_token_id or 0)

    return encode


def max_tokens(model: nn.Module) -> int | None:
    """The longest sequence the model's positions allow (``max_position_embeddings``), None when it says none."""
    config = getattr(getattr(model, "model", model), "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def stream_tokenizer(tokenizer):
    """``tokenize(text) -> int64 ids`` of a whole document stream, no special tokens added, or None."""
    if tokenizer is None:
        return None

    def tokenize(text: str) -> np.ndarray:
        return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)

    return tokenize


def token_length(model: nn.Module, requested: int | None = None) -> int:
    """The sequence length to feed: ``requested``, else DEFAULT_TOKENS within the model's positions."""
    if requested is not None:
        return int(requested)
    return min(DEFAULT_TOKENS, max_tokens(model) or DEFAULT_TOKENS)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else error.__class__.__name__
