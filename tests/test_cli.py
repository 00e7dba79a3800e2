"""The command line answers help and argument errors without TensorFlow."""

import shutil
import subprocess
import sys

import requests
from conftest import Server, free_port, run_cli

PROBE = """
import sys
from kerakit.cli import main
try:
    main({args!r})
except SystemExit as e:
    code = e.code
print("EXIT", code)
print("TF_IMPORTED", "tensorflow" in sys.modules)
"""


def _probe(args):
    out = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True, timeout=60)
    return out.stdout + out.stderr


def test_help_lists_commands_without_importing_tensorflow():
    out = _probe(["--help"])
    assert "EXIT 0" in out
    for command in ("train", "evaluate", "recipes"):
        assert command in out
    assert "TF_IMPORTED False" in out


def test_invalid_strategy_is_an_argument_error_without_tensorflow():
    out = _probe(["train", "digits_cnn", "--strategy", "tpu-pod"])
    assert "EXIT 2" in out
    assert "tpu-pod" in out and "multi-worker" in out
    assert "TF_IMPORTED False" in out


def test_override_without_equals_sign_is_rejected():
    out = _probe(["train", "digits_cnn", "epochs"])
    assert "EXIT 2" in out
    assert "Invalid override 'epochs': expected key=value" in out
    assert "TF_IMPORTED False" in out


def test_console_script_help_exits_zero():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "kerakit train digits_cnn" in result.stdout


ASCII_ONLY = {"LANG": "C", "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}  # no UTF-8 mode, no coercion


def test_serve_and_evaluate_under_an_ascii_only_locale_with_a_non_ascii_path(digits_run, digits_export, tmp_path):
    """A run moved to `runs/rün ñ` and used by a Python that reads file names as ASCII: evaluate scores it,
    serve answers with its ONNX model (loaded by its bytes), and a SavedModel, which TensorFlow opens
    only by name, is refused in one line saying what to set."""
    run = tmp_path / "rün ñ"
    # Only what train wrote: other tests may have exported or benched into the shared run.
    from kerakit.runs import BENCH_DIR, DEPLOYMENT_FILE, EXPORT_DIR

    shutil.copytree(digits_run.path, run, ignore=shutil.ignore_patterns(EXPORT_DIR, BENCH_DIR, DEPLOYMENT_FILE))
    export, _ = digits_export
    (run / "export").mkdir(exist_ok=True)
    shutil.copy(export / "model.onnx", run / "export" / "model.onnx")
    shutil.copytree(export / "savedmodel", run / "export" / "savedmodel")

    scored = run_cli("evaluate", run, env=ASCII_ONLY)
    assert scored.returncode == 0 and scored.stdout.startswith("accuracy="), scored.stderr[-2000:]
    assert "Traceback" not in scored.stderr and "AutoGraph could not transform" not in scored.stderr

    server = Server(run, "--no-log", "--no-grpc", log_dir=tmp_path, env=ASCII_ONLY)
    try:
        r = requests.post(f"{server.url}/v1/models/digits_cnn:predict", json={"instances": [[[[0.0]] * 8] * 8]})
        assert r.status_code == 200 and len(r.json()["predictions"][0]) == 10
    finally:
        server.stop()

    refused = run_cli("serve", run / "export" / "savedmodel", "--no-grpc", "--port", free_port(), env=ASCII_ONLY)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr[-2000:]
    assert "Set PYTHONUTF8=1 (or LC_ALL=C.UTF-8)" in refused.stderr and "r\\xc3\\xbcn \\xc3\\xb1" in refused.stderr
