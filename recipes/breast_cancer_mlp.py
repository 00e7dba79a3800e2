"""MLP on the Wisconsin breast cancer table; normalization lives inside the model."""

import keras
from sklearn.datasets import load_breast_cancer

from kerakit.recipe import Input

DESCRIPTION = "MLP on scikit-learn's breast cancer table (30 raw features, bundled, offline)."
TASK = "classification"
DATASET = "kerakit_breast_cancer"
INPUTS = [Input("features", shape=(30,), dtype="float32")]
CLASS_NAMES = ["malignant", "benign"]
DEFAULTS = dict(epochs=60, batch_size=32, patience=12)
FEATURE_NAMES = [str(n) for n in load_breast_cancer().feature_names]
# Report slices (raw test-split features): large and small tumours by mean radius.
SLICES = {
    "mean radius > 15": lambda features, labels: features["features"][:, 0] > 15,
    "mean radius <= 15": lambda features, labels: features["features"][:, 0] <= 15,
}


def preprocess(example, config):
    return {"features": example["features"]}, example["label"]


def build_model(hp, data):
    units = hp.Int("units", 16, 128, step=16, default=32)
    dropout = hp.Float("dropout", 0.0, 0.5, step=0.1, default=0.2)
    learning_rate = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=3e-3)

    # Adapted on the training split here, so exported models take raw features.
    normalize = keras.layers.Normalization(name="normalize")
    normalize.adapt(data.features("train", "features"))

    inputs = INPUTS[0].keras()
    x = normalize(inputs)
    x = keras.layers.Dense(units, activation="relu")(x)
    x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Dense(units, activation="relu")(x)
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="probabilities")(x)

    model = keras.Model(inputs, outputs, name="breast_cancer_mlp")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
