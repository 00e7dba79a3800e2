"""The recipe `kerakit new NAME --from PATH` writes: short, readable, the user's to edit.

    text = recipe_text("penguins", "data/penguins.csv", report)   # report: kerakit.sources.data_report(...)

A table gets an MLP over one feature vector that its `preprocess` builds from
the raw columns (numbers with a missing flag, categories one-hot over the
training split's values, free text as hashed words into a bag of
embeddings), and with several label columns one named output each (OUTPUTS:
a class head per category label, a regression head in the label's units per
number label, each with its own loss); an image folder a transfer-learning model on
raw uint8 pixels (a Keras Applications backbone, two phases: `kerakit.images`; fitted to size with padding in
`preprocess`, scaled inside the model); a folder of
text files a bag of embeddings over hashed words (tokens hashed in
`preprocess`, as recipes/imdb_text.py does: a TextVectorization layer's string
ops would keep TFLite and ONNX from taking the model). Columns the
data report says will hurt (identifiers, a column that alone predicts the
label, constant columns, dates) are left out, each with its
reason in the recipe.
"""

from __future__ import annotations

import re

import numpy as np

from kerakit.errors import KerakitError

MAX_CATEGORIES = 50  # most frequent training-split values of a category column; the rest share "other"
DROP_FLAGS = {"identifier": "an identifier (a distinct value per row)",
              "target_leakage": "it alone predicts the label (leakage?)", "constant": "one value in every row"}


