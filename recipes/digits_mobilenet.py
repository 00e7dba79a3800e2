"""Edge-style model: MobileNetV3-Small at 96x96 RGB, on the bundled digits upscaled (offline)."""

import keras
import tensorflow as tf

from kerakit.recipe import Input

DESCRIPTION = "MobileNetV3-Small (96x96 RGB, from scratch) on the bundled digits upscaled: an edge-sized model, offline."
TASK = "classification"
DATASET = "kerakit_digits"
SIZE = 96
INPUTS = [Input("image", shape=(SIZE, SIZE, 3), dtype="float32")]
CLASS_NAMES = [str(d) for d in range(10)]
DEFAULTS = dict(epochs=30, batch_size=32, patience=6)


def preprocess(example, config):
    # 0..16 grey 8x8 -> 0..255 RGB 96x96, the range MobileNetV3's own Rescaling expects.
    image = tf.cast(example["image"], tf.float32) * (255.0 / 16.0)
    image = tf.image.resize(image, (SIZE, SIZE), method="bilinear")
    return {"image": tf.image.grayscale_to_rgb(image)}, example["label"]


def build_model(hp, data):
    alpha = hp.Choice("alpha", [0.75, 1.0], default=0.75)
    dropout = hp.Float("dropout", 0.0, 0.4, step=0.1, default=0.2)
    learning_rate = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=2e-3)

    inputs = INPUTS[0].keras()
    backbone = keras.applications.MobileNetV3Small(
        input_shape=(SIZE, SIZE, 3), alpha=alpha, weights=None, include_top=False, pooling="avg",
        include_preprocessing=True,
    )
    # Keras builds MobileNetV3 with BatchNorm momentum 0.999, tuned for ImageNet-length
    # runs; over ~1,000 steps its moving statistics would never catch up.
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    x = backbone(inputs)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="probabilities")(x)

    model = keras.Model(inputs, outputs, name="digits_mobilenet")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
