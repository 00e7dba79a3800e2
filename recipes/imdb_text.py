"""Sentiment on IMDB reviews; tokenizing happens in tf.data, so the model takes token ids.

Tokens are hashed (no vocabulary to fit or ship), which keeps string ops out of
the exported model: SavedModel, TFLite and ONNX all see an int32 [batch, 256] input.
"""

import keras
import tensorflow as tf

from kerakit.recipe import Input

DESCRIPTION = "Bag-of-embeddings sentiment on IMDB reviews (TFDS catalogue: download or --data-dir)."
TASK = "classification"
DATASET = "imdb_reviews"
SPLITS = dict(train="train[:90%]", val="train[90%:]", test="test")
SEQUENCE_LENGTH = 256
HASH_BUCKETS = 20_000  # id 0 is padding
INPUTS = [Input("tokens", shape=(SEQUENCE_LENGTH,), dtype="int32")]
CLASS_NAMES = ["negative", "positive"]
DEFAULTS = dict(epochs=6, batch_size=64, patience=2)


def preprocess(example, config):
    text = tf.strings.lower(example["text"])
    text = tf.strings.regex_replace(text, r"<br\s*/?>|[^a-z0-9' ]", " ")
    words = tf.strings.split(text)[:SEQUENCE_LENGTH]
    ids = tf.strings.to_hash_bucket_fast(words, HASH_BUCKETS - 1) + 1
    ids = tf.pad(ids, [[0, SEQUENCE_LENGTH - tf.shape(ids)[0]]])
    ids = tf.ensure_shape(tf.cast(ids, tf.int32), (SEQUENCE_LENGTH,))
    return {"tokens": ids}, example["label"]


def build_model(hp, data):
    embedding = hp.Int("embedding_dim", 16, 128, step=16, default=32)
    dropout = hp.Float("dropout", 0.0, 0.5, step=0.1, default=0.3)
    learning_rate = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=2e-3)

    inputs = INPUTS[0].keras()
    x = keras.layers.Embedding(HASH_BUCKETS, embedding, mask_zero=False)(inputs)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="probabilities")(x)

    model = keras.Model(inputs, outputs, name="imdb_text")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
