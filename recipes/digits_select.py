"""Model selection across architectures on the bundled digits: an MLP, a small CNN or a depthwise-separable CNN."""

import keras
import tensorflow as tf

from kerakit.recipe import Input

DESCRIPTION = "MLP, CNN or separable CNN on the bundled digits: the architecture is a hyperparameter (tune picks)."
TASK = "classification"
DATASET = "kerakit_digits"
INPUTS = [Input("image", shape=(8, 8, 1), dtype="float32")]
CLASS_NAMES = [str(d) for d in range(10)]
DEFAULTS = dict(epochs=40, batch_size=64, patience=10)
ARCHS = ["mlp", "cnn", "separable"]


def preprocess(example, config):
    return {"image": tf.cast(example["image"], tf.float32) / 16.0}, example["label"]


def build_model(hp, data):
    # The family first; each family's own hyperparameters live in its conditional scope, so a trial
    # only samples (and the trials table only shows) the ones its model uses.
    arch = hp.Choice("arch", ARCHS, default="cnn")
    learning_rate = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=3e-3)
    inputs = INPUTS[0].keras()
    if arch == "mlp":
        with hp.conditional_scope("arch", "mlp"):
            x = _mlp(inputs, hp.Int("mlp_units", 64, 512, step=64, default=256), hp.Int("mlp_layers", 1, 3, default=2))
    elif arch == "cnn":
        with hp.conditional_scope("arch", "cnn"):
            x = _cnn(inputs, hp.Int("cnn_filters", 16, 64, step=16, default=32), keras.layers.Conv2D)
    else:
        with hp.conditional_scope("arch", "separable"):
            x = _cnn(inputs, hp.Int("sep_filters", 16, 128, step=16, default=64), keras.layers.SeparableConv2D)
    x = keras.layers.Dropout(hp.Float("dropout", 0.0, 0.5, step=0.1, default=0.2))(x)
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=f"digits_{arch}")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _mlp(inputs, units, layers):
    x = keras.layers.Flatten()(inputs)
    for _ in range(layers):
        x = keras.layers.Dense(units, activation="relu")(x)
    return x


def _cnn(inputs, filters, conv):
    x = conv(filters, 3, padding="same", activation="relu")(inputs)
    x = conv(filters * 2, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    return keras.layers.Flatten()(x)
