"""Hugging Face directories and token models: loading, integer inputs through ONNX Runtime, text data,
fidelity without labels, seeded factories and MACs that count attention."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from core.deploy.evaluate import evaluate
from core.errors import PrunelabError
from core.inspect import count_macs
from core.prune.plan import Plan
from core.sources import load_model
from tests.fixtures.hf_models import TINY_BERT

transformers = pytest.importorskip("transformers")
FIXTURES = "tests/fixtures/hf_models.py"


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny BertModel saved with save_pretrained (config.json + model.safetensors)."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-bert")
    transformers.BertModel(transformers.BertConfig(**TINY_BERT)).save_pretrained(directory)
    return directory


def test_hf_directory_is_a_token_model_with_int64_inputs(bert_dir):
    handle = load_model(str(bert_dir))
    assert handle.source == "huggingface" and handle.output_kind == "embedding"
    assert handle.input_shape == (1, 64)  # the model's 64 positions bound the default length
    assert handle.data.x_test.dtype == np.int64
    assert handle.data.x_test.min() >= 1 and handle.data.x_test.max() < TINY_BERT["vocab_size"]  # never padding


def test_int64_inputs_run_in_onnx_runtime_as_in_torch(bert_dir):
    report = evaluate(load_model(str(bert_dir), input_shape="1,16"), Plan(sparsity=0.5))
    dense, pruned = report["baseline"], report["pruned"]
    assert dense["max_abs_diff"] < 1e-3 and dense["parity_ok"] and pruned["max_abs_diff"] < 1e-3
    assert dense["label"] == "cosine" and dense["cosine"] == 1.0 and dense["neighbour_agreement"] == 1.0
    assert 0.0 < pruned["cosine_p5"] <= pruned["cosine"] < 1.0 and 0.0 <= pruned["neighbour_agreement"] <= 1.0


def test_embedding_fidelity_by_hand():
    from core.deploy.fidelity import embedding_fidelity

    dense = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])  # nearest neighbours 1, 0, 3, 2
    close = np.array([[1.0, 0.0], [0.9, 0.1], [0.1, 0.9], [0.0, 1.0]])  # items 2 and 3 swap: still each other's
    result = embedding_fidelity(close, dense)
    turned = 0.9 / np.hypot(0.1, 0.9)
    assert result["cosine"] == pytest.approx((2 + 2 * turned) / 4) and result["neighbour_agreement"] == 1.0
    assert result["cosine_p5"] == pytest.approx(turned)
    moved = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.1, 0.9]])  # item 1 joins 2 and 3: neighbours 3, 2, 1, 1
    assert embedding_fidelity(moved, dense)["neighbour_agreement"] == 0.0
    assert embedding_fidelity(dense, None) == {"cosine": 1.0, "cosine_p5": 1.0, "neighbour_agreement": 1.0}


def test_token_npz_applies_the_attention_mask_as_padding(bert_dir, tmp_path):
    ids = np.random.default_rng(0).integers(1, 100, size=(6, 12))
    mask = np.ones_like(ids)
    mask[:, 8:] = 0
    np.savez(tmp_path / "tokens.npz", input_ids=ids, attention_mask=mask, input_ids_val=ids[:2])
    handle = load_model(str(bert_dir), data=tmp_path / "tokens.npz")
    assert handle.input_shape == (1, 12) and handle.data.x_test.dtype == np.int64
    assert (handle.data.x_test[:, 8:] == 0).all() and (handle.data.x_test[:, :8] == ids[:, :8]).all()
    # padding beyond the mask does not change the embedding: the mask is derived from it
    with torch.no_grad():
        full = handle.module(torch.from_numpy(handle.data.x_test))
        short = handle.module(torch.from_numpy(np.ascontiguousarray(handle.data.x_test[:, :8])))
    assert torch.allclose(full, short, atol=1e-5)


def test_a_mask_that_attends_padding_is_refused(bert_dir, tmp_path):
    ids = np.zeros((2, 4), dtype=np.int64)
    np.savez(tmp_path / "bad.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    with pytest.raises(PrunelabError, match="padding"):
        load_model(str(bert_dir), data=tmp_path / "bad.npz")


def test_text_file_is_tokenized_with_the_models_tokenizer(tmp_path):
    from core.zoo.registry import minilm_directory

    source = minilm_directory()
    directory = tmp_path / "bert-with-tokenizer"
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**{**TINY_BERT, "vocab_size": 30522})).save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, directory / name)
    text = tmp_path / "sentences.txt"
    text.write_text("The cat sat.\n\nA dog barked.\nRain fell.\nThe sun set.\n"
                    "A dog barked at the postman all morning long and then slept.\n")
    handle = load_model(str(directory), data=text, input_shape="1,10")
    ids = np.concatenate([handle.data.x_test, handle.data.x_val])
    assert ids.shape == (5, 10) and ids.dtype == np.int64 and len(handle.data.x_val) == 1  # blank line skipped
    assert (ids[:, 0] == 101).all()  # [CLS] first: the model's own tokenizer
    padded = (ids == 0).any(axis=1)
    assert padded.sum() == 4 and (ids[~padded][0, -1] == 102)  # short ones padded, the long one truncated


def test_text_data_needs_a_tokenizer(bert_dir, tmp_path):
    text = tmp_path / "sentences.txt"
    text.write_text("one\ntwo\n")
    with pytest.raises(PrunelabError, match="tokenizer"):
        load_model(str(bert_dir), data=text)


def test_float_data_for_a_token_model_is_a_dtype_problem(bert_dir, tmp_path):
    np.savez(tmp_path / "floats.npz", x=np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32))
    with pytest.raises(PrunelabError, match="dtype float32") as raised:
        load_model(str(bert_dir), data=tmp_path / "floats.npz")
    assert "integer token ids" in str(raised.value) and "shape" not in str(raised.value)


def test_integer_features_still_feed_a_float_model(tmp_path):
    np.savez(tmp_path / "ints.npz", x=np.arange(32).reshape(4, 8), y=np.array([0, 1, 2, 3]))
    handle = load_model(f"{FIXTURES}:random_linear", data=tmp_path / "ints.npz")
    assert handle.data.x_test.dtype == np.float32


def test_a_classifier_factory_is_adapted_and_keeps_top1_agreement():
    handle = load_model(f"{FIXTURES}:bert_classifier", input_shape="1,8")
    assert handle.source == "factory" and handle.output_kind == "logits"
    report = evaluate(handle, Plan(sparsity=0.5))
    pruned = report["pruned"]
    assert pruned["label"] == "agreement" and 0.0 <= pruned["agreement"] <= 1.0
    assert pruned["output_error"] > 0 and pruned["kl"] >= 0
    assert report["baseline"]["output_error"] == 0.0


def test_random_factory_is_the_same_model_on_every_load():
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = load_model(f"{FIXTURES}:random_linear", input_shape="1,8").module
    second = load_model(f"{FIXTURES}:random_linear", input_shape="1,8").module
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is left alone


def test_constant_class_is_said_plainly():
    report = evaluate(load_model(f"{FIXTURES}:one_class", input_shape="1,8"), Plan(sparsity=0.5))
    assert report["baseline"]["classes_predicted"] == 1
    assert any("same class for every input" in note for note in report["notes"])
    varied = evaluate(load_model(f"{FIXTURES}:random_linear", input_shape="1,8"), Plan(sparsity=0.5))
    assert varied["baseline"]["classes_predicted"] > 1
    assert not any("same class for every input" in note for note in varied["notes"])


def test_macs_include_attention_matmuls(bert_dir):
    handle = load_model(str(bert_dir), input_shape="1,16")
    tokens, hidden, ffn, layers = 16, TINY_BERT["hidden_size"], TINY_BERT["intermediate_size"], 2
    projections = 4 * tokens * hidden * hidden          # query, key, value, output
    feed_forward = 2 * tokens * hidden * ffn
    attention = 2 * tokens * tokens * hidden             # Q·K^T and attention·V over all heads
    pooler = hidden * hidden
    expected = layers * (projections + feed_forward + attention) + pooler
    assert count_macs(handle.module, handle.example_input()) == expected


def test_macs_of_multihead_attention_and_sdpa():
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x):
            out = self.attention(x, x, x)[0]
            return nn.functional.scaled_dot_product_attention(out[:, None], out[:, None], out[:, None]).flatten(1)

    tokens = 10
    expected = tokens * 16 * 48 + tokens * 16 * 16 + 2 * tokens * tokens * 16 + 2 * tokens * tokens * 16
    assert count_macs(Block().eval(), torch.randn(1, tokens, 16)) == expected


def test_vision_factory_from_a_config_class():
    handle = load_model(f"{FIXTURES}:tiny_vit")
    assert handle.input_shape == (1, 3, 32, 32) and handle.output_kind == "logits"
    assert handle.module(handle.example_input(2)).shape == (2, 5)


def test_inspect_table_stays_aligned_with_long_names(bert_dir, capsys):
    from core.cli import main

    assert main(["inspect", str(bert_dir), "--input-shape", "1,8"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if " linear " in line]
    assert len({line.index(" linear ") for line in lines}) == 1  # the kind column starts at one place


@pytest.mark.slow
def test_minilm_demo_reports_embedding_fidelity():
    handle = load_model("minilm", input_shape="1,16")  # the sentences, truncated to 16 tokens for speed
    assert handle.data.x_test.shape == (240, 16) and handle.data.x_val.shape == (60, 16)  # 20% held out as val
    assert handle.data.x_test.dtype == np.int64
    assert handle.module(handle.example_input(1)).shape == (1, 384)
    dense = evaluate(handle)["baseline"]
    assert dense["cosine"] == 1.0 and dense["cosine_p5"] == 1.0 and dense["neighbour_agreement"] == 1.0
    assert dense["max_abs_diff"] < 1e-3


@pytest.mark.slow
def test_minilm_calibrates_on_its_own_sentences_none_a_paraphrase_of_a_measured_one():
    from benchmarks.minilm_heads import embeddings
    from core.prune.calibration_items import TOKENS, calibration

    handle = load_model("minilm", input_shape="1,32")
    data = handle.data
    assert data.calibration_split == "calibration" and len(data.x_calibration) == 240
    assert "calibration: 240 other sentences of calibration_sentences.txt" in data.describe_splits()
    example = handle.example_input(1)
    measured = torch.nn.functional.normalize(torch.as_tensor(embeddings(handle.module, example, np.concatenate(
        [data.x_test, data.x_val]))), dim=1)
    calibrating = torch.nn.functional.normalize(torch.as_tensor(embeddings(handle.module, example,
                                                                           data.x_calibration)), dim=1)
    nearest = (calibrating @ measured.T).max(1).values
    pairs = (measured @ measured.T).fill_diagonal_(0).max(1).values  # the file's paraphrases of each other
    assert float(nearest.max()) < 0.7 < float(pairs.median()), (float(nearest.max()), float(pairs.median()))
    job = type("Job", (), {"data": data, "pad_id": handle.pad_id})()
    cal = calibration(job, "obs")  # short sentences: more than 64 of them, to reach TOKENS real positions
    assert len(cal.inputs) == 240 and int(cal.positions.sum()) < TOKENS


def test_sensitivity_and_allocation_score_embeddings_by_cosine(bert_dir):
    from core.search.allocate import allocate
    from core.search.sensitivity import sensitivity

    handle = load_model(str(bert_dir), input_shape="1,8")
    result = sensitivity(handle, levels=(0.0, 0.5, 0.9))
    assert result["label"] == "cosine" and result["baseline_accuracy"] == pytest.approx(1.0)
    worst = min(point["accuracy"] for layer in result["layers"] for point in layer["curve"])
    assert 0.0 < worst < 1.0  # pruning a layer moves the embeddings away from the dense ones
    plan = allocate(handle, target_sparsity=0.5, sensitivity=result)
    targets = dict(plan.layers)
    assert targets and all(0.0 <= value <= 0.99 for value in targets.values()) and max(targets.values()) > 0


def test_minilm_is_listed_with_the_demos(capsys):
    from core.cli import main

    assert main(["models", "--json"]) == 0
    import json

    cards = {card["name"]: card for card in json.loads(capsys.readouterr().out)}
    assert cards["minilm"]["input_shape"] == [1, 64] and cards["minilm"]["params"] == 22_713_216


def test_big_models_are_measured_within_bounds():
    from core.deploy.baseline import Settings, evaluation_items
    from core.deploy.progressive import scoring_batch

    vit_b = 17_563_061_760  # MACs of a ViT-B/16 at 224x224, attention included
    assert evaluation_items(vit_b, 128) == 14 and evaluation_items(2_444_544, 360) == 360
    assert scoring_batch(vit_b) == 1 and scoring_batch(4.5e9) == 4 and scoring_batch(2_444_544) == 512
    full = Settings(live=False)
    assert full.timing(vit_b)["min_runs"] == 8 and full.timing(2_444_544)["min_runs"] == 30
    assert full.parity_items(vit_b) == 5 and full.parity_items(2_444_544) == 64
