"""Hostile files and faults: each ends in one clear line and exit 2, in bounded memory, running no code.

Every hostile file is made here, small on disk. The ``cli`` fixture runs each command in its own
process (forked from one that has already imported prunelab) and reads that process's peak
resident size, which must stay under 1 GiB above the importing process's size. The dashboard's
side of the same cases is in tests/test_hostile_dashboard.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

LIMIT_MIB = 1024


def refused(result: dict, *words: str) -> str:
    """The one error line of a refused command, after checking exit 2, bounded memory and the words."""
    lines = [line for line in result["stderr"].splitlines() if not line.startswith("prunelab: ") or "error" in line]
    assert result["code"] == 2, result["stderr"][-2000:]
    assert len(lines) == 1 and lines[0].startswith("prunelab: error: "), result["stderr"][-2000:]
    assert "Traceback" not in result["stderr"] and "Warning" not in result["stderr"]
    for word in words:
        assert word in lines[0], lines[0]
    assert result["peak_mib"] < result["baseline_mib"] + LIMIT_MIB, result
    return lines[0]


def npz_bomb(path: Path, shape: tuple[int, ...], zero_bytes: int = 0) -> Path:
    """An .npz whose array header declares ``shape`` (float32), followed by ``zero_bytes`` of zeros."""
    from numpy.lib import format as npy

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive, \
            archive.open("x.npy", "w", force_zip64=True) as stream:
        npy.write_array_header_1_0(stream, {"descr": "<f4", "fortran_order": False, "shape": shape})
        for _ in range(zero_bytes // 2**22):
            stream.write(bytes(2**22))
    return path


def onnx_with_input(path: Path, shape: tuple[int, ...]) -> Path:
    """A valid ONNX model of a few hundred bytes (pool, flatten, matmul) declaring the input ``shape``."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["y"])]
    weight = helper.make_tensor("w", TensorProto.FLOAT, [shape[1], 2], [1.0] * (2 * shape[1]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], 2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


# ---------------------------------------------------------------- 2. data that expands

def test_npz_declaring_gigabytes_is_refused_from_its_header(cli, tmp_path):
    bomb = npz_bomb(tmp_path / "bomb.npz", (2**20, 1, 32, 32), zero_bytes=2**24)  # declares 4 GiB, holds 16 MiB
    assert bomb.stat().st_size < 100_000
    line = refused(cli("inspect", "digits-mlp", "--data", bomb), "bomb.npz", "4 GiB", "PRUNELAB_MAX_DATA_GB")
    assert "'x'" in line


def test_npz_limit_can_be_raised(cli, tmp_path):
    data = tmp_path / "data.npz"
    np.savez(data, x=np.zeros((20, 1, 8, 8), dtype=np.float32), y=np.zeros(20, dtype=np.int64))
    refused(cli("evaluate", "digits-mlp", "--data", data, env={"PRUNELAB_MAX_DATA_GB": "0.000001"}), "limit")
    assert cli("inspect", "digits-mlp", "--data", data, env={"PRUNELAB_MAX_DATA_GB": "0.01"})["code"] == 0


def test_npz_of_python_objects_is_named(cli, tmp_path):
    data = tmp_path / "objects.npz"
    np.savez(data, x=np.array([{"a": 1}, 2], dtype=object))
    refused(cli("inspect", "digits-mlp", "--data", data), "objects.npz", "'x'", "Python objects")


# ---------------------------------------------------------------- 3. plans that expand

def alias_bomb(field: str) -> str:
    """Ten levels of nine aliases each: under 600 bytes, 9**10 values when expanded."""
    lines = ["a0: &a0 [l, l, l, l, l, l, l, l, l]"] + [
        f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 9)}]" for level in range(1, 10)]
    body = "\n".join(f"  {line}" for line in lines) if field == "layers" else None
    if field == "layers":
        return f"granularity: unstructured\nlayers:\n{body}\n"
    return "granularity: unstructured\n_anchors:\n" + "\n".join(f"  {line}" for line in lines) + f"\n{field}: *a9\n"


@pytest.mark.parametrize("field", ["layers", "ignore", "sparsity"])
def test_yaml_alias_bomb_is_refused_before_it_expands(cli, tmp_path, field):
    plan = tmp_path / "bomb.yaml"
    plan.write_text(alias_bomb(field))
    assert plan.stat().st_size < 1000
    refused(cli("evaluate", "digits-mlp", "--plan", plan), "bomb.yaml", "expands to more than")


