"""Every user mistake: one clear line on stderr, a non-zero exit, no traceback (unless --debug)."""

import pytest

from conftest import FIXTURES, cli_in_process, run_cli


def _assert_one_clear_line(result, *fragments):
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["train", "digitz"], ["Unknown recipe 'digitz'", "digits_cnn"]),
        (["train", FIXTURES / "broken_syntax.py"], ["broken_syntax.py:5: syntax error"]),
        (["train", FIXTURES / "no_build_model.py"], ["does not define build_model"]),
        (["train", "digits_cnn", "epochs=many"], ["epochs='many'", "expected int"]),
        (["train", "digits_cnn", "learning_rat=0.1"], ["Unknown override 'learning_rat'", "learning_rate"]),
        (["evaluate", "no/such/run"], ["does not exist"]),
        (["train", "digits_cnn", "filters=-16"], ["filters=-16", "from 16 to 64"]),
        (["train", FIXTURES / "build_model_raises.py"],
         ["build_model_raises.py: build_model raised KeyError: 'large'", "--debug"]),
        (["bench", "no/such/model.onnx", "--threads", "999"], ["does not exist"]),
    ],
    ids=["unknown-recipe", "syntax-error", "missing-build-model", "wrong-type", "unknown-key", "missing-run",
         "out-of-range-hparam", "build-model-raises", "missing-artifact"],
)
def test_bad_input_gets_one_clear_line(args, fragments, tmp_path):
    result = cli_in_process(*args, "--out", tmp_path / "run") if args[0] == "train" else cli_in_process(*args)
    _assert_one_clear_line(result, *fragments)


def test_unwritable_out_is_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = cli_in_process("train", "digits_cnn", "--out", blocker / "run")
    _assert_one_clear_line(result, "Cannot write to output directory", str(blocker / "run"))


def test_dataset_unavailable_offline(tmp_path):
    result = cli_in_process("train", "mnist_cnn", "--out", tmp_path / "run", "--data-dir", tmp_path / "empty")
    _assert_one_clear_line(result, "Dataset 'mnist' is not available", "--data-dir", "bundled recipe")


@pytest.mark.slow
def test_nan_loss(tmp_path):
    result = run_cli("train", FIXTURES / "diverges.py", "learning_rate=1e30", "epochs=2", "--out", tmp_path / "run")
    _assert_one_clear_line(result, "loss became", "learning_rate=1e+30", "Lower the learning rate")


def test_debug_shows_the_traceback():
    result = run_cli("--debug", "train", "digitz")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "KerakitError" in result.stderr
