"""TensorFlow SavedModel directories: what TF Serving loads, and what every other format converts from.

All exported formats are traced from one serving function, `{input_name:
tensor} -> {output_name: tensor}` (`serving_default`), so SavedModel, TFLite
and ONNX expose the same names: the recipe's input names and the Keras output
layers' names, with a dynamic batch dimension.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from kerakit import files
from kerakit.dtypes import from_tf_name, tf_name
from kerakit.errors import KerakitError, native_path
from kerakit.formats.base import Format, Predictor, Spec, Variant

SIGNATURE = "serving_default"


def serving_function(model, inputs: list[Spec], outputs: list[str], batch: int | None = None):
    """(function, input_signature): dicts of named tensors in and out; `batch` fixes the batch size."""
    import tensorflow as tf

    from kerakit.formats.keras import call_model, named_outputs

    signature = [{s.name: tf.TensorSpec((batch, *s.shape[1:]), tf_name(s.dtype), name=s.name) for s in inputs}]

    def serve(features):  # a functional or subclassed model; a tensor, list or dict of outputs
        result = named_outputs(call_model(model, features, inputs), outputs)
        return {name: tf.identity(t, name=name) for name, t in result.items()}

    return serve, signature


def write_savedmodel(model, inputs: list[Spec], outputs: list[str], path: Path, batch: int | None = None) -> None:
    """The serving SavedModel of a Keras model, written atomically to `path` (dynamic batch unless `batch`)."""
    import keras

    fn, signature = serving_function(model, inputs, outputs, batch)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, fn, input_signature=signature)
    with files.atomic_dir(path) as tmp:
        archive.write_out(str(tmp), verbose=False)


METADATA = "assets/kerakit.json"  # name, Keras output order, labels; TF Serving ignores unused assets


def convert(context, spec, path: Path) -> None:
    with files.atomic_dir(path) as tmp:
        shutil.copytree(context.savedmodel(), tmp, dirs_exist_ok=True)
        (tmp / METADATA).parent.mkdir(exist_ok=True)
        (tmp / METADATA).write_text(json.dumps(context.metadata, sort_keys=True))


class SavedModelPredictor(Predictor):
    format = "savedmodel"

    def __init__(self, path: Path):
        super().__init__(path)
        import tensorflow as tf

        name = native_path(path, "TensorFlow's SavedModel loader")  # it takes no bytes: one line if it cannot
        try:
            self._loaded = tf.saved_model.load(name)
        except Exception as e:
            raise KerakitError(f"Cannot load SavedModel {str(path)!r}: {type(e).__name__}: {str(e)[:200]}") from e
        if SIGNATURE not in self._loaded.signatures:
            raise KerakitError(f"SavedModel {str(path)!r} has no {SIGNATURE!r} signature.")
        self._fn = self._loaded.signatures[SIGNATURE]
        _, kwargs = self._fn.structured_input_signature
        self.inputs = [Spec(k, tuple(v.shape), from_tf_name(v.dtype.name)) for k, v in sorted(kwargs.items())]
        self.outputs = [Spec(k, tuple(v.shape), from_tf_name(v.dtype.name))
                        for k, v in sorted(self._fn.structured_outputs.items())]
        self._tf = tf

    def keras_outputs(self) -> list[str] | None:
        metadata = self.path / METADATA
        return json.loads(metadata.read_text()).get("outputs") if metadata.is_file() else None

    def _run(self, batch):
        out = self._fn(**{k: self._tf.constant(v) for k, v in batch.items()})
        return {k: v.numpy() for k, v in out.items()}


FORMAT = Format(
    name="savedmodel",
    suffix="",
    marker="saved_model.pb",
    predictor=SavedModelPredictor,
    variants=(Variant("none", "savedmodel", "savedmodel"),),
    convert=convert,
    triton_platform="tensorflow_savedmodel",
    layout="tfserving",
    repository_files=("saved_model.pb", "model.savedmodel"),
    libraries=("tensorflow", "keras"),
    needs_tensorflow=True,
    preference=40,
)
