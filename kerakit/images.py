"""Image models' building blocks: a Keras Applications backbone by name with its weights (ImageNet, a local
file, or none), the rule that fits a photo to the model's size, and unfreezing the top of a backbone.

    base = backbone("mobilenet_v3_small", size=96, weights="imagenet")   # takes 0-255 RGB floats
    x = base(x, training=False)      # BatchNormalization stays in inference mode, even once unfrozen
    ...
    unfreeze_top(base, 0.3)          # the fine-tuning phase: the top 30 % of its layers learn too

Every backbone here takes RGB values 0-255 and scales them itself, as it was trained: MobileNetV3 and
EfficientNet(V2) carry their own Rescaling (include_preprocessing), and MobileNetV2's [-1, 1] scaling is built
into the backbone model here. So an image model takes raw pixels, and nothing is written twice.

`fit_image` is the one resizing rule (letterbox, or crop as a recipe's FIT says): the training pipeline (a
recipe's `preprocess`) and the server's decoder of encoded photos (`kerakit.serve.images`, which reads FIT from
the run's copy of the recipe) both call it, so a served JPEG becomes the very pixels training saw.
"""

from __future__ import annotations

from pathlib import Path

from kerakit.errors import KerakitError

# name -> (keras.applications constructor, its keyword arguments, (scale, offset) applied before it or None).
BACKBONES = {
    "mobilenet_v3_small": ("MobileNetV3Small", {"include_preprocessing": True}, None),
    "mobilenet_v3_large": ("MobileNetV3Large", {"include_preprocessing": True}, None),
    "mobilenet_v2": ("MobileNetV2", {}, (1 / 127.5, -1.0)),
    "efficientnet_b0": ("EfficientNetB0", {}, None),  # normalizes 0-255 inputs itself
    "efficientnet_v2_b0": ("EfficientNetV2B0", {"include_preprocessing": True}, None),
    "efficientnet_v2_b1": ("EfficientNetV2B1", {"include_preprocessing": True}, None),
    "efficientnet_v2_b2": ("EfficientNetV2B2", {"include_preprocessing": True}, None),
    # Not Keras Applications: three conv blocks with no BatchNormalization, which learn from a few dozen small
    # photos from scratch, where MobileNetV3 from scratch stayed at chance on the 60 messy test photos (val
    # accuracy 0.57 on 2 classes after 22 epochs). No ImageNet weights: weights=none or weights=PATH.
    "small_cnn": (None, {}, (1 / 255, 0.0)),
}
MIN_SIZE = 32  # the smallest input Keras Applications accept
WEIGHTS_HELP = ("weights=imagenet (downloaded once into ~/.keras/models, as Keras does), weights=none (from "
                "scratch), or weights=PATH: a weights file of this backbone (keras.applications' .h5, a "
                ".weights.h5) or a kerakit run's model.keras whose model has a layer named 'backbone'")


def check_backbone(name: str) -> str:
    if name not in BACKBONES:
        raise KerakitError(f"Unknown backbone={name!r}: expected one of {', '.join(BACKBONES)}.")
    return name


def backbone(name: str, size: int, weights: str = "imagenet", *, layer_name: str = "backbone"):
    """The Keras Applications model `name` without its top, pooled to a vector, for `size` x `size` RGB input
    with values 0-255; `weights`: "imagenet", "none" or a path (see WEIGHTS_HELP)."""
    import keras

    constructor, options, scaling = BACKBONES[check_backbone(name)]
    if size < MIN_SIZE:
        raise KerakitError(f"Image size {size} is below {MIN_SIZE}, the smallest input backbone={name} takes.")
    source = _weights_source(str(weights))
    inputs = keras.Input((size, size, 3), name=f"{layer_name}_pixels")
    tensor = keras.layers.Rescaling(*scaling, name=f"{layer_name}_scaling")(inputs) if scaling else inputs
    if constructor is None:
        if source == "imagenet":
            raise KerakitError(f"backbone={name} has no ImageNet weights: pass weights=none (from scratch) or "
                               f"weights=PATH (a weights file of {name}, or a kerakit run's model.keras).")
        model = _small_cnn(inputs, tensor, layer_name)
    else:
        model = _application(name, constructor, options, tensor, source, layer_name)
    if isinstance(source, Path):
        _load_weights(model, source, name)
    if source is None:
        # Keras builds these with BatchNormalization momentum 0.99-0.999, tuned for ImageNet-length runs: over
        # the few hundred steps of a small folder its moving statistics would never catch up.
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
    return model


def _small_cnn(inputs, tensor, layer_name: str):
    import keras

    x = tensor
    for filters in (32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name=layer_name)


