"""Hostile token lengths, text data and Hugging Face directories: one clear line, bounded memory, no code run.

Each case of the third round (issue 26, cases 1-4 and the project's own sentences file) is made
here small on disk and run through the ``cli`` fixture, which reports the command's peak memory.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.fixtures.hf_models import TINY_BERT
from tests.test_hostile import LIMIT_MIB, refused

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory) -> Path:
    """A tiny BertModel (64 positions) with minilm's tokenizer files: a token model that reads .txt data."""
    import transformers

    from core.zoo.registry import minilm_directory

    directory = tmp_path_factory.mktemp("hf") / "tiny-bert"
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**{**TINY_BERT, "vocab_size": 30522})).save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_directory() / name, directory / name)
    return directory


# ---------------------------------------------------------------- 1. token lengths

def test_token_length_beyond_the_models_positions_is_refused_before_tokenizing(cli, tokenized):
    line = refused(cli("evaluate", tokenized, "--input-shape", "1,1000000"), "at most 64 tokens", "1,000,000")
    assert "max_position_embeddings" in line


def test_token_length_limit_is_the_models_own():
    from core.errors import PrunelabError
    from core.limits import TOKENS, check_tokens

    check_tokens(64, 64, "tiny")
    with pytest.raises(PrunelabError, match="at most 64 tokens"):
        check_tokens(65, 64, "tiny")
    with pytest.raises(PrunelabError, match=f"at most {TOKENS} tokens .prunelab's limit"):
        check_tokens(TOKENS + 1, None, "a model without positions")


def test_token_length_check_also_guards_text_data(cli, tokenized, tmp_path):
    text = tmp_path / "two.txt"
    text.write_text("one sentence\nanother one\n")
    refused(cli("inspect", tokenized, "--data", text, "--input-shape", "1,1000000"), "at most 64 tokens")


@pytest.mark.slow
def test_minilm_reads_its_own_sentences(cli):
    result = cli("inspect", "minilm", "--data", ROOT / "assets" / "sentences.txt")
    assert result["code"] == 0, result["stderr"]
    assert result["above_mib"] < LIMIT_MIB


# ---------------------------------------------------------------- 2. text data

def test_text_file_over_the_size_limit_is_refused_before_reading(cli, tokenized, tmp_path):
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as stream:
        stream.truncate(100 * 2**20)  # sparse: 100 MiB on paper, nothing on disk
    line = refused(cli("inspect", tokenized, "--data", huge), "huge.txt", "100 MiB", "PRUNELAB_MAX_TEXT_MB")
    assert "16 MiB" in line


def test_text_size_limit_can_be_lowered_and_raised(cli, tokenized, tmp_path):
    text = tmp_path / "few.txt"
    text.write_text("the cat sat\nthe dog ran\nrain fell\n")
    refused(cli("inspect", tokenized, "--data", text, env={"PRUNELAB_MAX_TEXT_MB": "0.00001"}), "few.txt", "limit")
    assert cli("inspect", tokenized, "--data", text, env={"PRUNELAB_MAX_TEXT_MB": "1"})["code"] == 0


def test_text_file_of_too_many_lines_is_refused(cli, tokenized, tmp_path):
    many = tmp_path / "many.txt"
    many.write_text("ab\n" * 100_001)  # 300 KB
    refused(cli("inspect", tokenized, "--data", many), "many.txt", "100,000 lines")


def test_a_very_long_line_is_cut_before_tokenizing(cli, tokenized, tmp_path):
    long = tmp_path / "long.txt"
    long.write_text("word " * 2_000_000 + "\nshort line\n")  # one 10 MB line
    result = cli("inspect", tokenized, "--data", long, "--json")
    assert result["code"] == 0, result["stderr"]
    assert result["above_mib"] < 300, result


def test_text_tokens_beyond_the_data_limit_are_refused(monkeypatch):
    from core.errors import PrunelabError
    from core.text_data import load_text

    def never(sentences, seq_len):
        raise AssertionError("tokenized despite the limit")

    path = ROOT / "assets" / "sentences.txt"
    monkeypatch.setenv("PRUNELAB_MAX_DATA_GB", "0.0001")
    with pytest.raises(PrunelabError, match="PRUNELAB_MAX_DATA_GB"):
        load_text(path, never, 512)
    monkeypatch.setenv("PRUNELAB_MAX_TEXT_MB", "lots")
    with pytest.raises(PrunelabError, match="PRUNELAB_MAX_TEXT_MB must be a positive number of MiB"):
        load_text(path, never, 64)


# ---------------------------------------------------------------- 3. a config that asks for too much

def bert_directory(path: Path, **sizes) -> Path:
    """A BERT directory of a config.json (a few hundred bytes) and a 68-byte model.safetensors."""
    from safetensors.torch import save_file

    path.mkdir()
    (path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert",
                                                  "vocab_size": 30522, **sizes}))
    save_file({"x": torch.zeros(1)}, path / "model.safetensors")
    return path


