"""tinylm: a small Llama (grouped-query attention) trained here on the Python documentation's topic texts.

    python -m core.zoo.tinylm [--steps N]

The corpus is ``pydoc_data/topics.py`` from the Python standard library (the help() texts of the
language reference, PSF License, redistributable with attribution): written once to
``assets/tinylm/corpus.txt`` so every Python version reads the same text. The script trains a
byte-level BPE tokenizer on the training stretch of the text (``tokenizers``), then the model
(``transformers``' LlamaForCausalLM) on windows drawn from the same stretch, and writes a Hugging
Face directory (config, fp16 safetensors, tokenizer) that prunelab loads offline like any other.
Deterministic for a seed on one machine; a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from core.files import ASSETS
from core.text_data import load_documents, split_stream

DIRECTORY = ASSETS / "tinylm"
CORPUS = DIRECTORY / "corpus.txt"
CONTEXT = 128
VOCABULARY = 2048
SPECIAL = ["<|endoftext|>", "<pad>"]  # end of a document (also the start), padding
ARCHITECTURE = dict(vocab_size=VOCABULARY, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                    num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256,
                    tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=1, rope_theta=10000.0)
TRAINING = dict(steps=600, batch=16, learning_rate=3e-3, warmup=30, weight_decay=0.1, seed=0)


def write_corpus(path: Path = CORPUS) -> None:
    """The help() topic texts of the running Python, in topic order, one document after another."""
    from pydoc_data.topics import topics

    documents = [topics[key].strip() for key in sorted(topics)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n<|endoftext|>\n\n".join(documents) + "\n", encoding="utf-8")


def train_tokenizer(text: str, directory: Path) -> None:
    """A byte-level BPE of VOCABULARY tokens on ``text``, saved as tokenizer.json with its config."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCABULARY, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([text], trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIAL[0], "eos_token": SPECIAL[0],
              "unk_token": SPECIAL[0], "pad_token": SPECIAL[1], "model_max_length": ARCHITECTURE[
                  "max_position_embeddings"], "add_bos_token": False, "add_eos_token": False}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _schedule(step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak learning rate."""
    warmup, steps = TRAINING["warmup"], TRAINING["steps"]
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_model(stream: np.ndarray, steps: int):
    """A LlamaForCausalLM trained on random CONTEXT-token windows of ``stream`` (the training stretch)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(TRAINING["seed"])
    model = LlamaForCausalLM(LlamaConfig(**ARCHITECTURE))
    optimizer = torch.optim.AdamW(model.parameters(), lr=TRAINING["learning_rate"],
                                  weight_decay=TRAINING["weight_decay"], betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule)
    generator = np.random.default_rng(TRAINING["seed"])
    tokens = torch.from_numpy(stream.astype(np.int64))
    model.train()
    for step in range(steps):
        starts = generator.integers(0, len(stream) - CONTEXT - 1, size=TRAINING["batch"])
        batch = torch.stack([tokens[start:start + CONTEXT] for start in starts])  # (batch, CONTEXT)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 25 == 0 or step == steps - 1:
            print(f"tinylm step {step + 1}/{steps} loss {loss.item():.3f}", flush=True)
    return model.eval()


def perplexity(model, windows: np.ndarray) -> float:
    """exp of the mean next-token loss over ``windows`` (each scored on its own, stride = context)."""
    losses = []
    with torch.no_grad():
        for start in range(0, len(windows), 32):
            batch = torch.from_numpy(windows[start:start + 32])
            losses.append(model(input_ids=batch, labels=batch).loss.item() * len(batch))
    return math.exp(sum(losses) / len(windows))


def main(argv: list[str] | None = None) -> None:
    from transformers import PreTrainedTokenizerFast

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=TRAINING["steps"])
    args = parser.parse_args(argv)
    if not CORPUS.exists():
        write_corpus()
    text = CORPUS.read_text(encoding="utf-8")
    train_tokenizer(text[:int(0.8 * len(text))], DIRECTORY)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(DIRECTORY))
    ids = np.asarray(tokenizer(text)["input_ids"], dtype=np.int64)
    started = time.perf_counter()
    model = train_model(split_stream(ids)["train"], args.steps)
    model.half().save_pretrained(str(DIRECTORY), safe_serialization=True)
    data = load_documents(CORPUS, lambda body: tokenizer(body)["input_ids"], CONTEXT)
    model = model.float()
    card = {"params": sum(p.numel() for p in model.parameters()), "tokens": int(len(ids)), "context": CONTEXT,
            "stride": CONTEXT, "val_perplexity": perplexity(model, data.x_val),
            "test_perplexity": perplexity(model, data.x_test), "steps": args.steps,
            "train_seconds": round(time.perf_counter() - started, 1),
            "source": "pydoc_data/topics.py (Python documentation topics, PSF License)"}
    cards_path = ASSETS / "models.json"
    cards = json.loads(cards_path.read_text()) if cards_path.exists() else {}
    cards["tinylm"] = card
    cards_path.write_text(json.dumps(cards, indent=2) + "\n")
    print("tinylm", card, flush=True)


if __name__ == "__main__":
    main()