def _application(name: str, constructor: str, options: dict, tensor, source, layer_name: str):
    import keras

    try:
        return getattr(keras.applications, constructor)(
            input_tensor=tensor, include_top=False, pooling="avg", weights="imagenet" if source == "imagenet" else None,
            name=layer_name, **options)
    except Exception as e:  # noqa: BLE001 - Keras's get_file raises a bare Exception when it cannot download
        if source == "imagenet" and str(e).startswith("URL fetch failure"):
            raise KerakitError(f"weights=imagenet: cannot download the ImageNet weights of backbone={name} "
                               f"(offline? {str(e)[:160]}). Pass weights=PATH to a weights file of {name} "
                               "copied from a machine with internet (~/.keras/models/), or weights=none to "
                               "train from scratch.") from None
        raise


def _weights_source(weights: str):
    """"imagenet", None (from scratch) or the Path of a weights file."""
    if weights.lower() in ("imagenet", "none"):
        return None if weights.lower() == "none" else "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise KerakitError(f"weights={weights!r} is neither 'imagenet', 'none' nor an existing file. "
                           f"Expected {WEIGHTS_HELP}.")
    return path


def _load_weights(model, path: Path, name: str) -> None:
    """Weights of the same backbone into `model`: from a weights file, or a saved model's 'backbone' layer."""
    import keras

    try:
        if path.name.endswith(".keras"):
            saved = keras.saving.load_model(path, compile=False, safe_mode=False)
            layer = next((x for x in saved.layers if x.name == model.name), None)
            if layer is None:
                raise ValueError(f"it has no layer named {model.name!r} (layers: "
                                 f"{', '.join(x.name for x in saved.layers)[:200]})")
            model.set_weights(layer.get_weights())
        else:
            _load_strictly(model, path)
    except (ValueError, KeyError, OSError) as e:
        raise KerakitError(f"weights={str(path)!r} does not fit backbone={name}: {' '.join(str(e).split())[:240]}. "
                           f"Expected {WEIGHTS_HELP}.") from None


def _load_strictly(model, path: Path) -> None:
    """`model.load_weights(path)`, where a layer the file does not fill is an error: Keras 3 only warns
    ("Skipping ... Affected layers will retain their freshly-initialized weights") and goes on."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(path)
    skipped = [str(w.message) for w in caught if "Skipping" in str(w.message)]
    if skipped:
        raise ValueError(f"{len(skipped)} part(s) of the model found no weights in the file, e.g. {skipped[0][:120]}")


def unfreeze_top(base, fraction: float) -> int:
    """Make the top `fraction` of `base`'s layers trainable (the rest stay frozen); the count unfrozen.
    BatchNormalization keeps its moving statistics: the model calls `base` with training=False."""
    base.trainable = True
    layers = [layer for layer in base.layers if layer.weights]
    cut = len(layers) - round(len(layers) * fraction)
    for layer in layers[:cut]:
        layer.trainable = False
    return len(layers) - cut


FITS = ("letterbox", "crop")  # how a photo of another shape meets the model's: see fit_image


def check_fit(fit: str) -> str:
    if fit not in FITS:
        raise KerakitError(f"Unknown fit={fit!r}: expected one of {', '.join(FITS)} (letterbox: pad with black, "
                           "nothing cropped; crop: fill the frame, the centre kept).")
    return fit


def fit_image(image, size, fit: str = "letterbox"):
    """An RGB image of any size (uint8, height x width x 3) as `size` x `size` (or `size` = (height, width))
    uint8 pixels, scaled keeping its aspect ratio with antialiasing and rounded back to 0-255. fit="letterbox"
    scales it to fit and pads with black (nothing cropped); fit="crop" scales it to fill and keeps the centre.

    A recipe's `preprocess` (in tf.data) and `kerakit serve`'s decoder of encoded photos call this one function,
    so a served JPEG becomes the very pixels training saw."""
    import tensorflow as tf

    height, width = (size, size) if isinstance(size, int) else size
    pixels = tf.cast(image, tf.float32)
    if check_fit(fit) == "letterbox":
        fitted = tf.image.resize_with_pad(pixels, height, width, antialias=True)
    else:
        shape = tf.cast(tf.shape(pixels)[:2], tf.float32)
        scale = tf.reduce_max(tf.constant([height, width], tf.float32) / shape)
        scaled = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), [height, width])
        fitted = tf.image.resize_with_crop_or_pad(tf.image.resize(pixels, scaled, antialias=True), height, width)
    return tf.cast(tf.clip_by_value(tf.round(fitted), 0.0, 255.0), tf.uint8)
