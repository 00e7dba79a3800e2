"""What a format's `convert(context, spec, path)` gets: the model and what every conversion shares.

The serving SavedModel is traced once per export and every format converts
from it; intermediates (a float ONNX that int8 quantizes) are built once too,
in the export's staging directory, which is removed when the export ends.

A model that computes in float16 or bfloat16 (`mixed_float16`) is converted
from its float32 copy (`convert_from`), made once per export: TFLite's builtin
ops have no float16 kernels (every TFLite format failed with "BiasAdd, MatMul,
Relu not supported by TFLite builtin ops"), and ONNX kept the float16 casts
(1.3e-4 from Keras on a 3-layer model, past atol 1e-4). How far the copy is
from the model as trained is measured and judged in `kerakit.export.verify`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from kerakit.formats.base import Spec


@dataclass
class ExportContext:
    model: object                         # the keras.Model formats convert from (float32: see convert_from)
    inputs: list[Spec]
    output_names: list[str]
    staging: Path
    calibration: dict[str, np.ndarray] | None = None  # representative sample for int8
    metadata: dict = field(default_factory=dict)       # name, description, inputs, outputs, labels
    _built: dict[str, Path] = field(default_factory=dict)

    def savedmodel(self) -> Path:
        """The serving SavedModel (`{input: tensor} -> {output: tensor}`) all formats convert from."""
        from kerakit.formats.savedmodel import write_savedmodel

        return self.intermediate("serving-savedmodel",
                                 lambda p: write_savedmodel(self.model, self.inputs, self.output_names, p))

    def intermediate(self, name: str, build: Callable[[Path], None]) -> Path:
        """staging/NAME, built by `build(path)` the first time it is asked for."""
        if name not in self._built:
            path = self.staging / name
            build(path)
            self._built[name] = path
        return self._built[name]


def convert_from(model) -> tuple[object, list[str]]:
    """The Keras model every format converts from, and the low-precision policies it replaces: `model` itself
    and [] for a float32 model; for a mixed-precision one its float32 copy and e.g. ['mixed_float16']."""
    from kerakit.formats.keras import float32_copy, low_precision_policies

    policies = low_precision_policies(model)
    return (float32_copy(model) if policies else model), policies
