"""Shared fixtures: one TFDS data dir per test session, one short digits run."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# The installed console script, as a user runs it.
KERAKIT = [str(Path(sys.executable).parent / "kerakit")]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Not test modules: recipes that are broken on purpose, a format and a layer only some tests use.
collect_ignore = ["fixtures", "toy_format.py", "custom_scale.py"]


# `make test` gives each of its two workers one file at a time (--dist loadfile), the next in collection order
# (--no-loadscope-reorder: xdist's own order, most tests first, put the few-test end-to-end files last, so one
# worker ran the last long file while the other had nothing left). Longest first, the short files fill in at
# the end. Seconds each long file took alone on the 2-core machine (pytest --durations, load average 3-14);
# a file not listed counts 1 s a test and SLOW_S a slow one. A stale figure costs time, never a result.
FILE_SECONDS = {
    "test_faults.py": 330, "test_sources.py": 260, "test_build.py": 250, "test_tune.py": 240, "test_images.py": 200,
    "test_tracking.py": 160, "test_end_to_end.py": 120, "test_export.py": 120, "test_zoo.py": 110, "test_cv.py": 70,
    "test_mcu.py": 70, "test_train.py": 60,
}
SLOW_S = 15


def pytest_collection_modifyitems(config, items):
    """Files longest first (a stable sort: each file's tests keep their order, and stay together)."""
    estimate: dict[str, float] = {}
    for item in items:
        file = item.nodeid.split("::")[0]
        estimate[file] = estimate.get(file, 0) + (SLOW_S if item.get_closest_marker("slow") else 1)
    seconds = {file: FILE_SECONDS.get(Path(file).name, guess) for file, guess in estimate.items()}
    items.sort(key=lambda item: -seconds[item.nodeid.split("::")[0]])


@pytest.fixture(scope="session", autouse=True)
def tfds_data_dir(tmp_path_factory):
    """Bundled datasets are prepared once per session into a private data dir."""
    path = tmp_path_factory.mktemp("tensorflow_datasets")
    os.environ["TFDS_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def kerakit_cache_dir(tmp_path_factory):
    """kerakit's per-machine cache (re-verified files, kerakit.export.rows) in the session's own directory, never
    the user's ~/.cache; tests that judge caching set their own."""
    path = tmp_path_factory.mktemp("kerakit_cache")
    os.environ["KERAKIT_CACHE_DIR"] = str(path)
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


class CliResult:
    """What a run of the command line left: exit status, stdout, stderr."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def cli_in_process(*args, env=None) -> CliResult:
    """The same command line as `run_cli`, in this process (click's CliRunner): the
    error-path tests need the CLI's messages and exit status, not a fresh interpreter,
    which costs 7-9 s of TensorFlow start-up each. Uncaught exceptions propagate."""
    from click.testing import CliRunner

    from kerakit.cli import cli

    before = dict(os.environ)  # the CLI may set variables for its own children (--custom-objects): a
    try:                       # command run here must leave none behind for the next test's subprocesses
        result = CliRunner(env={k: str(v) for k, v in (env or {}).items()}).invoke(
            cli, [str(a) for a in args], prog_name="kerakit", catch_exceptions=False)
    finally:
        os.environ.clear()
        os.environ.update(before)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def copy_recipe(name: str, dest: Path) -> Path:
    target = dest / f"{name}.py"
    shutil.copyfile(ROOT / "recipes" / f"{name}.py", target)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`kerakit serve ...` on a free loopback port, ready when constructed."""

    def __init__(self, *args, log_dir: Path, timeout: float = 90, env: dict | None = None):
        self.port, self.grpc_port = free_port(), free_port()  # never the default 8001: servers run side by side
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr_path = log_dir / f"serve-{self.port}.stderr"
        self._stderr = open(self.stderr_path, "w")
        grpc = [] if "--no-grpc" in map(str, args) else ["--grpc-port", str(self.grpc_port)]
        self.proc = subprocess.Popen([*KERAKIT, "serve", *map(str, args), "--port", str(self.port), *grpc],
                                     stdout=subprocess.DEVNULL, stderr=self._stderr, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.stderr_path.read_text()}")
            try:
                if requests.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"server not ready in {timeout} s: {self.stderr_path.read_text()}")

    def alive(self) -> bool:
        return self.proc.poll() is None and requests.get(self.url + "/v2/health/live", timeout=5).status_code == 200

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._stderr.close()
