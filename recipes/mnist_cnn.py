"""CNN on MNIST from the TFDS catalogue (needs TFDS download or a data_dir holding mnist)."""

import keras
import tensorflow as tf

from kerakit.recipe import Input

DESCRIPTION = "CNN on MNIST 28x28 digits (TFDS catalogue: download or --data-dir)."
TASK = "classification"
DATASET = "mnist"
SPLITS = dict(train="train[:90%]", val="train[90%:]", test="test")
INPUTS = [Input("image", shape=(28, 28, 1), dtype="float32")]
CLASS_NAMES = [str(d) for d in range(10)]
DEFAULTS = dict(epochs=8, batch_size=128, patience=3)


def preprocess(example, config):
    image = tf.cast(example["image"], tf.float32) / 255.0
    return {"image": image}, example["label"]


def build_model(hp, data):
    filters = hp.Int("filters", 16, 64, step=16, default=32)
    dropout = hp.Float("dropout", 0.0, 0.5, step=0.1, default=0.25)
    learning_rate = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=1e-3)

    inputs = INPUTS[0].keras()
    x = keras.layers.Conv2D(filters, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(filters * 2, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="probabilities")(x)

    model = keras.Model(inputs, outputs, name="mnist_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
