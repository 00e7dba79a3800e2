"""What a format's `convert(context, spec, path)` gets: the model and what every conversion shares.

The serving SavedModel is traced once per export and every format converts
from it; intermediates (a float ONNX that int8 quantizes) are built once too,
in the export's staging directory, which is removed when the export ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from kerakit.formats.base import Spec


@dataclass
class ExportContext:
    model: object                         # the keras.Model
    inputs: list[Spec]
    output_names: list[str]
    staging: Path
    calibration: dict[str, np.ndarray] | None = None  # representative sample for int8
    metadata: dict = field(default_factory=dict)       # name, description, inputs, outputs, labels
    _built: dict[str, Path] = field(default_factory=dict)

    def savedmodel(self) -> Path:
        """The serving SavedModel (`{input: tensor} -> {output: tensor}`) all formats convert from."""
        from kerakit.formats.savedmodel import write_savedmodel

        return self.intermediate("savedmodel", lambda p: write_savedmodel(self.model, self.inputs, self.output_names, p))

    def intermediate(self, name: str, build: Callable[[Path], None]) -> Path:
        """staging/NAME, built by `build(path)` the first time it is asked for."""
        if name not in self._built:
            path = self.staging / name
            build(path)
            self._built[name] = path
        return self._built[name]