def test_yaml_merge_key_bomb_is_refused(cli, tmp_path):
    plan = tmp_path / "merge.yaml"
    plan.write_text("m0: &m0 {k0: 1, k1: 2}\n" + "".join(
        f"m{level}: &m{level} {{<<: [{', '.join([f'*m{level - 1}'] * 9)}]}}\n" for level in range(1, 10)))
    refused(cli("prune", "digits-mlp", "--plan", plan, "--out", tmp_path / "out"), "merge.yaml", "expands")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_deeply_nested_plan_is_refused(cli, tmp_path, suffix):
    plan = tmp_path / f"deep{suffix}"
    nested = "[" * 100_000 + "]" * 100_000
    plan.write_text(f'{{"sparsity": {nested}}}' if suffix == ".json" else f"sparsity: {nested}\n")
    refused(cli("evaluate", "digits-mlp", "--plan", plan), f"deep{suffix}", "nests deeper")


def test_plan_messages_never_print_a_whole_value():
    from core.errors import PrunelabError
    from core.prune.plan import Plan

    with pytest.raises(PrunelabError) as caught:
        Plan(ignore=["x" * 10_000, 3] * 1000)
    assert len(str(caught.value)) < 300


# ---------------------------------------------------------------- 4. declared input shapes

def test_big_declared_input_is_drawn_in_bounded_memory(cli, tmp_path):
    model = onnx_with_input(tmp_path / "big.onnx", (1, 3, 1024, 1024))
    assert model.stat().st_size < 1000
    result = cli("inspect", model)
    assert result["code"] == 0, result["stderr"]
    assert result["peak_mib"] < result["baseline_mib"] + LIMIT_MIB


def test_input_too_big_for_one_item_is_refused_before_allocating(cli, tmp_path):
    model = onnx_with_input(tmp_path / "huge.onnx", (1, 3, 100_000, 100_000))
    refused(cli("inspect", model), "(1, 3, 100000, 100000)", "per item")
    factory = f"{Path(__file__).parent / 'fixtures' / 'user_models.py'}:factory"
    refused(cli("inspect", factory, "--input-shape", "1,3,100000,100000"), "per item")


def test_random_inputs_keep_their_values_and_shrink_for_big_shapes():
    from core.data import random_data

    small = random_data((1, 3, 5), count=8)
    expected = np.random.default_rng(0).standard_normal((8, 3, 5)).astype(np.float32)
    assert np.array_equal(np.concatenate([small.x_val, small.x_test]), expected)
    big = random_data((1, 3, 1024, 1024))
    assert big.x_test.dtype == np.float32 and 2 <= len(big.x_val) + len(big.x_test) < 256


# ---------------------------------------------------------------- 6. faults that used to be tracebacks

