"""The command line answers help and argument errors without TensorFlow."""

import subprocess
import sys

from conftest import run_cli

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
