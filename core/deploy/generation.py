"""Text generation the way language-model users read speed: a KV-cache ONNX graph, prefill and decode.

``export_cached`` exports a causal LM (prunelab's TokenModel around a ``*ForCausalLM``) as one
ONNX graph that takes ``input_ids``, ``attention_mask`` and every layer's past keys and values
(``past.{i}.key`` / ``past.{i}.value``, shaped ``(batch, kv_heads, past, head_dim)``) and returns
the next-token logits of the last position and the present keys and values (``present.{i}.*``):
batch, sequence and past length are dynamic, and each layer keeps its own head count, so a model
whose heads and FFN widths differ per layer exports as it is. transformers 5 keeps its cache in a
``DynamicCache`` object; the wrapper builds one from the flat tensors inside the graph.

``generation_times`` runs that graph in ONNX Runtime: a prefill of the prompt (one call over
PROMPT_TOKENS tokens with an empty past), then NEW_TOKENS decode calls of one token each, feeding
the presents back, for two sessions in alternation (dense and pruned), so their speed is compared
under the same load. An INT8 model's graph is quantized dynamically (``int8_cached``) and paired
against the dense FP32 graph. ``greedy`` is the same loop returning the tokens chosen.
"""
from __future__ import annotations

import inspect
import io
import time
import warnings

import numpy as np
import torch
from torch import nn

from core.deploy import measure
from core.deploy.export import OPSET, strip_reparametrizations
from core.errors import PrunelabError, error_line

PROMPT_TOKENS = 128  # at most; fewer when the model's input is shorter
NEW_TOKENS = 32      # decode steps timed per round (fewer when the model's positions run out)
MIN_ROUNDS, MIN_SECONDS = 20, 2.0          # evaluate: rounds of prefill + decode per model, in alternation
LIVE_ROUNDS, LIVE_SECONDS = 4, 0.2         # the dashboard's live loop


class CachedStep(nn.Module):
    """``(input_ids, attention_mask, *past) -> (next-token logits, *present)`` around a Hugging Face causal LM."""

    def __init__(self, model: nn.Module, layers: int):
        super().__init__()
        self.model = model
        self.layers = layers
        parameters = inspect.signature(model.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.positions = "position_ids" in parameters

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor):
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(past[2 * index], past[2 * index + 1]) for index in range(self.layers)])
        extra = {self.cache_argument: cache}
        if self.positions:  # the new tokens' positions follow the past ones
            extra["position_ids"] = (attention_mask.cumsum(-1) - 1)[:, -input_ids.shape[1]:]
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, **extra)
        present = getattr(output, "past_key_values", None) or getattr(output, "cache", None)
        flat = [tensor for layer in present.layers for tensor in (layer.keys, layer.values)]
        return (output.logits[:, -1], *flat)


def _decoder(module: nn.Module) -> nn.Module:
    """The Hugging Face causal LM inside prunelab's TokenModel (or the module itself)."""
    return getattr(module, "model", module)


def _example_past(model: nn.Module) -> list[torch.Tensor]:
    """Real past keys and values of two tokens: every layer's own head count and head size."""
    with torch.no_grad():
        output = model(input_ids=torch.ones((1, 2), dtype=torch.int64), use_cache=True)
    present = getattr(output, "past_key_values", None) or getattr(output, "cache", None)
    return [tensor.clone() for layer in present.layers for tensor in (layer.keys, layer.values)]


