"""`kerakit.train` writes a complete, reproducible run directory; reruns resume or refuse."""

import csv
import json

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

import kerakit
from kerakit import files
from kerakit.errors import KerakitError
from kerakit.formats.keras import load_keras_model
from conftest import FIXTURES


def test_run_directory_holds_model_config_history_metrics_manifest(digits_run):
    path = digits_run.path
    for name in ("model.keras", "config.json", "history.csv", "metrics.json", "manifest.json", "recipe.py"):
        assert (path / name).is_file(), name
    assert any((path / "logs").rglob("events.out.tfevents.*")), "TensorBoard logs"
    assert not (path / "backup").exists(), "backup is removed once training finishes"
    with open(path / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2]


def test_manifest_records_what_reproduces_the_run(digits_run):
    manifest = digits_run.manifest
    assert manifest["config"]["epochs"] == 3 and manifest["seeds"]["seed"] == 42
    assert manifest["hparams"] == {"filters": 32, "dense_units": 128, "dropout": 0.3, "learning_rate": 0.003}
    assert manifest["versions"]["tensorflow"].startswith("2.21")
    assert manifest["versions"]["keras"].startswith("3.15")
    assert manifest["data"]["dataset"] == "kerakit_digits" and len(manifest["data"]["sha256"]["train"]) == 64
    assert manifest["recipe"]["inputs"] == [{"name": "image", "shape": [8, 8, 1], "dtype": "float32"}]
    assert "git_commit" in manifest["code"]
    assert digits_run.verify_artifacts() == {name: True for name in manifest["artifacts"]}


def test_saved_model_reproduces_the_recorded_test_metrics(digits_run):
    assert kerakit.evaluate(digits_run.path)["accuracy"] == pytest.approx(digits_run.metrics["accuracy"])
    model = load_keras_model(digits_run.model_path)
    assert model.inputs[0].name == "image"


