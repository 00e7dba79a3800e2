"""Regression MLP on the diabetes table: disease progression after one year."""

import keras

from kerakit.recipe import Input

DESCRIPTION = "Regression MLP on scikit-learn's diabetes table (10 features, bundled, offline)."
TASK = "regression"
DATASET = "kerakit_diabetes"
INPUTS = [Input("features", shape=(10,), dtype="float32")]
DEFAULTS = dict(epochs=150, batch_size=32, patience=20)
FEATURE_NAMES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]  # sklearn's load_diabetes


def preprocess(example, config):
    return {"features": example["features"]}, example["label"]


def build_model(hp, data):
    units = hp.Int("units", 16, 128, step=16, default=64)
    learning_rate = hp.Float("learning_rate", 1e-4, 1e-1, sampling="log", default=1e-2)

    normalize = keras.layers.Normalization(name="normalize")
    normalize.adapt(data.features("train", "features"))

    inputs = INPUTS[0].keras()
    x = normalize(inputs)
    x = keras.layers.Dense(units, activation="relu")(x)
    x = keras.layers.Dense(units // 2, activation="relu")(x)
    outputs = keras.layers.Dense(1, name="progression")(x)

    model = keras.Model(inputs, outputs, name="diabetes_mlp")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse", metrics=["mae"])
    return model
