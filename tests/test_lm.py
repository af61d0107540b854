"""Causal language models: the built-in tinylm, text split by position, perplexity, next-token fidelity."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from core.deploy.evaluate import LiveEvaluator, evaluate  # noqa: E402
from core.deploy.fidelity import next_token_quality  # noqa: E402
from core.errors import PrunelabError  # noqa: E402
from core.files import ASSETS  # noqa: E402
from core.prune.plan import Plan  # noqa: E402
from core.sources import load_model  # noqa: E402
from core.sources.huggingface import stream_tokenizer  # noqa: E402
from core.text_data import load_documents, split_stream, windows, with_stride  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

CAUSAL = ROOT / "tests" / "fixtures" / "causal_lms.py"


def test_stream_is_split_by_position_into_windows():
    ids = np.arange(1000)
    parts = split_stream(ids)
    assert parts["train"][-1] + 1 == parts["val"][0] and parts["val"][-1] + 1 == parts["test"][0]
    assert [len(part) for part in parts.values()] == [800, 100, 100]
    chunks = windows(parts["test"], 32)
    assert chunks.shape == (3, 32) and np.array_equal(chunks.ravel(), np.arange(900, 996))


def test_tinylm_text_windows_are_the_tail_of_its_corpus(tinylm):
    assert tinylm.output_kind == "causal" and tinylm.input_shape == (1, 128)
    stream = stream_tokenizer(tinylm.tokenizer)((ASSETS / "tinylm" / "corpus.txt").read_text(encoding="utf-8"))
    test = split_stream(stream)["test"]
    assert np.array_equal(tinylm.data.x_test.ravel(), test[:tinylm.data.x_test.size])
    assert tinylm.data.x_train.shape[1] == 128 and not tinylm.data.synthetic


def test_perplexity_of_uniform_logits_is_the_vocabulary():
    ids = np.random.default_rng(0).integers(0, 50, size=(3, 8))
    logits = np.zeros((3, 8 * 50), dtype=np.float32)
    figures = next_token_quality(logits, ids, None, text=True)
    assert figures["perplexity"] == pytest.approx(50.0)
    assert figures["context"] == 8 and figures["stride"] == 8 and figures["label"] == "perplexity"
    moved = logits.copy().reshape(3, 8, 50)
    moved[:, :, 3] += 5.0  # the pruned model now prefers token 3 everywhere (the dense one: token 0)
    pruned = next_token_quality(moved.reshape(3, -1), ids, logits, text=True)
    assert pruned["kl"] > 0 and pruned["agreement"] < 1.0


@pytest.mark.slow
def test_tinylm_dense_perplexity_matches_its_card_and_pruning_raises_it(tinylm):
    card = json.loads((ASSETS / "models.json").read_text())["tinylm"]
    report = evaluate(tinylm, Plan(granularity="channel", criterion="l2", sparsity=0.25))
    dense, pruned = report["baseline"], report["pruned"]
    assert dense["perplexity"] == pytest.approx(card["test_perplexity"], rel=1e-3)
    assert dense["context"] == 128 and dense["stride"] == 128
    assert pruned["perplexity"] > dense["perplexity"] and 0 < pruned["agreement"] < 1 and pruned["kl"] > 0
    assert pruned["macs"] < dense["macs"] and pruned["parity_ok"]


@pytest.mark.parametrize("name", ["llama", "opt"] + [pytest.param(name, marks=pytest.mark.slow)
                                                     for name in ("qwen2", "mistral", "gemma", "phi")])
def test_factory_lms_without_tokenizer_get_random_ids_and_no_perplexity(name):
    handle = load_model(f"{CAUSAL}:{name}", input_shape="1,16")
    assert handle.output_kind == "causal" and handle.data.synthetic
    report = LiveEvaluator(handle, threads=1).measure(Plan(granularity="unstructured", sparsity=0.5))
    assert report["baseline"]["perplexity"] is None and report["pruned"]["perplexity"] is None
    assert report["pruned"]["kl"] > 0 and report["pruned"]["agreement"] <= 1.0
    assert any("perplexity is not available" in note for note in report["notes"])


def test_short_text_names_the_split_that_got_no_window(tmp_path, tinylm):
    short = tmp_path / "short.txt"
    short.write_text("def f(): return 1\n" * 20)
    with pytest.raises(PrunelabError, match="too few for a 128-token window"):
        load_documents(short, stream_tokenizer(tinylm.tokenizer), 128)


def _sliding_window_perplexity(model, stream, context: int, stride: int) -> float:
    """Hugging Face's sliding-window perplexity, computed directly in torch: each window scores only the
    tokens the window before it did not."""
    total, count, previous_end = 0.0, 0, 0
    for begin in range(0, len(stream), stride):
        end = min(begin + context, len(stream))
        window = torch.as_tensor(stream[begin:end])[None]
        with torch.no_grad():
            logits = model(window).double().reshape(1, window.shape[1], -1)  # (1, tokens, vocabulary)
        log_probabilities = torch.log_softmax(logits, -1)[0]
        new = end - previous_end  # the last `new` tokens of the window are scored
        for position in range(max(1, window.shape[1] - new), window.shape[1]):
            total -= float(log_probabilities[position - 1, window[0, position]])
            count += 1
        previous_end = end
        if end == len(stream):
            break
    return float(np.exp(total / count))


def test_stride_scores_each_token_once_as_hugging_face_does(tinylm):
    context, stride = 128, 48
    stream = tinylm.data.x_test.ravel()[:context + 4 * stride]
    recut = with_stride(tinylm.data, stride)
    assert recut.stride == stride and recut.x_val is tinylm.data.x_val
    ids = recut.x_test[:5]
    assert np.array_equal(ids, windows(stream, context, stride))
    with torch.no_grad():
        logits = tinylm.module(torch.from_numpy(ids)).float().numpy().reshape(5, -1)
    figures = next_token_quality(logits, ids, None, text=True, stride=stride)
    assert figures["stride"] == stride and figures["context"] == context
    assert figures["perplexity"] == pytest.approx(_sliding_window_perplexity(tinylm.module, stream, context, stride),
                                                  rel=1e-6)
    apart = next_token_quality(logits[:1], ids[:1], None, text=True)  # one window: the same tokens either way
    assert apart["perplexity"] == pytest.approx(_sliding_window_perplexity(tinylm.module, stream[:context], context,
                                                                           context), rel=1e-6)


def test_stride_is_refused_outside_the_context_or_for_other_models(tinylm):
    with pytest.raises(PrunelabError, match="stride 129 must be between 1 and the context length 128"):
        with_stride(tinylm.data, 129)
    with pytest.raises(PrunelabError, match="applies to causal language models"):
        load_model("digits-mlp", stride=4)


def test_next_token_objective_is_the_hugging_face_causal_loss(tinylm):
    from core.train.loop import next_token

    ids = torch.from_numpy(tinylm.data.x_train[:3])
    with torch.no_grad():
        expected = tinylm.module.model(input_ids=ids, labels=ids).loss
        assert float(next_token(tinylm.module, ids, None, None)) == pytest.approx(float(expected), rel=1e-5)


def test_next_token_recovery_trains_on_the_text_with_pruned_weights_held():
    import dataclasses

    from core.data import Dataset
    from core.train.methods import recover

    handle = load_model(f"{CAUSAL}:llama", input_shape="1,16")
    vocabulary = handle.module.model.config.vocab_size
    text = (np.arange(12 * 16) * 7 % vocabulary).reshape(12, 16)  # a fixed pattern a few steps can learn
    data = Dataset("pattern", text, None, text[:2], None, x_train=text)
    handle = dataclasses.replace(handle, data=data, _digest=None)
    seen, steps = [], []
    result = recover(handle, Plan(sparsity=0.5), "next_token", epochs=3, lr=1e-2, on_epoch=seen.append,
                     on_step=lambda step, loss: steps.append(step))
    figures = result.details["perplexity"]
    assert [row["epoch"] for row in seen] == [1, 2, 3] and all(row["val_perplexity"] > 1 for row in seen)
    assert steps == [1, 2, 3]  # one batch of 12 windows an epoch: the Recover page's progress counts these
    assert figures["recovered"] < 0.9 * figures["one_shot"]  # scored on the text it trained on
    layers = dict(result.module.named_modules())
    for name, keep in result.masks.items():
        assert not layers[name].weight[~keep].any()  # pruned weights stayed zero through AdamW
    assert result.summary()["method"] == "next_token"


def test_next_token_recovery_needs_a_language_model_and_finetune_points_to_it(tinylm, mlp):
    from core.train.methods import recover

    with pytest.raises(PrunelabError, match="not a causal language model"):
        recover(mlp, Plan(sparsity=0.5), "next_token", epochs=1)
    with pytest.raises(PrunelabError, match="method 'next_token'"):
        recover(tinylm, Plan(sparsity=0.5), "finetune", epochs=1)
