"""Forecast next month's El Nino sea temperature from the last two years, with a small Conv1D."""

import keras
import tensorflow as tf

from kerakit.recipe import Input

DESCRIPTION = "Conv1D forecast of monthly El Nino sea temperature (statsmodels series, split by time, offline)."
TASK = "forecasting"
DATASET = "kerakit_elnino"  # registered by kerakit.datasets: 732 months, train = first 80 %, test = last 20 %
WINDOW = 24  # months the model sees
HORIZON = 1  # months ahead
SEASON = 12  # months per season: the seasonal-naive forecast repeats the value of a year before
INPUTS = [Input("history", shape=(WINDOW, 1), dtype="float32")]
# Contiguous in time: the first 85 % of the training months train, the rest validate, the last 20 % test.
SPLITS = dict(train="train[:85%]", val="train[85%:]", test="test")
DEFAULTS = dict(epochs=80, batch_size=32, patience=15)


def preprocess(example, config):
    # One month's value; kerakit cuts the windows (WINDOW months -> the month HORIZON later).
    return tf.cast(example["temperature"], tf.float32)


def build_model(hp, data):
    filters = hp.Int("filters", 8, 64, step=8, default=16)
    kernel = hp.Choice("kernel_size", [3, 5, 7], default=5)
    learning_rate = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=3e-3)

    # Adapted on the training windows, so exported models take raw temperatures.
    normalize = keras.layers.Normalization(axis=None, name="normalize")
    normalize.adapt(data.features("train", "history"))

    inputs = INPUTS[0].keras()
    x = normalize(inputs)
    x = keras.layers.Conv1D(filters, kernel, activation="relu")(x)
    x = keras.layers.Conv1D(filters, kernel, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(1)(x)
    # Back to degrees: the model is trained on the same scale as the labels.
    mean, variance = (float(keras.ops.convert_to_numpy(v).reshape(-1)[0]) for v in (normalize.mean, normalize.variance))
    outputs = keras.layers.Rescaling(variance ** 0.5, mean, name="temperature")(x)

    model = keras.Model(inputs, outputs, name="elnino_forecast")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse", metrics=["mae"])
    return model
