"""The prunelab command: models, inspect, and one-line errors with exit code 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from core.cli import main
from tests.conftest import ROOT, USER_MODELS


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_models_json_lists_the_demos_with_accuracy(capsys):
    code, out, _ = run_cli(capsys, "models", "--json")
    cards = {card["name"]: card for card in json.loads(out)}
    assert code == 0 and set(cards) >= {"digits-mlp", "digits-cnn", "digits-resnet"}
    assert cards["digits-cnn"]["test_accuracy"] >= 0.97
    assert cards["digits-resnet"]["input_shape"] == [1, 1, 32, 32]


def test_inspect_json_on_unseen_architecture(capsys):
    code, out, _ = run_cli(capsys, "inspect", f"{USER_MODELS}:factory", "--input-shape", "1,3,16,16", "--json")
    report = json.loads(out)
    assert code == 0 and report["totals"]["layers"] == len(report["layers"]) == 10
    assert {"name", "kind", "shape", "params", "nonzero", "sparsity", "macs", "stats"} <= set(report["layers"][0])


def test_inspect_table(capsys):
    code, out, _ = run_cli(capsys, "inspect", "digits-resnet")
    assert code == 0 and "layer3.branch_deep.0" in out and "MACs per item" in out


@pytest.mark.parametrize("argv", [
    ["inspect", "no-such-model"],
    ["inspect", "missing/file.onnx"],
    ["inspect", f"{USER_MODELS}:broken", "--input-shape", "1,3,16,16"],
    ["inspect", "digits-cnn", "--input-shape", "1,3,8,8"],
    ["inspect", "digits-cnn", "--data", "missing.npz"],
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("prunelab: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_console_script_exits_2_without_traceback(tmp_path):
    corrupt = tmp_path / "model.pt"
    corrupt.write_bytes(b"\x80\x04garbage")
    result = subprocess.run([sys.executable, "-m", "core.cli.__main__", "inspect", str(corrupt)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr and str(corrupt) in result.stderr


def test_a_reader_that_stops_early_gets_no_traceback(monkeypatch):
    # `prunelab inspect ... --json | head -1`: the reading end of stdout is already closed
    read_end, write_end = os.pipe()
    os.close(read_end)
    stdout = os.fdopen(write_end, "w", buffering=1)
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        assert main(["inspect", "digits-mlp", "--json"]) == 1
    finally:
        stdout.close()
