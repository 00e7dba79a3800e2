"""Small CNN on scikit-learn's 8x8 handwritten digits (bundled, offline)."""

import keras
import tensorflow as tf

from kerakit.recipe import Input

DESCRIPTION = "Small CNN on scikit-learn's 8x8 handwritten digits (bundled, runs offline)."
TASK = "classification"
DATASET = "kerakit_digits"  # registered by kerakit.datasets from sklearn's load_digits
INPUTS = [Input("image", shape=(8, 8, 1), dtype="float32")]
CLASS_NAMES = [str(d) for d in range(10)]
DEFAULTS = dict(epochs=40, batch_size=64, patience=10)
# Report slices: faint and heavy handwriting (mean ink of the preprocessed 0..1 image).
SLICES = {
    "faint (mean ink < 0.26)": lambda features, labels: features["image"].mean(axis=(1, 2, 3)) < 0.26,
    "heavy (mean ink >= 0.35)": lambda features, labels: features["image"].mean(axis=(1, 2, 3)) >= 0.35,
}


def preprocess(example, config):
    # Pixels arrive as 0..16; the model sees 0..1.
    image = tf.cast(example["image"], tf.float32) / 16.0
    return {"image": image}, example["label"]


def build_model(hp, data):
    filters = hp.Int("filters", 16, 64, step=16, default=32)
    dense = hp.Int("dense_units", 32, 256, step=32, default=128)
    dropout = hp.Float("dropout", 0.0, 0.5, step=0.1, default=0.3)
    learning_rate = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=3e-3)

    inputs = INPUTS[0].keras()
    x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(filters * 2, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Dense(dense, activation="relu")(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="probabilities")(x)

    model = keras.Model(inputs, outputs, name="digits_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
