"""Hostile input through the dashboard: no code runs without consent, server paths stay under the
model root, bombs are refused in bounded memory and their uploads deleted.

The hostile files are made by the helpers of tests/test_hostile.py (the CLI's side of the same cases).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.memory import PeakGrowth
from tests.test_hostile import LIMIT_MIB, npz_bomb, onnx_with_input

# ---------------------------------------------------------------- the dashboard runs no code without consent

FACTORY = """import pathlib
pathlib.Path({marker!r}).write_text("imported")
from torch import nn
def factory():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
"""


@pytest.fixture
def model_page(open_app):
    return open_app(page="model")


def load_factory(app, spec: str, trust: bool = False):
    app.text_input(key="factory-shape").input("1,1,8,8")
    app.text_input[[box.label for box in app.text_input].index("Architecture")].input(spec).run()
    if trust:
        app.checkbox(key="factory-trust").check()
    next(button for button in app.button if button.label == "Load factory").click().run()
    assert not app.exception
    return [error.value for error in app.error]


def test_dashboard_imports_no_code_without_allow_code(model_page, tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil.py").write_text(FACTORY.format(marker=str(marker)))
    monkeypatch.setenv("PRUNELAB_MODEL_ROOT", str(tmp_path))
    for spec in (f"{tmp_path / 'evil.py'}:factory", "os:abort"):
        [message] = load_factory(model_page, spec)
        assert "--allow-code" in message
    assert model_page.checkbox(key="factory-trust").disabled
    assert not marker.exists() and model_page.session_state["prunelab.model"]["spec"] == "digits-cnn"


def test_dashboard_imports_code_with_allow_code_and_a_tick(model_page, tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil.py").write_text(FACTORY.format(marker=str(marker)))
    monkeypatch.setenv("PRUNELAB_MODEL_ROOT", str(tmp_path))
    monkeypatch.setenv("PRUNELAB_ALLOW_CODE", "1")
    spec = f"{tmp_path / 'evil.py'}:factory"
    [message] = load_factory(model_page.run(), spec)
    assert "tick the box" in message and not marker.exists()
    assert load_factory(model_page, spec, trust=True) == [] and marker.exists()
    assert model_page.session_state["prunelab.model"]["spec"] == spec


METRIC = """import pathlib
pathlib.Path({marker!r}).write_text("imported")
def top_class_share(outputs, data):
    return {{"top class share": float((outputs.argmax(1) == 0).mean())}}
