"""prunelab works installed, not only from a checkout: its demo assets are package data, and
``import core.errors`` stays light."""
from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from core.files import ASSETS
from core.zoo.registry import BUILTINS, CARDS

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def package_data() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]


def test_assets_are_found_inside_the_package_and_hold_every_demo():
    assert ASSETS == ROOT / "core" / "zoo" / "assets" and ASSETS.resolve() == ROOT / "assets"
    assert CARDS.is_file() and (ASSETS / "digits.npz").is_file()
    trained = [spec for spec in BUILTINS.values() if spec.factory is not None]  # minilm comes from its package
    assert {"digits-mlp", "digits-cnn", "digits-resnet"} <= {spec.name for spec in trained}
    for spec in trained:
        assert spec.weights.is_file() and spec.weights.is_relative_to(ASSETS)


def test_every_asset_file_matches_a_package_data_pattern():
    patterns = package_data()["core.zoo"]
    files = [path.relative_to(ASSETS.parent).as_posix() for path in ASSETS.rglob("*")
             if path.is_file() and path.suffix != ".png"]  # the README's pictures stay out of the wheel
    assert files
    unmatched = [name for name in files if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns)]
    assert unmatched == []


def test_import_core_errors_loads_neither_torch_nor_plotly():
    code = "import sys, core.errors; print(sorted({'torch', 'plotly', 'streamlit'} & set(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "[]"


@pytest.mark.slow
def test_the_wheel_carries_the_assets_and_the_dashboard_pages(tmp_path):
    source = tmp_path / "source"
    for name in ("core", "dashboard"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("prunelab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assets = {path.relative_to(ROOT).as_posix() for path in ASSETS.rglob("*")
              if path.is_file() and path.suffix != ".png"}
    assert assets and assets <= names
    pages = {path.relative_to(ROOT).as_posix() for path in (ROOT / "dashboard" / "pages").glob("*.py")}
    assert pages <= names and "dashboard/app.py" in names
