"""Tables: raw rows in. The recipe `kerakit new --from table.csv` writes takes one named input per column (text as
strings, numbers as float32 with NaN for missing) and does its preprocessing inside the model, adapted on the
training split; SavedModel, ONNX and LiteRT carry the string inputs and are verified on raw held-out rows.

The table is the messy one of test_baselines: `;`-separated latin-1, decimal commas, ".", "NA" and "" for missing,
a string in a number column, an identifier, a leaky column and a skewed label.
"""

import numpy as np
import pytest

from test_baselines import _skewed_csv


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    import kerakit
    from kerakit.sources import new_recipe

    tmp = tmp_path_factory.mktemp("table")
    csv = _skewed_csv(tmp / "penguins.csv")
    _, text = new_recipe("penguins", csv, label="species")
    (tmp / "penguins.py").write_text(text)
    run = kerakit.train(tmp / "penguins.py", tmp / "run", epochs=8, verbose=0, log=lambda m: None)
    return tmp, text, run


def test_the_model_takes_one_raw_input_per_column_and_preprocesses_inside(table_run):
    import keras
    import tensorflow as tf

    _, text, run = table_run
    assert "NUMBERS = ['bill_mm']" in text and "CATEGORIES = ['island', 'observer']" in text
    assert "MISSING_FLAGS = ['bill_mm']" in text
    model = keras.saving.load_model(run.path / "model.keras")
    # The identifier and the leaky code are not inputs; every other column is, as the table has it.
    assert {t.name: str(t.dtype) for t in model.inputs} == {"bill_mm": "float32", "island": "string",
                                                             "observer": "string"}
    assert {"bill_mm_scaled", "island_lookup", "observer_lookup"} <= {layer.name for layer in model.layers}

    def predict(bill, island, observer="Zoé"):
        return model({"bill_mm": tf.constant([[bill]], tf.float32), "island": tf.constant([[island]]),
                      "observer": tf.constant([[observer]])}).numpy()

    # A missing category ("") and one training never saw share the out-of-vocabulary slot: the same answer.
    np.testing.assert_array_equal(predict(44.0, ""), predict(44.0, "Atlantis"))
    assert not np.allclose(predict(44.0, "Dream"), predict(44.0, ""))
    # A missing number (NaN, as the dataset stores ".", "NA", "" and text) gets an answer, not a NaN.
    assert np.isfinite(predict(float("nan"), "Dream")).all()
    assert run.metrics["accuracy"] >= 0.7  # at least the majority class on 8 epochs


def test_savedmodel_onnx_and_litert_carry_the_string_inputs_verified_on_raw_rows(table_run):
    from kerakit import runtime
    from kerakit.data import load_data
    from kerakit.export import export

    tmp, _, run = table_run
    report = export(run.path, formats=["savedmodel", "onnx", "tflite"], out=tmp / "export", log=lambda m: None)
    assert {r.artifact: r.verdict for r in report.artifacts} == {"savedmodel": "verified", "onnx": "verified",
                                                                 "tflite": "verified"}
    # Each artifact takes a raw held-out row (text, NaN) and answers as the Keras model does.
    data = load_data(run.recipe(), run.config["config"])
    x, _ = data.arrays("test")
    assert x["island"].dtype == object and isinstance(x["island"][0, 0], str)
    # Rows as users send them: a missing number, a missing category, one training never saw, a stray space.
    x["bill_mm"][:2] = np.nan
    x["island"][1:4, 0] = ["", "Atlantis", "Zoé's island"]
    with runtime.load(run.path / "model.keras") as keras_model:
        reference = runtime.first_output(keras_model, x)
    for name in ("savedmodel", "model.onnx", "model_fp32.tflite"):
        with runtime.load(tmp / "export" / name) as artifact:
            assert {s.name: s.dtype for s in artifact.inputs}["island"] == "object"
            np.testing.assert_allclose(runtime.first_output(artifact, x), reference, atol=1e-5)