def test_classification_metrics_have_per_class_rows_and_a_confusion_matrix(digits_run):
    metrics = digits_run.metrics
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == metrics["examples"] == 360
    assert metrics["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert [row["class"] for row in metrics["per_class"]] == [str(d) for d in range(10)]
    assert sum(row["support"] for row in metrics["per_class"]) == 360


@pytest.mark.slow
def test_the_same_request_trains_the_same_model_whether_or_not_the_dataset_was_prepared(tmp_path):
    """Preparing a TFDS dataset the first time runs seeded TensorFlow ops; the model must not see that."""
    fresh = kerakit.train("digits_cnn", tmp_path / "first", epochs=1, data_dir=tmp_path / "tfds", verbose=0)
    again = kerakit.train("digits_cnn", tmp_path / "second", epochs=1, data_dir=tmp_path / "tfds", verbose=0)
    assert fresh.metrics["accuracy"] == again.metrics["accuracy"]
    for a, b in zip(load_keras_model(fresh.model_path).get_weights(), load_keras_model(again.model_path).get_weights()):
        np.testing.assert_array_equal(a, b)


def test_rerun_of_a_finished_run_changes_nothing(digits_run):
    before = files.sha256(digits_run.model_path)
    again = kerakit.train("digits_cnn", digits_run.path, epochs=3, verbose=0)
    assert again.path == digits_run.path and files.sha256(again.model_path) == before


def test_rerun_with_a_different_request_is_refused_unless_overwrite(tmp_path):
    kerakit.train("breast_cancer_mlp", tmp_path, epochs=1, verbose=0)
    with pytest.raises(KerakitError, match=r"different request \(changed: epochs\).*--overwrite"):
        kerakit.train("breast_cancer_mlp", tmp_path, epochs=2, verbose=0)
    run = kerakit.train("breast_cancer_mlp", tmp_path, epochs=2, overwrite=True, verbose=0)
    assert run.manifest["training"]["epochs_run"] == 2


def test_hyperparameter_override_builds_that_model(tmp_path):
    run = kerakit.train("digits_cnn", tmp_path, epochs=1, filters=16, verbose=0)
    assert run.manifest["hparams"]["filters"] == 16
    convs = [l for l in load_keras_model(run.model_path).layers if isinstance(l, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [16, 32]


def test_hparams_file_sets_hyperparameters_and_overrides_win(tmp_path):
    best = tmp_path / "best_hparams.json"
    best.write_text(json.dumps({"filters": 48, "dense_units": 64}))
    run = kerakit.train("digits_cnn", tmp_path / "run", epochs=1, hparams=best, dense_units=96, verbose=0)
    assert run.manifest["hparams"]["filters"] == 48
    assert run.manifest["hparams"]["dense_units"] == 96


def test_unknown_override_lists_config_keys_and_hyperparameters(tmp_path):
    with pytest.raises(KerakitError, match=r"Unknown override 'epoch'.*Valid config keys: .*epochs.*filters"):
        kerakit.train("digits_cnn", tmp_path, epoch=3, verbose=0)


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    with pytest.raises(KerakitError, match=r"loss became (nan|inf) in epoch 1 with learning_rate=1e\+30"):
        kerakit.train(FIXTURES / "diverges.py", tmp_path, learning_rate=1e30, epochs=3, verbose=0)
    assert not (tmp_path / "manifest.json").exists()
    assert not (tmp_path / "backup").exists(), "no resume from NaN weights"


def test_model_inputs_must_carry_the_recipe_names(tmp_path):
    with pytest.raises(KerakitError, match=r"model inputs \['pixels'\] do not match INPUTS \['image'\]"):
        kerakit.train(FIXTURES / "wrong_input_name.py", tmp_path, verbose=0)


def test_tabular_model_takes_raw_features(tmp_path):
    """Normalization is adapted inside the model, so an exported model needs no preprocessing."""
    run = kerakit.train("breast_cancer_mlp", tmp_path, epochs=2, verbose=0)
    model = load_keras_model(run.model_path)
    norm = model.get_layer("normalize")
    raw = np.stack([e["features"] for e in tfds.as_numpy(tfds.load("kerakit_breast_cancer", split="train[:85%]"))])
    np.testing.assert_allclose(np.ravel(norm.mean), raw.mean(axis=0), rtol=1e-4)
    assert run.metrics["accuracy"] > 0.8


def test_regression_recipe_reports_regression_metrics(tmp_path):
    run = kerakit.train("diabetes_mlp", tmp_path, epochs=5, verbose=0)
    metrics = run.metrics
    assert {"mae", "rmse", "r2"} <= set(metrics)
    assert metrics["rmse"] == pytest.approx(np.sqrt(metrics["mse"]))
    assert run.manifest["recipe"]["metric"] == "mae"


@pytest.mark.parametrize("name, input_shape", [("mnist_cnn", (28, 28, 1)), ("imdb_text", (256,))])
def test_catalogue_recipes_train_on_mocked_tfds(name, input_shape, tmp_path):
    with tfds.testing.mock_data(num_examples=64):
        run = kerakit.train(name, tmp_path, epochs=1, verbose=0)
    assert run.manifest["data"]["dataset"] == name.replace("_cnn", "").replace("imdb_text", "imdb_reviews")
    assert tuple(run.manifest["recipe"]["inputs"][0]["shape"]) == input_shape
    assert run.metrics["examples"] == 64


def test_mirrored_strategy_trains(tmp_path):
    run = kerakit.train("breast_cancer_mlp", tmp_path, epochs=1, strategy="mirrored", verbose=0)
    assert run.manifest["strategy"] == {"name": "mirrored", "replicas": 1}


def test_evaluate_a_keras_file_outside_a_run_needs_its_recipe(digits_run, tmp_path):
    loose = tmp_path / "model.keras"
    loose.write_bytes(digits_run.model_path.read_bytes())
    with pytest.raises(KerakitError, match="--recipe"):
        kerakit.evaluate(loose)
    assert kerakit.evaluate(loose, recipe="digits_cnn")["accuracy"] == pytest.approx(digits_run.metrics["accuracy"])


@pytest.mark.parametrize("content, message", [(b"not a zip", "not a valid .keras file"), (None, "truncated or corrupt")])
def test_evaluate_rejects_a_corrupt_model_file(digits_run, tmp_path, content, message):
    broken = tmp_path / "broken.keras"
    data = digits_run.model_path.read_bytes()
    broken.write_bytes(content if content is not None else data[: len(data) // 2])
    with pytest.raises(KerakitError, match=message):
        kerakit.evaluate(broken, recipe="digits_cnn")