def check_name(name: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise KerakitError(f"Invalid recipe name {name!r}: use lowercase letters, digits and _ "
                           "(starting with a letter), e.g. penguins_mlp.")
    return name


def recipe_text(name: str, dataset: str, report: dict, frame=None) -> str:
    """The recipe file for a data report (a table's needs its text `frame`, for the category values)."""
    if "classes" in report and report.get("kind") == "image":
        return _image_recipe(name, dataset, report)
    if "classes" in report and report.get("kind") == "text":
        return TEXT_RECIPE.format(name=name, read_as=report["read_as"], dataset=dataset,
                                  classes=len(report["classes"]), rule=report["split_rule"])
    if "columns" in report:
        return _table_recipe(name, dataset, report, frame)
    raise KerakitError(f"`kerakit new` writes recipes for tables and image folders; {report['read_as']} is "
                       f"{report.get('kind', 'neither')}.")


def _dropped(report: dict) -> dict[str, str]:
    why = {}
    for flag in report["flags"]:
        reason = DROP_FLAGS.get(flag["check"])
        match = re.search(r"column '([^']+)'", flag["message"])
        if reason and match:
            why.setdefault(match.group(1), reason)
    for column, kind in report["types"].items():
        if kind == "date" and column not in report["tasks"]:
            why.setdefault(column, "a date column (this model takes numbers, categories and text)")
    return why


def _table_recipe(name: str, dataset: str, report: dict, frame) -> str:
    from kerakit.sources.splits import split_labels
    from kerakit.sources.table import feature_names, label_keys, missing_mask

    tasks = report["tasks"]
    if not tasks:
        raise KerakitError("A table needs --label COLUMN: the column the model predicts (or several, "
                           "comma-separated, for one output each).")
    dropped = _dropped(report)
    names = feature_names([c for c in report["types"] if c not in tasks])
    kept = [c for c in names if c not in dropped]
    numbers = [names[c] for c in kept if report["types"][c] == "number"]
    splits, _ = split_labels(frame, tasks, seed=0)
    # A flag only where training rows have gaps: a feature that is 0 in every training row is nothing to learn
    # and a zero-variance column in the normalized vector (it broke an int8 ONNX file of this model).
    flags = [names[c] for c in kept if report["types"][c] == "number"
             and missing_mask(frame[c])[splits == "train"].any()]
    text = [names[c] for c in kept if report["types"][c] == "text"]
    categories = {}
    for c in kept:
        if report["types"][c] not in ("number", "text"):
            train = frame[c][(splits == "train") & ~missing_mask(frame[c])].str.strip().str.lower()
            categories[names[c]] = list(train.value_counts().index[:MAX_CATEGORIES])
    width = len(numbers) + len(flags) + sum(len(v) for v in categories.values())
    if not width and not text:
        raise KerakitError(f"No usable feature columns in {report['read_as']}: every column is a label or "
                           f"left out ({', '.join(f'{c}: {w}' for c, w in dropped.items())}).")
    head = TABLE_HEAD.format(name=name, read_as=report["read_as"], task=report["task"], dataset=dataset,
                             numbers=_literal(numbers), flags=_literal(flags), categories=_literal(list(categories)),
                             dropped=_dict_literal(dropped), width=width, rule=report["split_rule"],
                             defaults=_defaults(report, frame, splits),
                             text=_literal(text), **_label_parts(report, label_keys(list(tasks), names)))
    dropout = 0.2 if report["task"] == "classification" else 0.1
    if len(tasks) > 1:
        return head + TABLE_MODEL.format(name=name, dropout=dropout, **MULTI_HEAD) + MULTI_TAIL
    if report["task"] == "regression":
        return head + TABLE_MODEL.format(name=name, dropout=dropout, **REGRESSOR_HEAD)
    return head + TABLE_MODEL.format(name=name, dropout=dropout, **CLASSIFIER_HEAD) + CLASS_WEIGHT_TAIL


def _defaults(report: dict, frame, splits) -> str:
    """DEFAULTS' config keys: class_weight "balanced" where the label is skewed on the training split (its
    smallest class under IMBALANCE of its largest, as the data report flags it), else "none"."""
    from kerakit.sources.checks import is_imbalanced

    defaults = "epochs=80, batch_size=32, patience=12, clean_categories=False"
    if len(report["tasks"]) > 1 or report["task"] != "classification":
        return defaults
    skewed = is_imbalanced(frame[report["label"]][splits == "train"])
    return defaults + f', class_weight="{"balanced" if skewed else "none"}"'


def _label_parts(report: dict, keys: dict[str, str]) -> dict[str, str]:
    """The recipe lines that name its labels: one label (one output), or several (OUTPUTS, an output each).
    SOURCE says task= only where it is not the one the label's type gives."""
    tasks, label = report["tasks"], report["label"]
    inferred = {c: "regression" if report["types"][c] == "number" else "classification" for c in tasks}
    task = "" if tasks == inferred else f", task={report['task']!r}"
    source = f"dict(label={label!r}{task}, seed=0)"
    if len(tasks) == 1:
        return dict(described=f"label {label!r}", source=source, task_note="", outputs="",
                    labels_out='example["label"]')
    return dict(described=f"labels {', '.join(map(repr, tasks))}", source=source,
                task_note="  # the first output's: the run is judged by it (and by METRIC); see OUTPUTS",
                outputs=OUTPUTS_TEXT.format(outputs="".join(f"    {keys[c]!r}: {t!r},  # column {c!r}\n"
                                                            for c, t in tasks.items())),
                labels_out="{name: example[name] for name in OUTPUTS}")


def _image_recipe(name: str, dataset: str, report: dict) -> str:
    sizes = report.get("images", {})
    median = min(sizes.get("width", {}).get("median", 64), sizes.get("height", {}).get("median", 64))
    # A power of two near the median photo, from 32 (the smallest a backbone takes) to 224 (ImageNet's size).
    size = int(min(224, max(32, 2 ** round(np.log2(max(median, 1))))))
    return IMAGE_RECIPE.format(name=name, read_as=report["read_as"], dataset=dataset, size=size,
                               classes=len(report["classes"]), rule=report["split_rule"])


def _literal(values: list) -> str:
    return "[" + ", ".join(repr(v) for v in values) + "]"


def _dict_literal(mapping: dict) -> str:
    if not mapping:
        return "{}"
    return "{\n" + "".join(f"    {k!r}: {v!r},\n" for k, v in mapping.items()) + "}"


TABLE_HEAD = '''"""{name}: an MLP on {read_as}, raw columns in. Written by `kerakit new`; yours to edit."""

import keras
import numpy as np
import tensorflow as tf

from kerakit.recipe import Input

DESCRIPTION = "MLP on {dataset} ({described}), written by kerakit new."
TASK = "{task}"{task_note}
DATASET = "{dataset}"  # prepared once as a TFDS dataset, versioned by the file's content
SOURCE = {source}  # {rule}
{outputs}DEFAULTS = dict({defaults})

# The model takes the table's columns raw, one named input each, and preprocesses them itself (layers adapted on
# the training split), so every artifact takes a row as the table has it and nothing is written twice.
# Numbers: float32, NaN where missing; scaled by the training mean and spread; a missing one becomes the mean,
# with a 1/0 flag for the columns that have gaps in training.
NUMBERS = {numbers}
MISSING_FLAGS = {flags}
# Categories: text as the table has it; one-hot over the MAX_TOKENS most frequent training values, and one
# out-of-vocabulary slot that a missing value ("") and a value training never saw share. Training rows are
# stripped of spaces when the dataset is prepared, and case counts: "Biscoe" is not "biscoe". clean_categories=true
# cleans inside the model instead (CleanCategory: spaces stripped, lowercased in any alphabet), so " Biscoe",
# "biscoe" and "BISCOE" are one category in training and in every artifact that carries the model -- but only
# SavedModel does: LiteRT has no StringLower or StringStrip builtin (and ai_edge_litert no Flex delegate), ONNX
# no op for StringStrip, so the tflite and onnx exports refuse it, naming the op. Off by default for that reason;
# the data report's spelling_variants flag names the columns where it matters.
CATEGORIES = {categories}
MAX_TOKENS = 50
# Free-text columns: their words, hashed into token ids in `preprocess`, are one more input (a bag of embeddings).
TEXT = {text}
SEQUENCE_LENGTH, HASH_BUCKETS = 64, 10_000  # words per row (cut or padded with id 0); hash buckets
# Columns the data report says would hurt the model, and why.
DROPPED = {dropped}
INPUTS = [*(Input(name, shape=(1,), dtype="float32") for name in NUMBERS),
          *(Input(name, shape=(1,), dtype="string") for name in CATEGORIES)]
if TEXT:
    INPUTS.append(Input("tokens", shape=(SEQUENCE_LENGTH,), dtype="int32"))


@keras.saving.register_keras_serializable(package="{name}")
class CleanCategory(keras.layers.Layer):
    """Category text as one value however it was typed: spaces stripped, lowercased (UTF-8, any alphabet)."""

    def call(self, values):
        return tf.strings.lower(tf.strings.strip(values), encoding="utf-8")


def preprocess(example, config):
    features = {{name: tf.reshape(example[name], [1]) for name in [*NUMBERS, *CATEGORIES]}}
    if TEXT:
        text = tf.strings.reduce_join([example[name] for name in TEXT], separator=" ")
        text = tf.strings.lower(text, encoding="utf-8")
        words = tf.strings.split(tf.strings.regex_replace(text, r"[^\\w']+", " "))[:SEQUENCE_LENGTH]
        ids = tf.strings.to_hash_bucket_fast(words, HASH_BUCKETS - 1) + 1
        ids = tf.pad(ids, [[0, SEQUENCE_LENGTH - tf.shape(ids)[0]]])
        features["tokens"] = tf.ensure_shape(tf.cast(ids, tf.int32), (SEQUENCE_LENGTH,))
    return features, {labels_out}

'''
# Several label columns: one named output each, named as the prepared dataset names each label.
OUTPUTS_TEXT = '''# One output per label column, named as the prepared dataset names the label: a class head (softmax over
# the label's classes) per category label, a regression head in the label's own units per number label. Each
# output has its own loss, and is evaluated and verified by its name.
OUTPUTS = {{
{outputs}}}
'''

TABLE_MODEL = '''
def build_model(hp, data):
    units = hp.Int("units", 16, 256, step=16, default=64)
    depth = hp.Int("layers", 1, 3, default=2)
    dropout = hp.Float("dropout", 0.0, 0.5, step=0.1, default={dropout})
    learning_rate = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=3e-3)

    inputs = {{spec.name: spec.keras() for spec in INPUTS}}
    parts = encode(inputs, data.arrays("train")[0], data.config)
    if TEXT:
        words = keras.layers.Embedding(HASH_BUCKETS, hp.Int("embedding_dim", 8, 64, step=8, default=16))
        parts.append(keras.layers.GlobalAveragePooling1D()(words(inputs["tokens"])))
    x = keras.layers.Concatenate(name="encoded")(parts) if len(parts) > 1 else parts[0]
    for _ in range(depth):
        x = keras.layers.Dense(units, activation="relu")(x)
        x = keras.layers.Dropout(dropout)(x)
{head}
    model = keras.Model(inputs, outputs, name="{name}")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  {loss})
    return model


def encode(inputs, train, config):
    """Each column's preprocessing layers, adapted on `train` (the training split's raw columns)."""
    parts = []
    for name in NUMBERS:
        seen = train[name][~np.isnan(train[name])]
        scale = keras.layers.Normalization(mean=float(seen.mean()) if seen.size else 0.0,
                                           variance=float(seen.var()) if seen.size else 1.0, name=f"{{name}}_scaled")
        missing = keras.ops.not_equal(inputs[name], inputs[name])  # NaN is the one value not equal to itself
        parts.append(keras.ops.where(missing, 0.0, scale(inputs[name])))  # missing: the training mean, scaled
        if name in MISSING_FLAGS:
            parts.append(keras.ops.cast(missing, "float32"))
    clean = config["clean_categories"]
    for name in CATEGORIES:
        cleaner = CleanCategory(name=f"{{name}}_clean") if clean else None
        seen = train[name].reshape(-1).astype(str)
        if clean:  # the vocabulary is cleaned by the layer that cleans the model's inputs
            seen = np.array([v.decode("utf-8") for v in cleaner(tf.constant(seen)).numpy()], dtype=str)
        values, counts = np.unique(seen[seen != ""], return_counts=True)
        vocabulary = list(values[np.argsort(-counts, kind="stable")][:MAX_TOKENS])
        lookup = keras.layers.StringLookup(vocabulary=vocabulary or ["(none)"], output_mode="one_hot",
                                           name=f"{{name}}_lookup")  # index 0: missing or unseen
        parts.append(lookup(cleaner(inputs[name]) if clean else inputs[name]))
    return parts
'''
CLASSIFIER_HEAD = dict(head='''\
    outputs = keras.layers.Dense(len(data.class_names), activation="softmax", name="probabilities")(x)''',
                       # weighted: with class_weight, validation rows are weighed as training's (kerakit train), so
                       # val_accuracy, which picks the best epoch, is the class-balanced accuracy; unweighted, plain
                       loss='loss="sparse_categorical_crossentropy", weighted_metrics=["accuracy"]')
CLASS_WEIGHT_TAIL = '''

def class_weight(data, config):
    """{class index: weight} for model.fit (kerakit train passes it), or None: unweighted.

    class_weight="balanced" weighs each class by n / (classes x its count) on the training split (scikit-learn's
    "balanced"), so every class adds as much to the loss as any other; `kerakit new` sets it where the label is
    skewed (its rarest class under a fifth of its most frequent), since plain cross-entropy on a 95/5 label
    mostly learns to say the majority class, and the rare class is usually the one that matters. The price:
    accuracy can drop, and the probabilities overstate the rare classes (they no longer match the base rate).
    class_weight="none": every row counts once.
    """
    choice = str(config["class_weight"]).lower()
    if choice not in ("balanced", "none"):
        from kerakit.errors import KerakitError

        raise KerakitError(f"Invalid class_weight={config['class_weight']!r}: expected balanced or none.")
    if choice == "none":
        return None
    _, labels = data.arrays("train")
    counts = np.bincount(np.asarray(labels).reshape(-1).astype(int), minlength=len(data.class_names))
    return {i: float(counts.sum() / (len(counts) * c)) if c else 1.0 for i, c in enumerate(counts)}
'''
REGRESSOR_HEAD = dict(head='''\
    _, target = data.arrays("train")  # the model predicts in the target's own units: scaled inside it
    x = keras.layers.Dense(1)(x)
    outputs = keras.layers.Rescaling(float(target.std()) or 1.0, offset=float(target.mean()), name="prediction")(x)''',
                      loss='loss="mse", metrics=["mae"]')
MULTI_HEAD = dict(head='''\
    heads = {name: head(name, task, data, x) for name, task in OUTPUTS.items()}
    outputs = [output for output, _ in heads.values()]  # in OUTPUTS' order: TASK and METRIC judge the first''',
                  loss='''loss={name: LOSSES[task] for name, task in OUTPUTS.items()},
                  loss_weights={name: weight for name, (_, weight) in heads.items()},
                  metrics={name: [METRICS[task]] for name, task in OUTPUTS.items()}''')
MULTI_TAIL = '''

LOSSES = {"classification": "sparse_categorical_crossentropy", "regression": "mse"}
METRICS = {"classification": "accuracy", "regression": "mae"}


def head(name, task, data, x):
    """(one label's output, its loss weight): a class head over the label's classes, or a regression head that
    predicts in the label's own units (scaled inside the model), its squared error weighed by 1 / variance so
    that a label in grams does not drown the others."""
    if task == "classification":
        return keras.layers.Dense(len(data.label_names(name)), activation="softmax", name=name)(x), 1.0
    target = data.output_labels("train")[name]
    scale = float(target.std()) or 1.0
    x = keras.layers.Dense(1)(x)
    return keras.layers.Rescaling(scale, offset=float(target.mean()), name=name)(x), 1.0 / scale**2
'''

IMAGE_RECIPE = '''"""{name}: transfer learning on {read_as}. Written by `kerakit new`; yours to edit.

A Keras Applications backbone (`backbone=`, weights from `weights=`) with a new head, trained in two phases as
the Keras transfer-learning guide does: `epochs` on the head with the backbone frozen, then `fine_tune_epochs`
with the top of the backbone unfrozen at a lower learning rate, BatchNormalization kept in inference mode.
"""

import keras
import tensorflow as tf

from kerakit.images import BACKBONES, backbone, fit_image, unfreeze_top
from kerakit.recipe import Input

DESCRIPTION = "Transfer learning on the image folder {dataset}, written by kerakit new."
TASK = "classification"
DATASET = "{dataset}"  # prepared once as a TFDS dataset (RGB, each image at its own size), versioned by content
SOURCE = dict(seed=0)  # {rule}
# weights: imagenet (downloaded once, as Keras does), none (from scratch), or PATH (a weights file of the
# backbone, or a kerakit run's model.keras: its 'backbone' layer).
DEFAULTS = dict(epochs=15, fine_tune_epochs=15, batch_size=32, patience=6, weights="imagenet")
SIZE = {size}  # photos are fitted to SIZE x SIZE keeping their aspect ratio,
FIT = "letterbox"  # padded with black, nothing cropped; "crop": filling the frame, the centre kept. `kerakit serve`
# reads FIT (and SIZE from the model) from the run's copy of this file to fit the JPEG or PNG a client sends.
INPUTS = [Input("image", shape=(SIZE, SIZE, 3), dtype="uint8")]  # raw RGB pixels, as every artifact takes them


def preprocess(example, config):
    return {{"image": fit_image(example["image"], SIZE, FIT)}}, example["label"]


def build_model(hp, data):
    name = hp.Choice("backbone", list(BACKBONES), default="mobilenet_v3_small")
    dropout = hp.Float("dropout", 0.0, 0.5, step=0.1, default=0.2)
    learning_rate = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=1e-3)
    hp.Float("fine_tune_learning_rate", 1e-6, 1e-3, sampling="log", default=1e-4)
    hp.Float("unfreeze", 0.1, 1.0, step=0.1, default=0.3)  # the top fraction of the backbone's layers
    pretrained = data.config["weights"].lower() != "none"

    base = backbone(name, SIZE, data.config["weights"])
    base.trainable = not pretrained  # phase 1 trains the head alone on a pretrained backbone
    inputs = INPUTS[0].keras()
    x = keras.layers.Rescaling(1.0, name="pixels")(inputs)  # uint8 -> float32 0-255: the backbone scales them
    # Augmentation runs in training only: at inference these layers return their input, and no exported
    # artifact holds an op of theirs.
    x = keras.layers.RandomFlip("horizontal")(x)
    x = keras.layers.RandomRotation(0.05)(x)
    x = keras.layers.RandomZoom(0.1)(x)
    # training=False keeps BatchNormalization on the statistics it was pretrained with, also once unfrozen;
    # from scratch (weights=none) it learns them.
    x = base(x, training=False if pretrained else None)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense({classes}, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="{name}")
    _compile(model, learning_rate)
    return model


def fine_tune(model, hp, data):
    """Phase 2, after `epochs` of phase 1: the top of the backbone learns too, at a lower learning rate (from
    scratch, all of it: it learned in phase 1 already)."""
    pretrained = data.config["weights"].lower() != "none"
    unfreeze_top(model.get_layer("backbone"), hp.get("unfreeze") if pretrained else 1.0)
    _compile(model, hp.get("fine_tune_learning_rate"))


def _compile(model, learning_rate):
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
'''

TEXT_RECIPE = '''"""{name}: a bag-of-embeddings text classifier on {read_as}. Written by `kerakit new`; yours to edit."""

import keras
import tensorflow as tf

from kerakit.recipe import Input

DESCRIPTION = "Bag of embeddings over hashed words on the text folder {dataset}, written by kerakit new."
TASK = "classification"
DATASET = "{dataset}"  # prepared once as a TFDS dataset, versioned by content
SOURCE = dict(seed=0)  # {rule}
DEFAULTS = dict(epochs=30, batch_size=32, patience=5)
SEQUENCE_LENGTH = 256  # words per text (longer texts are cut, shorter padded with id 0)
HASH_BUCKETS = 20_000  # words are hashed, so no vocabulary to fit or ship; id 0 is padding
INPUTS = [Input("tokens", shape=(SEQUENCE_LENGTH,), dtype="int32")]


def preprocess(example, config):
    text = tf.strings.lower(example["text"], encoding="utf-8")
    words = tf.strings.split(tf.strings.regex_replace(text, r"[^\\w']+", " "))[:SEQUENCE_LENGTH]
    ids = tf.strings.to_hash_bucket_fast(words, HASH_BUCKETS - 1) + 1
    ids = tf.pad(ids, [[0, SEQUENCE_LENGTH - tf.shape(ids)[0]]])
    return {{"tokens": tf.ensure_shape(tf.cast(ids, tf.int32), (SEQUENCE_LENGTH,))}}, example["label"]


def build_model(hp, data):
    embedding = hp.Int("embedding_dim", 16, 128, step=16, default=32)
    dropout = hp.Float("dropout", 0.0, 0.5, step=0.1, default=0.3)
    learning_rate = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=3e-3)

    inputs = INPUTS[0].keras()
    x = keras.layers.Embedding(HASH_BUCKETS, embedding)(inputs)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    outputs = keras.layers.Dense({classes}, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="{name}")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model
'''