def read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write to: mode 0555, or for root (who ignores modes) /sys/kernel."""
    if os.geteuid() != 0:
        folder = tmp_path / "readonly"
        folder.mkdir(mode=0o555)
        return folder
    if not os.path.isdir("/sys/kernel") or _writable("/sys/kernel"):
        pytest.skip("running as root without a read-only /sys/kernel")
    return Path("/sys/kernel")


def _writable(folder: str) -> bool:
    import tempfile

    try:
        descriptor, path = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(descriptor)
    os.unlink(path)
    return True


def test_weights_of_the_wrong_shape_for_a_builtin(cli, tmp_path):
    weights = tmp_path / "wrong_shape.pt"
    torch.save({"fc1.weight": torch.zeros(3, 3)}, weights)
    refused(cli("inspect", "digits-mlp", "--weights", weights), "wrong_shape.pt", "do not fit digits-mlp")


@pytest.mark.parametrize("content", [b"root:x:0:0:root:/root:/bin/bash\n", bytes(range(256)) * 8])
def test_weights_that_are_not_a_pytorch_file(cli, tmp_path, content):
    weights = tmp_path / "weights.pt"
    weights.write_bytes(content)
    refused(cli("inspect", "digits-mlp", "--weights", weights), "weights.pt", "not a PyTorch file")
    refused(cli("inspect", weights), "not a PyTorch file")  # not "a pickled module"


def test_weights_from_a_system_file(cli):
    refused(cli("inspect", "digits-mlp", "--weights", "/etc/passwd"), "/etc/passwd", "not a PyTorch file")


def test_nan_weights_are_refused_by_evaluate(cli, tmp_path, mlp):
    weights = tmp_path / "nan.pt"
    torch.save({key: torch.full_like(value, float("nan")) for key, value in mlp.module.state_dict().items()}, weights)
    refused(cli("evaluate", "digits-mlp", "--weights", weights), "NaN")


def test_unwritable_prunelab_home(cli, tmp_path):
    readonly = read_only_folder(tmp_path)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for home, words in ((readonly, ("cannot write to PRUNELAB_HOME",)),
                        (a_file, ("is a file, not a folder",)),
                        (a_file / "below", ("PRUNELAB_HOME",))):
        refused(cli("sensitivity", "digits-mlp", env={"PRUNELAB_HOME": str(home)}), *words)
        refused(cli("runs", env={"PRUNELAB_HOME": str(home)}), "PRUNELAB_HOME")


def test_any_other_file_system_fault_is_one_line(cli, tmp_path):
    from core.prune.plan import Plan

    readonly = read_only_folder(tmp_path)
    plan = Plan(sparsity=0.5).save(tmp_path / "plan.yaml")
    refused(cli("export-plan", plan, "--format", "nni", "--out", readonly / "nni.json"), str(readonly))


def test_allocate_into_a_read_only_folder_fails_before_the_sweep(cli, tmp_path):
    readonly = read_only_folder(tmp_path)
    result = cli("allocate", "digits-mlp", "--target-sparsity", "0.5", "--out", readonly / "plan.yaml")
    refused(result, "cannot write to the folder of --out", str(readonly))  # one line: no sweep progress before it


# ---------------------------------------------------------------- 7. smaller ones

def test_old_format_pickle_loads_without_torch_warnings(cli, tmp_path):
    (tmp_path / "netmod.py").write_text("import torch\nclass Net(torch.nn.Linear):\n"
                                        "    def __init__(self):\n        super().__init__(4, 2)\n")
    save = "import torch, netmod; torch.save(netmod.Net(), 'old.pt', _use_new_zipfile_serialization=False)"
    subprocess.run([sys.executable, "-c", save],
                   cwd=tmp_path, check=True, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    (tmp_path / "netmod.py").write_text((tmp_path / "netmod.py").read_text() + "# changed\n")
    environment = {"PYTHONPATH": str(tmp_path)}
    refused(cli("inspect", "old.pt", cwd=tmp_path, env=environment), "pickled module", "--trust")
    trusted = cli("inspect", "old.pt", "--trust", "--input-shape", "1,4", cwd=tmp_path, env=environment)
    assert trusted["code"] == 0 and "Warning" not in trusted["stderr"], trusted["stderr"]


# ---------------------------------------------------------------- 5. earlier runs' files

def digests_of(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_prune_never_overwrites_an_earlier_run_and_check_verifies_digests(cli, tmp_path):
    from core.prune.plan import Plan

    plan = Plan(sparsity=0.5).save(tmp_path / "plan.yaml")
    out = tmp_path / "out"
    first = cli("prune", "digits-mlp", "--plan", plan, "--out", out)
    assert first["code"] == 0, first["stderr"]
    before = digests_of(out)
    assert set(before) == {"model.onnx", "state_dict.pt", "model.pt2", "plan.yaml", "report.json"}
    again = Plan(sparsity=0.9).save(tmp_path / "other.yaml")
    refused(cli("prune", "digits-mlp", "--plan", again, "--out", out), "already holds files", "model.onnx")
    assert digests_of(out) == before
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no staging left
    check = cli("runs", "check", "--json")
    assert check["code"] == 0, check["stdout"]
    assert json.loads(check["stdout"])["artifacts"]["checked"] == 5
    (out / "model.onnx").write_bytes(before["model.onnx"] + b"\0")
    check = cli("runs", "check")
    assert check["code"] == 1 and "changed: run 1: model.onnx" in check["stdout"], check["stdout"]
    (out / "plan.yaml").unlink()
    assert "missing: run 1: plan.yaml" in cli("runs", "check")["stdout"]


def test_stale_staging_of_a_killed_prune_is_cleaned(cli, tmp_path):
    from core.prune.plan import Plan

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                              check=True)
    stale = tmp_path / f".out.prune-{finished.stdout.strip()}-0a1b2c3d"  # its process has exited
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    plan = Plan(sparsity=0.5).save(tmp_path / "plan.yaml")
    result = cli("prune", "digits-mlp", "--plan", plan, "--out", tmp_path / "out")
    assert result["code"] == 0, result["stderr"]
    assert not stale.exists() and not list((tmp_path / "out").glob(".*"))
    here = tmp_path / "here"  # an empty folder that exists, named "."; earlier versions staged inside it
    (here / ".prune-k2x9q1w7").mkdir(parents=True)
    result = cli("prune", "digits-mlp", "--plan", plan, "--out", ".", cwd=here)
    assert result["code"] == 0, result["stderr"]
    assert sorted(path.name for path in here.iterdir()) == sorted(
        ["model.onnx", "state_dict.pt", "model.pt2", "plan.yaml", "report.json"])


def test_prune_with_a_corrupt_store_refuses_before_its_work(cli, tmp_path, prunelab_home):
    from core.prune.plan import Plan

    prunelab_home.mkdir(parents=True)
    (prunelab_home / "runs.db").write_bytes(b"this is not an SQLite database" * 100)
    plan = Plan(sparsity=0.5).save(tmp_path / "plan.yaml")
    result = cli("prune", "digits-mlp", "--plan", plan, "--out", tmp_path / "out")
    refused(result, "runs.db")
    assert "measuring" not in result["stderr"] and not (tmp_path / "out").exists()


def test_older_store_gains_digests_and_older_runs_count_as_unverified(tmp_path):
    import sqlite3

    from core.history.runs import MIGRATIONS, SCHEMA_VERSION, RunStore

    path = tmp_path / "runs.db"
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"onnx")
    with sqlite3.connect(path) as connection:
        for step in MIGRATIONS[:2]:
            connection.executescript(step)
        connection.execute("PRAGMA user_version = 2")
        connection.execute("INSERT INTO runs (created, model, plan, metrics, artifacts) VALUES (?, ?, ?, ?, ?)",
                           ("2026-01-01T00:00:00+00:00", "digits-mlp", "{}", "{}",
                            json.dumps({"model.onnx": str(artifact)})))
    store = RunStore(path)
    assert store.version() == SCHEMA_VERSION and store.get(1).digests == {}
    assert store.check_artifacts() == {"checked": 0, "unverified": 1, "missing": [], "changed": []}
    recorded = store.record({"model": "digits-mlp"}, artifacts={"model.onnx": artifact})
    assert recorded.digests["model.onnx"] == hashlib.sha256(b"onnx").hexdigest()


def test_export_plan_never_replaces_a_file_nobody_named(cli, tmp_path):
    from core.prune.plan import Plan

    plan = Plan(sparsity=0.5).save(tmp_path / "plan.yaml")
    mine = tmp_path / "net.py"
    mine.write_text("print('my own training script')\n")
    line = refused(cli("export-plan", plan, "--format", "torch-pruning", "--out", tmp_path / "net.json"), "net.py")
    assert "already exists" in line and not (tmp_path / "net.json").exists()  # nothing half-written
    assert mine.read_text() == "print('my own training script')\n"
    refused(cli("export-plan", plan, "--format", "torch-pruning", "--out", tmp_path / "net.txt"), ".json or .py")
    before = plan.read_bytes()
    refused(cli("export-plan", plan, "--format", "sparseml", "--out", plan), "replace its input plan")
    json_plan = Plan(sparsity=0.5).save(tmp_path / "plan.json")
    refused(cli("export-plan", json_plan, "--format", "torch-pruning", "--out", tmp_path / "plan.py"), "input plan")
    assert plan.read_bytes() == before and Plan.load(json_plan) == Plan(sparsity=0.5)
    for _ in range(2):  # its own snippet may be written again
        result = cli("export-plan", plan, "--format", "torch-pruning", "--out", tmp_path / "tp.json")
        assert result["code"] == 0, result["stderr"]


def test_export_plan_out_name_with_quotes_cannot_add_code(cli, tmp_path):
    from core.prune.plan import Plan

    plan = Plan(sparsity=0.5).save(tmp_path / "plan.yaml")
    name = 'x"); open("INJECTED", "w"); print("\\' + "'"
    result = cli("export-plan", plan, "--format", "torch-pruning", "--out", f"{name}.json", cwd=tmp_path)
    assert result["code"] == 0, result["stderr"]
    snippet = (tmp_path / f"{name}.py").read_text()
    tree = compile(snippet, "snippet.py", "exec", flags=0x400)  # ast.PyCF_ONLY_AST: valid Python
    opened = [node for node in __import__("ast").walk(tree) if getattr(node, "id", None) == "open"]
    assert len(opened) == 1  # only the snippet's own open(...)
    calls = {}

    class Stop(Exception):
        pass

    def fake_open(path, *args):
        calls["path"] = path
        raise Stop

    with pytest.raises(Stop):
        exec(compile(snippet, "snippet.py", "exec"), {"open": fake_open, "__builtins__": {"__import__": _stub_import}})
    assert calls["path"] == f"{name}.json" and not (tmp_path / "INJECTED").exists()


def _stub_import(name, *args, **kwargs):
    """Imports for running a generated snippet without torch_pruning: json is real, the rest a stand-in."""
    import json
    import types

    return json if name == "json" else types.ModuleType(name)


def test_a_run_store_that_is_a_folder_is_named(cli, prunelab_home):
    (prunelab_home / "runs.db").mkdir(parents=True)
    refused(cli("runs"), "runs.db is a folder, not an SQLite file")
