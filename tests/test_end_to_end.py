"""Slow end-to-end cases: the default recipe's target, kill-and-resume, multi-worker training.

Skip while iterating with `make test-fast` (pytest -m "not slow").
"""

import csv
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import KERAKIT, ROOT, run_cli
from kerakit import files
from kerakit.runs import Run

pytestmark = pytest.mark.slow


def test_digits_cnn_defaults_reach_95_percent(tmp_path):
    result = run_cli("train", "digits_cnn", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    run = Run.open(tmp_path / "run")
    assert run.metrics["accuracy"] >= 0.95
    assert "confusion matrix" in result.stdout

    evaluated = run_cli("evaluate", tmp_path / "run", "--json")
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(run.metrics["accuracy"])


def _epochs(path):
    with open(path) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_sigkill_mid_training_then_rerun_resumes_and_finishes(tmp_path):
    out = tmp_path / "run"
    args = ["train", "digits_cnn", "epochs=25", "patience=100", "--out", str(out)]
    proc = subprocess.Popen([*KERAKIT, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    meta = out / "backup" / "training_metadata.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            if json.loads(meta.read_text())["epoch"] >= 3:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("training never reached epoch 3")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists() and not (out / "model.keras").exists()
    killed_at = json.loads(meta.read_text())["epoch"]

    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert f"Resuming digits_cnn from epoch {killed_at}" in result.stdout
    run = Run.open(out)
    assert run.manifest["training"]["resumed_from_epoch"] == killed_at
    assert _epochs(out / "history.csv") == list(range(25))
    assert run.metrics["accuracy"] >= 0.9
    assert all(run.verify_artifacts().values())


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_training_with_two_local_processes(tmp_path, digits_run):
    # digits_run (trained in this process) prepared the dataset in the session's TFDS_DATA_DIR, which the two
    # workers inherit: they would race to prepare it (a warm-up `kerakit train` did this, 10-15 s more).
    assert (Path(os.environ["TFDS_DATA_DIR"]) / digits_run.recipe().dataset).is_dir()
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    out = tmp_path / "run"
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [*KERAKIT, "train", "digits_cnn", "epochs=3", "--strategy", "multi-worker", "--out", str(out)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (stdout, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, stderr[-3000:]
    run = Run.open(out)
    assert run.manifest["strategy"]["name"] == "multi-worker"
    assert _epochs(out / "history.csv") == [0, 1, 2]
    assert run.metrics["accuracy"] > 0.8
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".") and p.name != files.LOCK_FILE) == []
