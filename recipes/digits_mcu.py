"""Depthwise-separable CNN on the bundled 8x8 digits, sized for a microcontroller (256 KB RAM, 1 MB flash)."""

import keras
import tensorflow as tf

from kerakit.recipe import Input

DESCRIPTION = "Depthwise-separable CNN on the bundled 8x8 digits, sized for `--target mcu` (TFLite Micro)."
TASK = "classification"
DATASET = "kerakit_digits"
INPUTS = [Input("image", shape=(8, 8, 1), dtype="float32")]
CLASS_NAMES = [str(d) for d in range(10)]
DEFAULTS = dict(epochs=60, batch_size=32, patience=15)


def preprocess(example, config):
    image = tf.cast(example["image"], tf.float32) / 16.0
    return {"image": image}, example["label"]


def _separable(x, filters):
    x = keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    return keras.layers.ReLU()(x)


def build_model(hp, data):
    filters = hp.Int("filters", 16, 64, step=16, default=32)
    dropout = hp.Float("dropout", 0.0, 0.5, step=0.1, default=0.2)
    learning_rate = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=3e-3)

    inputs = INPUTS[0].keras()
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.ReLU()(x)
    x = _separable(x, filters * 2)
    x = keras.layers.MaxPooling2D()(x)
    x = _separable(x, filters * 2)
    x = _separable(x, filters * 4)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="probabilities")(x)

    model = keras.Model(inputs, outputs, name="digits_mcu")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model
