"""Shared fixtures: one TFDS data dir per test session, one short digits run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# The installed console script, as a user runs it.
KERAKIT = [str(Path(sys.executable).parent / "kerakit")]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session", autouse=True)
def tfds_data_dir(tmp_path_factory):
    """Bundled datasets are prepared once per session into a private data dir."""
    path = tmp_path_factory.mktemp("tensorflow_datasets")
    os.environ["TFDS_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A short digits_cnn run shared by tests that only read it."""
    import kerakit

    out = tmp_path_factory.mktemp("runs") / "digits"
    return kerakit.train("digits_cnn", out, epochs=3, verbose=0)


@pytest.fixture(scope="session")
def digits_export(digits_run, tmp_path_factory):
    """The short digits run exported for server and edge, plus float32 TFLite."""
    from kerakit.export import export

    out = tmp_path_factory.mktemp("export")
    report = export(digits_run.path, targets=["server", "edge"], formats=["tflite"], out=out, log=lambda m: None)
    return out, report


def run_cli(*args, env=None, timeout=300, cwd=ROOT):
    """Run the real `kerakit` command line in a fresh interpreter."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*KERAKIT, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)


def copy_recipe(name: str, dest: Path) -> Path:
    target = dest / f"{name}.py"
    shutil.copyfile(ROOT / "recipes" / f"{name}.py", target)
    return target