"""


def use_metric(app, spec: str, trust: bool = False):
    app.text_input[[box.label for box in app.text_input].index("Metric")].input(spec).run()
    if trust:
        app.checkbox(key="metric-trust").check()
    next(button for button in app.button if button.label == "Use this metric").click().run()
    assert not app.exception
    return [error.value for error in app.error]


def test_a_metric_is_code_under_the_same_consent_and_then_shows_on_the_cards(model_page, tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "metrics.py").write_text(METRIC.format(marker=str(marker)))
    monkeypatch.setenv("PRUNELAB_MODEL_ROOT", str(tmp_path))
    spec = f"{tmp_path / 'metrics.py'}:top_class_share"
    [message] = use_metric(model_page, spec)
    assert "importing this metric" in message and "--allow-code" in message and not marker.exists()
    monkeypatch.setenv("PRUNELAB_ALLOW_CODE", "1")
    [message] = use_metric(model_page.run(), spec)
    assert "tick the box" in message and not marker.exists()
    assert use_metric(model_page, spec, trust=True) == [] and marker.exists()
    assert model_page.session_state["prunelab.model"]["metric"] == spec
    assert "top class share" in [card.label for card in model_page.metric]


def test_dashboard_opens_server_paths_only_under_its_model_root(model_page, tmp_path, monkeypatch):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "real.onnx").write_bytes(b"x")
    monkeypatch.setenv("PRUNELAB_MODEL_ROOT", str(root))
    [existing] = load_factory(model_page.run(), str(outside / "real.onnx"))
    [missing] = load_factory(model_page, str(outside / "nope.onnx"))
    assert existing.replace("real", "nope") == missing and "only files under" in missing
    monkeypatch.delenv("PRUNELAB_MODEL_ROOT")
    [message] = load_factory(model_page, "/etc/passwd")
    assert "uploaded files only" in message and "not found" not in message


def test_dashboard_refuses_an_npz_bomb_and_deletes_the_upload(model_page, tmp_path):
    from dashboard import uploads

    bomb = npz_bomb(tmp_path / "bomb.npz", (2**20, 1, 32, 32), zero_bytes=2**24)
    kept = set(uploads.folder().rglob("*"))  # other tests' uploads share this server's folder
    labels = [box.label for box in model_page.file_uploader]
    with PeakGrowth() as growth:
        model_page.file_uploader[labels.index("Evaluation data (.npz or .txt)")].upload("bomb.npz",
                                                                                        bomb.read_bytes()).run()
        next(button for button in model_page.button if button.label == "Use this data").click().run()
    assert not model_page.exception
    assert any("bomb.npz" in error.value and "PRUNELAB_MAX_DATA_GB" in error.value for error in model_page.error)
    assert growth.mib < LIMIT_MIB
    assert set(uploads.folder().rglob("*")) - kept == set()


def test_upload_folder_is_private_and_removed_when_the_server_exits(tmp_path):
    script = ("import os, stat; from dashboard import uploads; "
              "path = uploads.save_upload('m.onnx', b'x', {'.onnx'}); "
              "print(oct(stat.S_IMODE(os.stat(uploads.folder()).st_mode)), oct(stat.S_IMODE(os.stat(path).st_mode)), "
              "uploads.folder())")
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "TMPDIR": str(tmp_path)}
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                              check=True)
    stale = tmp_path / f"prunelab-uploads-{finished.stdout.strip()}-abcd"  # a killed server's folder
    stale.mkdir()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, check=True)
    folder_mode, file_mode, folder = result.stdout.split()
    assert (folder_mode, file_mode) == ("0o700", "0o600")
    assert not Path(folder).exists() and not stale.exists()


def test_dashboard_warns_when_bound_beyond_localhost(monkeypatch, capsys, tmp_path):
    from core.cli import main

    started = {}
    monkeypatch.setattr(os, "execve", lambda path, arguments, env: started.update(env=env, arguments=arguments))
    main(["dashboard", "--address", "0.0.0.0", "--model-root", str(tmp_path)])
    assert "warning: listening on 0.0.0.0" in capsys.readouterr().err
    assert started["env"]["PRUNELAB_ALLOW_CODE"] == "0" and started["env"]["PRUNELAB_MODEL_ROOT"] == str(tmp_path)
    main(["dashboard", "--allow-code"])
    assert "warning" not in capsys.readouterr().err and started["env"]["PRUNELAB_ALLOW_CODE"] == "1"


def test_naming_a_factory_on_the_command_line_is_consent(cli, tmp_path):
    marker = tmp_path / "imported"
    (tmp_path / "mine.py").write_text(FACTORY.format(marker=str(marker)))
    result = cli("inspect", f"{tmp_path / 'mine.py'}:factory", "--input-shape", "1,1,8,8")
    assert result["code"] == 0 and marker.exists(), result["stderr"]


def test_a_source_that_reaches_the_session_another_way_is_checked_too(model_page, tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil.py").write_text(FACTORY.format(marker=str(marker)))
    monkeypatch.setenv("PRUNELAB_MODEL_ROOT", str(tmp_path))
    model_page.session_state["prunelab.model"] = {"spec": f"{tmp_path / 'evil.py'}:factory", "weights": None,
                                                  "trust": True, "data": None, "input_shape": "1,1,8,8"}
    model_page.run()
    assert not model_page.exception and not marker.exists()
    assert any("--allow-code" in error.value for error in model_page.error)


def test_dashboard_refuses_an_input_too_big_and_draws_a_big_one_in_bounded_memory(model_page, tmp_path):
    from dashboard import uploads

    kept = set(uploads.folder().glob("*/*"))  # other tests' uploads share this server's folder
    errors = []
    with PeakGrowth() as growth:
        for name, shape in (("huge.onnx", (1, 3, 100_000, 100_000)), ("big.onnx", (1, 3, 1024, 1024))):
            content = onnx_with_input(tmp_path / name, shape).read_bytes()
            model_page.file_uploader[0].upload(name, content).run()
            next(button for button in model_page.button if button.label == "Load file").click().run()
            assert not model_page.exception
            errors.append([error.value for error in model_page.error])
    assert ["per item" in error and "huge.onnx" in error for error in errors[0]] == [True] and errors[1] == []
    assert model_page.session_state["prunelab.model"]["spec"].endswith("big.onnx")
    assert growth.mib < LIMIT_MIB
    new = set(uploads.folder().glob("*/*")) - kept
    assert [path.name for path in new] == ["big.onnx"]  # the refused file is gone


# ---------------------------------------------------------------- links and uploads of the third round

def link_problem(app) -> str:
    """The warning about a link (fixed words) and the plain-text line under it that says what was wrong."""
    [warning] = [element.value for element in app.warning]
    assert "could not all be used" in warning
    return " ".join(element.value for element in app.text)


def linked_app(open_app, env: dict[str, str] | None = None, **params):
    """The app opened from a link with ``params`` (a new session's first run); ``env``: the server's options."""
    app = open_app(run=False, env=env)
    app.query_params.update(params)
    return app.run()


def test_a_link_asking_for_a_million_tokens_is_refused_in_bounded_memory(open_app):
    with PeakGrowth() as growth:
        app = linked_app(open_app, model="minilm", shape="1,1000000")
    assert not app.exception
    warning = link_problem(app)
    assert "at most 512 tokens" in warning and "1,000,000" in warning
    assert growth.mib < LIMIT_MIB
    assert app.session_state["prunelab.model"]["spec"] == "digits-cnn"  # the default stays


def test_a_link_naming_thousands_of_unknown_layers_is_trimmed_with_a_message(open_app):
    names = ",".join(f"no_such_layer_{index}:30" for index in range(5000))
    app = linked_app(open_app, model="digits-mlp", sparsity="40", layers=f"fc1:70,{names}")
    assert not app.exception
    warning = link_problem(app)
    assert "5,000 layer(s) this model does not have" in warning and "left out" in warning
    assert app.session_state["prunelab.plan"].layer_targets == {"fc1": 0.7}
    assert app.session_state["prunelab.model"]["spec"] == "digits-mlp"


def test_the_link_problem_shows_the_address_as_typed_not_as_markdown(open_app):
    hostile = "[a](//h)![x](http://127.0.0.1:9/t)"
    app = linked_app(open_app, model="digits-mlp", granularity=hostile)
    assert hostile in link_problem(app)
    assert all(hostile not in element.value for element in [*app.markdown, *app.warning])


def test_a_refused_factory_link_waits_in_the_model_page_for_the_trust_tick(open_app, tmp_path):
    marker = tmp_path / "imported"
    (tmp_path / "evil.py").write_text(FACTORY.format(marker=str(marker)))
    spec = f"{tmp_path / 'evil.py'}:factory"
    app = linked_app(open_app, {"PRUNELAB_MODEL_ROOT": str(tmp_path), "PRUNELAB_ALLOW_CODE": "1"},
                     model=spec, shape="1,1,8,8")
    problem = link_problem(app)
    assert "tick the box" in problem and "tab file.py:factory" in problem and not marker.exists()  # no trust by link
    app.switch_page("pages/model.py").run()
    assert app.text_input(key="factory-spec").value == spec and app.text_input(key="factory-shape").value == "1,1,8,8"
    app.checkbox(key="factory-trust").check()
    next(button for button in app.button if button.label == "Load factory").click().run()
    assert not app.exception and not app.error and marker.exists()
    assert app.session_state["prunelab.model"]["spec"] == spec
    assert app.session_state["prunelab.model"]["input_shape"] == "1,1,8,8"
    assert not app.warning  # the link's line goes once its model is loaded


@pytest.mark.slow
def test_a_link_works_on_a_fresh_server_and_its_warning_renders_no_image_or_link(browser, server):
    """The first visitor of a new server arrives by a /tune link (no one has opened / yet)."""
    hostile = "%5Ba%5D(//h)!%5Bx%5D(http://127.0.0.1:9/t)"  # [a](//h)![x](http://127.0.0.1:9/t)
    page = browser.new_page()
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{server}/tune?model=digits-mlp&sparsity=30&granularity={hostile}")
    page.locator("[data-testid=stAlertContentWarning]").wait_for(timeout=120_000)
    detail = page.locator("[data-testid=stText]", has_text="[a](//h)![x](http://127.0.0.1:9/t)")
    detail.wait_for(timeout=30_000)
    hostile_elements = "[data-testid=stMain] img, [data-testid=stMain] a[href*='127.0.0.1:9'], a[href='//h']"
    assert page.locator(hostile_elements).count() == 0
    page.get_by_text("Model: digits-mlp").first.wait_for(timeout=120_000)  # the link's model, on the first visit
    assert not [url for url in requested if url.startswith(("http://127.0.0.1:9/", "http://h/"))]
    assert page.get_by_text("Page not found").count() == 0  # /tune is a page of its own, not the root's
    page.goto(f"{server}/?model=digits-mlp&sparsity=40")  # the root goes on to Tune with the link's plan
    page.wait_for_url("**/tune?*sparsity=40*", timeout=120_000)
    page.get_by_text("Model: digits-mlp").first.wait_for(timeout=120_000)
    assert page.get_by_text("Page not found").count() == 0
    page.close()


def test_an_upload_folder_of_a_killed_server_is_removed_when_the_next_one_starts(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                              check=True)
    stale = tmp_path / f"prunelab-uploads-{finished.stdout.strip()}-abcd"  # its process has exited
    (stale / "0a1b").mkdir(parents=True)
    (stale / "0a1b" / "data.txt").write_text("left behind\n")
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "TMPDIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "dashboard.serve", "version"], capture_output=True, text=True,
                            env=environment, timeout=120)
    assert result.returncode == 0 and "Streamlit" in result.stdout, result.stderr
    assert not stale.exists()


def test_a_text_upload_over_the_text_limit_is_refused_before_it_is_written(monkeypatch):
    from core.errors import PrunelabError
    from dashboard import uploads

    monkeypatch.setenv("PRUNELAB_MAX_TEXT_MB", "0.001")
    kept = set(uploads.folder().rglob("*"))
    with pytest.raises(PrunelabError, match="PRUNELAB_MAX_TEXT_MB"):
        uploads.save_upload("lines.txt", b"a short line\n" * 1000, {".npz", ".txt"})
    assert set(uploads.folder().rglob("*")) == kept