def test_config_asking_for_billions_of_parameters_is_refused_before_allocating(cli, tmp_path):
    big = bert_directory(tmp_path / "big", hidden_size=4096, num_hidden_layers=24, intermediate_size=16384,
                         num_attention_heads=32)
    assert (big / "config.json").stat().st_size < 600
    line = refused(cli("inspect", big), "4,977,029,120 parameters", "PRUNELAB_MAX_MODEL_GB")
    assert "18.5 GiB" in line
    line = refused(cli("inspect", big, env={"PRUNELAB_MAX_MODEL_GB": "100"}), "do not belong together")
    assert "68 bytes" in line


def test_config_disagreeing_with_its_weights_is_refused(cli, tmp_path):
    medium = bert_directory(tmp_path / "medium", hidden_size=256, num_hidden_layers=4, intermediate_size=1024,
                            num_attention_heads=4)
    refused(cli("inspect", medium), "parameters but the weights files hold 68 bytes")


def test_config_json_that_is_not_an_object_is_one_line(cli, tmp_path):
    directory = bert_directory(tmp_path / "odd")
    (directory / "config.json").write_text("[5]")
    refused(cli("inspect", directory), "config.json", "not a JSON object")


# ---------------------------------------------------------------- 4. remote code

def evil_directory(path: Path, model_type: str, marker: Path) -> Path:
    """A directory whose config (and tokenizer config) name custom code that would write ``marker``."""
    path.mkdir()
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    for name in ("configuration_evil.py", "modeling_evil.py", "tokenization_evil.py"):
        (path / name).write_text(code)
    auto_map = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}
    (path / "config.json").write_text(json.dumps({"model_type": model_type, "auto_map": auto_map,
                                                  "architectures": ["EvilModel"], **TINY_BERT}))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}}))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["evil", "bert"])
def test_a_directory_asking_for_remote_code_never_runs_it(tmp_path, model_type):
    """A real process with "y" on stdin: nothing asks, nothing runs, nothing is copied to the modules cache."""
    import transformers

    marker = tmp_path / "EVIL_RAN"
    directory = evil_directory(tmp_path / "evil", model_type, marker)
    if model_type == "bert":  # a known type: transformers' own class, the weights of a tiny BERT
        transformers.BertModel(transformers.BertConfig(**TINY_BERT)).save_pretrained(tmp_path / "weights")
        shutil.copy(tmp_path / "weights" / "model.safetensors", directory)
    else:
        (directory / "model.safetensors").write_bytes(b"")  # refused before the weights are read
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf-home")}
    result = subprocess.run([sys.executable, "-m", "core.cli", "inspect", str(directory)], input="y\ny\n",
                            capture_output=True, text=True, env=environment, timeout=120)
    assert not marker.exists(), result.stderr
    assert not list((tmp_path / "hf-home").rglob("*evil*"))
    assert "[y/N]" not in result.stdout + result.stderr
    if model_type == "evil":
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [result.stderr.strip()]
        assert "asks for custom code" in result.stderr and "never runs code" in result.stderr
    else:
        assert result.returncode == 0, result.stderr


def test_a_modules_json_that_is_not_a_list_is_one_line(cli, tokenized, tmp_path):
    directory = tmp_path / "odd-modules"
    shutil.copytree(tokenized, directory)
    (directory / "modules.json").write_text("5")
    refused(cli("inspect", directory), "modules.json must be a JSON list", "got int")


# ---------------------------------------------------------------- 5. lazy layers

LAZY = """
from torch import nn

def lazy():
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(32), nn.ReLU(), nn.LazyLinear(10))

def lazy_conv():
    return nn.Sequential(nn.LazyConv2d(8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
"""


@pytest.fixture
def lazy_file(tmp_path) -> Path:
    path = tmp_path / "lazy.py"
    path.write_text(LAZY)
    return path


def test_lazy_layers_are_sized_by_one_forward_on_the_given_shape(lazy_file):
    from core.prune.plan import Plan
    from core.sources.load import load_model

    handle = load_model(f"{lazy_file}:lazy_conv", input_shape="1,1,8,8")
    linear = handle.module[3]
    assert type(linear) is torch.nn.Linear and linear.weight.shape == (10, 8 * 6 * 6)
    again = load_model(f"{lazy_file}:lazy_conv", input_shape="1,1,8,8")
    assert torch.equal(again.module[3].weight, linear.weight)  # seeded: the same model on every load
    from core.prune.engine import apply_plan

    pruned = apply_plan(handle, Plan(granularity="channel", sparsity=0.5)).module
    assert pruned[0].out_channels == 4 and pruned(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_lazy_layers_without_a_shape_ask_for_one(cli, lazy_file):
    refused(cli("evaluate", f"{lazy_file}:lazy"), "--input-shape", "lazy layers take their sizes")


def test_lazy_layers_on_an_input_too_small_are_one_line(cli, lazy_file):
    refused(cli("evaluate", f"{lazy_file}:lazy_conv", "--input-shape", "1,1,2,2"), "lazy layers", "(1, 1, 2, 2)")
