"""kerakit as a user installs it: a built wheel in a clean venv, used from an empty directory.

The built-in recipes and targets ship inside the wheel as package data (the checkout's recipes/ and export/ become
kerakit/recipes/ and kerakit/targets/), so `kerakit recipes` and `kerakit build digits_cnn --target server` work with
no checkout in sight.

Only kerakit is installed into the throwaway venv; its dependencies come from the test's own venv, whose
site-packages a .pth file adds to the throwaway's sys.path. Installing them there too (TensorFlow, ONNX Runtime,
OpenVINO, ...) took 113 s and wrote 3.2 GB, measured with a warm pip cache on a 2-core machine, on every run of the
suite; sharing them still proves what this test is about: that every file kerakit needs is in the wheel. A path
line in a .pth file only appends that folder to sys.path: the .pth files inside it are not processed, so the
checkout's editable install there (an `import` line in its own .pth) stays off, which
`test_the_installed_kerakit_is_the_wheels` checks.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

# Where each source folder lands in the wheel (pyproject's [tool.setuptools] packages and package-dir).
SHIPPED_AS = {"kerakit": "kerakit", "recipes": "kerakit/recipes", "export": "kerakit/targets"}
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc")


def _run(args: list, cwd: Path | None = None, env: dict | None = None, timeout: float = 120) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def _source_files() -> dict[str, Path]:
    """Every file of the package's sources, by the name it must have in the wheel."""
    return {f"{SHIPPED_AS[folder]}/{path.relative_to(ROOT / folder).as_posix()}": path
            for folder in SHIPPED_AS for path in sorted((ROOT / folder).rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built (as `pip wheel .` builds it) from a copy of the sources: setuptools' build/ folder in the
    checkout keeps files the sources no longer have, and would put them in the wheel."""
    source = tmp_path_factory.mktemp("source")
    for folder in SHIPPED_AS:
        shutil.copytree(ROOT / folder, source / folder, ignore=SKIP)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    # With this venv's setuptools (TensorFlow requires it): nothing to download.
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, source])
    (built,) = dist.glob("kerakit-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A venv holding only the wheel's kerakit; the test venv's site-packages on its path, by a .pth file."""
    home = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", home])
    # pip runs in the new venv's interpreter, before the .pth exists: it sees no other kerakit to replace.
    _run([sys.executable, "-m", "pip", "--python", home / "bin" / "python", "install", "-q", "--no-deps", wheel])
    site = _run([home / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).strip()
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (Path(site) / "kerakit_test_dependencies.pth").write_text("\n".join(ours) + "\n")
    return home


def _env() -> dict:
    """The user's environment, less what would find the checkout's files instead of the wheel's."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAKIT_RECIPE_PATH", "KERAKIT_FORMATS")}


def test_the_wheel_holds_every_file_of_the_package_recipes_and_targets(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    missing = sorted(set(_source_files()) - names)
    assert not missing, (f"not in the wheel: {missing}: list a new kerakit/ subpackage in pyproject's "
                         "[tool.setuptools] packages, a data file in its package-data")
    assert {"kerakit/recipes/digits_cnn.py", "kerakit/targets/server.toml"} <= names


def test_the_installed_kerakit_is_the_wheels(venv, tmp_path):
    probe = ("import sys, kerakit\nfrom importlib import resources\n"
             "print(kerakit.__file__)\nprint(resources.files('kerakit.recipes'))\nprint(resources.files('kerakit.targets'))\n"
             "print([m for m in sys.modules if m.startswith('__editable__')])")
    *files, editable = _run([venv / "bin" / "python", "-c", probe], cwd=tmp_path, env=_env()).splitlines()
    for path in files:
        assert Path(path).is_relative_to(venv), f"{path} is not the wheel's copy in {venv}"
    assert editable == "[]", f"the checkout's editable install was activated: {editable}"


def test_kerakit_recipes_lists_the_built_in_recipes_from_an_empty_directory(venv, tmp_path):
    stdout = _run([venv / "bin" / "kerakit", "recipes"], cwd=tmp_path, env=_env())
    names = [p.stem for p in sorted((ROOT / "recipes").glob("*.py")) if not p.name.startswith("_")]
    assert names and [n for n in names if not re.search(rf"^{n}\s", stdout, re.M)] == [], stdout
    assert list(tmp_path.iterdir()) == [], "listing writes nothing"


@pytest.mark.slow
def test_kerakit_build_digits_cnn_with_a_built_in_target_from_an_empty_directory(venv, tmp_path):
    _run([venv / "bin" / "kerakit", "build", "digits_cnn", "epochs=1", "--target", "server", "--bench-runs", "5",
          "--out", "runs/digits"], cwd=tmp_path, env=_env(), timeout=600)
    run = tmp_path / "runs" / "digits"
    report = json.loads((run / "export" / "export_report.json").read_text())
    target = tomllib.loads((ROOT / "export" / "server.toml").read_text())
    assert [row["format"] for row in report["artifacts"]] == [a["format"] for a in target["artifacts"]]
    assert report["passed"] and {row["verdict"] for row in report["artifacts"]} == {"verified"}
    assert all((run / "export" / Path(row["path"]).name).exists() for row in report["artifacts"])
    assert (run / "model.keras").exists() and (run / "report" / "index.html").exists()
