"""One Predictor API over every format: format from the path, inputs checked by name, rank, shape, dtype."""

import numpy as np
import pytest

from kerakit import runtime
from kerakit.errors import KerakitError

ARTIFACTS = ["../model.keras", "savedmodel", "model.onnx", "model_fp32.tflite", "model_int8.tflite"]


def _path(digits_export, digits_run, name):
    out, _ = digits_export
    return digits_run.model_path if name == "../model.keras" else out / name


@pytest.mark.parametrize("name", ARTIFACTS)
def test_every_format_predicts_the_same_classes(name, digits_export, digits_run):
    x = np.random.default_rng(1).random((16, 8, 8, 1), dtype=np.float32)
    with runtime.load(digits_run.model_path) as keras_model, runtime.load(_path(digits_export, digits_run, name)) as p:
        assert p.format == runtime.detect_format(_path(digits_export, digits_run, name))
        want = keras_model.predict({"image": x})["probabilities"]
        got = p.predict({"image": x})["probabilities"]
        assert got.dtype == np.float32 and got.shape == (16, 10)
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9


@pytest.mark.parametrize("name", ARTIFACTS)
@pytest.mark.parametrize(
    "batch, message",
    [
        ({"pixels": np.zeros((1, 8, 8, 1), np.float32)}, r"Input names \['pixels'\] do not match the model's inputs \['image'\]"),
        ({"image": np.zeros((1, 8, 8), np.float32)}, r"rank 3 .*expected rank 4 with shape \(batch, 8, 8, 1\)"),
        ({"image": np.zeros((1, 8, 9, 1), np.float32)}, r"shape \(1, 8, 9, 1\); expected \(batch, 8, 8, 1\)"),
        ({"image": np.array([[["a"] * 8] * 8])}, r"dtype <U1; expected numeric float32"),
    ],
    ids=["name", "rank", "shape", "dtype"],
)
def test_bad_inputs_name_expected_and_given(name, batch, message, digits_export, digits_run):
    with runtime.load(_path(digits_export, digits_run, name)) as p:
        with pytest.raises(KerakitError, match=message):
            p.predict(batch)


def test_int8_tflite_answers_in_floats(digits_export):
    out, _ = digits_export
    with runtime.load(out / "model_int8.tflite") as p:
        probabilities = p.predict(np.full((3, 8, 8, 1), 0.5, np.float32))["probabilities"]
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=0.05)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "model.pt", "Unsupported model file"),
        (lambda d: d / "model.h5", r"model.h5' is not a valid legacy .h5 file \(not HDF5"),
        (lambda d: d / "missing.onnx", "does not exist"),
        (lambda d: d, r"is not a model directory. Expected one of: savedmodel \(saved_model.pb\)"),
    ],
)
def test_unsupported_or_missing_paths(tmp_path, make, message):
    (tmp_path / "model.pt").write_bytes(b"x")
    (tmp_path / "model.h5").write_bytes(b"x")
    with pytest.raises(KerakitError, match=message):
        runtime.load(make(tmp_path))


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_corrupt_files_are_refused(tmp_path, suffix, digits_export):
    out, _ = digits_export
    source = out / ("model.onnx" if suffix == ".onnx" else "model_fp32.tflite")
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(source.read_bytes()[:200])
    with pytest.raises(KerakitError, match="truncated or corrupt"):
        runtime.load(broken)


def test_onnx_session_options(digits_export):
    out, _ = digits_export
    with runtime.load(out / "model.onnx", threads=1, optimization="basic") as p:
        assert p.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(KerakitError, match="Invalid optimization='max'"):
        runtime.load(out / "model.onnx", optimization="max")


def test_a_format_the_caller_knows_is_carried_not_found_again_from_the_file(digits_export, tmp_path):
    """Export passes its spec's format, serve its entry's: the file's name or contents are not asked again."""
    from kerakit import formats

    out, _ = digits_export
    renamed = tmp_path / "model.bin"  # a name no format claims
    renamed.write_bytes((out / "model.onnx").read_bytes())
    with pytest.raises(KerakitError, match="Unsupported model file"):
        runtime.load(renamed)
    x = np.zeros((2, 8, 8, 1), np.float32)
    with runtime.load(renamed, format=formats.get("onnx")) as p, runtime.load(out / "model.onnx") as reference:
        assert p.format == "onnx"
        np.testing.assert_array_equal(p.predict({"image": x})["probabilities"],
                                      reference.predict({"image": x})["probabilities"])