def export_cached(module: nn.Module) -> bytes:
    """The KV-cache ONNX graph of a causal LM (see the module docstring); PrunelabError when it cannot export."""
    model = _decoder(strip_reparametrizations(module)).eval()
    try:
        past = _example_past(model)
        step = CachedStep(model, len(past) // 2).eval()
        names = [f"{kind}.{index}.{part}" for kind in ("past",) for index in range(len(past) // 2)
                 for part in ("key", "value")]
        presents = [name.replace("past.", "present.") for name in names]
        axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"},
                "logits": {0: "batch"}}
        axes.update({name: {0: "batch", 2: "past"} for name in names})
        axes.update({name: {0: "batch", 2: "total"} for name in presents})
        ids, mask = torch.ones((1, 3), dtype=torch.int64), torch.ones((1, 5), dtype=torch.int64)
        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(step, (ids, mask, *past), buffer, dynamo=False, opset_version=OPSET,
                              input_names=["input_ids", "attention_mask", *names],
                              output_names=["logits", *presents], dynamic_axes=axes, do_constant_folding=False)
    except Exception as error:  # exporters raise many kinds
        raise PrunelabError(f"cannot export the language model with a KV cache: {error_line(error)}") from None
    return buffer.getvalue()


class Generator:
    """One KV-cache session: prefill a prompt, then decode one token at a time, greedily."""

    def __init__(self, model_bytes: bytes, threads: int = 2):
        self.session, _ = measure.create_session(model_bytes, threads)
        self.past = [(value.name, value.shape) for value in self.session.get_inputs()[2:]]

    def _empty(self, batch: int) -> dict:
        return {name: np.zeros((batch, shape[1], 0, shape[3]), dtype=np.float32) for name, shape in self.past}

    def prefill(self, prompt: np.ndarray) -> tuple[np.ndarray, dict]:
        """Logits after ``prompt`` (batch, tokens) and the cache, as ONNX Runtime feeds."""
        feed = {"input_ids": prompt, "attention_mask": np.ones_like(prompt), **self._empty(len(prompt))}
        outputs = self.session.run(None, feed)
        return outputs[0], {name: value for (name, _), value in zip(self.past, outputs[1:])}

    def step(self, token: np.ndarray, cache: dict, total: int) -> tuple[np.ndarray, dict]:
        """Logits after one more token per row (batch, 1), with ``total`` tokens seen including it."""
        feed = {"input_ids": token, "attention_mask": np.ones((len(token), total), dtype=np.int64), **cache}
        outputs = self.session.run(None, feed)
        return outputs[0], {name: value for (name, _), value in zip(self.past, outputs[1:])}

    def greedy(self, prompt: np.ndarray, new_tokens: int) -> list[int]:
        """The ``new_tokens`` most likely next tokens after ``prompt`` (1-D ids), one at a time."""
        logits, cache = self.prefill(np.asarray(prompt, dtype=np.int64)[None])
        chosen = []
        for index in range(new_tokens):
            token = int(logits[0].argmax())
            chosen.append(token)
            if index + 1 < new_tokens:
                logits, cache = self.step(np.array([[token]], dtype=np.int64), cache, len(prompt) + index + 1)
        return chosen

    def timed_round(self, prompt: np.ndarray, new_tokens: int) -> tuple[float, float]:
        """(prefill ms, mean decode ms per token) of one prompt and ``new_tokens`` greedy steps."""
        started = time.perf_counter()
        logits, cache = self.prefill(prompt)
        prefilled = time.perf_counter()
        for index in range(new_tokens):
            token = logits.argmax(-1).astype(np.int64)[:, None]  # (batch, 1)
            logits, cache = self.step(token, cache, prompt.shape[1] + index + 1)
        decoded = time.perf_counter()
        return (prefilled - started) * 1000.0, (decoded - prefilled) * 1000.0 / max(1, new_tokens)


def prompt_ids(tokenizer, prompt: str, module: nn.Module, new_tokens: int) -> np.ndarray:
    """``prompt`` as int64 ids, its start cut so prompt and ``new_tokens`` fit the model's positions.

    Raises PrunelabError for a prompt that gives no tokens.
    """
    from core.sources.huggingface import max_tokens

    ids = np.asarray(tokenizer(str(prompt), add_special_tokens=False)["input_ids"], dtype=np.int64)
    if len(ids) == 0:
        raise PrunelabError("the prompt is empty: type a few words for the models to continue")
    limit = max_tokens(module)
    return ids if limit is None else ids[-max(1, limit - new_tokens):]


def decode(tokenizer, ids: list[int]) -> str:
    """Token ids back to text, special tokens shown as they are (an end of document is worth seeing)."""
    return tokenizer.decode(ids, skip_special_tokens=False)


def new_tokens_for(module: nn.Module, prompt_tokens: int) -> int:
    """NEW_TOKENS, fewer when the model's positions end before the prompt plus NEW_TOKENS."""
    from core.sources.huggingface import max_tokens

    limit = max_tokens(module)
    return NEW_TOKENS if limit is None else max(1, min(NEW_TOKENS, limit - prompt_tokens))


def prompt_for(x: np.ndarray, batch_size: int) -> np.ndarray:
    """The first PROMPT_TOKENS tokens of the first test window, one row per item of the batch."""
    return np.ascontiguousarray(np.repeat(x[:1, :PROMPT_TOKENS], batch_size, axis=0)).astype(np.int64)


def paired_rounds(generators: list[Generator], prompt: np.ndarray, new_tokens: int, live: bool) -> list[dict]:
    """Prefill and decode times of each generator, rounds run in alternation (order turned every round).

    Returns per generator ``{"prefill": ms array, "decode": ms-per-token array}``, one entry per round.
    """
    rounds, seconds = (LIVE_ROUNDS, LIVE_SECONDS) if live else (MIN_ROUNDS, MIN_SECONDS)
    times = [{"prefill": [], "decode": []} for _ in generators]
    order = list(range(len(generators)))
    for generator in generators:
        generator.timed_round(prompt, min(2, new_tokens))  # warm-up
    with measure.timing_lock():
        started = time.perf_counter()
        while len(times[0]["prefill"]) < rounds or time.perf_counter() - started < seconds:
            for index in order:
                prefill, decode = generators[index].timed_round(prompt, new_tokens)
                times[index]["prefill"].append(prefill)
                times[index]["decode"].append(decode)
            order.reverse()
    return [{key: np.asarray(values) for key, values in record.items()} for record in times]


def summary(record: dict, prompt: np.ndarray, new_tokens: int) -> dict:
    """Medians of one generator's rounds in people's units: ms and tokens per second."""
    prefill, decode = float(np.median(record["prefill"])), float(np.median(record["decode"]))
    batch, tokens = prompt.shape
    return {"prompt_tokens": int(tokens), "new_tokens": int(new_tokens), "batch": int(batch),
            "prefill_ms": prefill, "prefill_tokens_per_s": batch * tokens * 1000.0 / prefill,
            "decode_ms_per_token": decode, "decode_tokens_per_s": batch * 1000.0 / decode,
            "rounds": int(len(record["prefill"]))}


def dense_generation(generator: Generator, twin: Generator, prompt: np.ndarray, new_tokens: int, live: bool) -> dict:
    """The dense model's figures, timed in alternation with a twin session (as every pruned model is timed)."""
    own, _ = paired_rounds([generator, twin], prompt, new_tokens, live)
    return summary(own, prompt, new_tokens)


def compared_generation(dense: Generator, pruned: Generator, prompt: np.ndarray, new_tokens: int,
                        live: bool) -> dict:
    """The pruned model's figures with ``speedup`` of prefill and decode over the dense model, paired, and
    ``dense``: the dense model's figures from the same rounds (what the speedup compares against)."""
    dense_times, pruned_times = paired_rounds([dense, pruned], prompt, new_tokens, live)
    figures = summary(pruned_times, prompt, new_tokens)
    figures["dense"] = summary(dense_times, prompt, new_tokens)
    figures["speedup"] = {part: measure.speedup(dense_times[part], pruned_times[part])
                          for part in ("prefill", "decode")}
    return figures


INT8_MODE = "int8-dynamic"  # a KV-cache graph has many inputs, so static calibration does not apply to it


def int8_cached(module: nn.Module) -> bytes:
    """The KV-cache graph of ``module`` with INT8 weights (dynamic quantization, as for every transformer)."""
    from core.deploy.quantize import quantize_model

    return quantize_model(export_cached(module), None, INT8_MODE)
