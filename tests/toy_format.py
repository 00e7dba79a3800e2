"""A format kerakit does not ship, in one file: the proof that adding a format touches nothing else.

`toy` is the Keras model written by Keras's own `model.export(format="tf_saved_model")`
into a `model.tfsm` directory, with its output names beside it (that exporter
names outputs `output_0`, ...). Registered the way any package registers a
format, by an entry point in its metadata (tests/test_formats.py writes that
metadata, `toy = "toy_format:FORMAT"` in the group `kerakit.formats`, and puts
it and tests/ on the Python path), it goes through export, verify, evaluate,
bench and serve like a built-in format.
"""

from __future__ import annotations

import json
from pathlib import Path

from kerakit import files
from kerakit.formats.base import Format, Predictor, Spec, Variant

OUTPUT_NAMES = "output_names.json"


def convert(context, spec, path: Path) -> None:
    with files.atomic_dir(path) as tmp:
        context.model.export(str(tmp), format="tf_saved_model", verbose=False)
        (tmp / OUTPUT_NAMES).write_text(json.dumps(context.output_names))


class ToyPredictor(Predictor):
    format = "toy"

    def __init__(self, path: Path):
        super().__init__(path)
        import tensorflow as tf

        self._fn = tf.saved_model.load(str(path)).signatures["serving_default"]
        names = json.loads((path / OUTPUT_NAMES).read_text())
        _, kwargs = self._fn.structured_input_signature
        self.inputs = [Spec(k, tuple(v.shape), v.dtype.name) for k, v in sorted(kwargs.items())]
        produced = self._fn.structured_outputs
        self._names = {f"output_{i}": name for i, name in enumerate(names)}
        self.outputs = [Spec(self._names[k], tuple(v.shape), v.dtype.name) for k, v in sorted(produced.items())]
        self._tf = tf

    def _run(self, batch):
        out = self._fn(**{k: self._tf.constant(v) for k, v in batch.items()})
        return {self._names[k]: v.numpy() for k, v in out.items()}


FORMAT = Format(
    name="toy",
    suffix=".tfsm",
    marker="saved_model.pb",
    predictor=ToyPredictor,
    variants=(Variant("none", "toy", "model.tfsm"),),
    convert=convert,
    triton_platform="tensorflow_savedmodel",
    repository_files=("model.tfsm",),
    libraries=("tensorflow", "keras"),
    needs_tensorflow=True,
)
