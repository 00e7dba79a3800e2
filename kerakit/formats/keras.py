"""Keras 3 `.keras` files: the reference every artifact is verified against.

kerakit reads this format (train writes it); it does not export to it.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import numpy as np

from kerakit.errors import KerakitError
from kerakit.formats import register
from kerakit.formats.base import Format, Predictor, Spec


CUSTOM_OBJECTS_ENV = "KERAKIT_CUSTOM_OBJECTS"  # modules defining custom classes, comma-separated (--custom-objects)


def custom_objects() -> dict:
    """Classes of the modules named in $KERAKIT_CUSTOM_OBJECTS, by name, for `load_model`.

    Importing a module registers what it decorates with
    `@keras.saving.register_keras_serializable`; every class it defines is
    also passed by name, so undecorated custom layers load too.
    """
    import importlib
    import inspect

    found = {}
    for name in filter(None, (m.strip() for m in os.environ.get(CUSTOM_OBJECTS_ENV, "").split(","))):
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise KerakitError(f"Cannot import --custom-objects module {name!r}: {e}. Pass a module on the Python "
                               "path (e.g. my_package.layers; set PYTHONPATH for a loose file).") from None
        found.update({k: v for k, v in vars(module).items() if inspect.isclass(v) and v.__module__ == module.__name__})
    return found


def load_keras_model(path: "str | os.PathLike"):
    """Load a `.keras` file, turning the ways it can be broken into one clear message.

    A model inside a run loads its recipe first, so custom layers the recipe
    imports (and its CUSTOM_OBJECTS) are known; others come from --custom-objects.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise KerakitError(f"Invalid model file {str(path)!r}: expected a .keras file (Keras 3 format).")
    if not zipfile.is_zipfile(path):
        raise KerakitError(f"{str(path)!r} is not a valid .keras file (not a zip archive: truncated or corrupt?).")
    import keras

    from kerakit import runs

    run = runs.find_run(path)
    objects = {**(run.recipe().custom_objects if run is not None else {}), **custom_objects()}
    try:
        return keras.saving.load_model(path, custom_objects=objects or None)
    except TypeError as e:
        missing = re.search(r"Could not locate (?:class|function) '([^']+)'", str(e))
        if not missing:  # Keras nests its causes; the innermost says what went wrong
            cause = [line for line in str(e).splitlines() if line.startswith("Exception encountered:")]
            text = (cause[-1].removeprefix("Exception encountered:") if cause else str(e).splitlines()[0]).strip()
            raise KerakitError(f"Cannot load {str(path)!r}: {text[:300]}") from e
        raise KerakitError(
            f"{str(path)!r} uses the custom class {missing.group(1)!r}, which is not known here: pass "
            "--custom-objects MODULE (the module that defines it; repeatable), or import it in the recipe."
        ) from e
    except ValueError as e:
        if "Lambda" in str(e) or "safe_mode" in str(e):
            raise KerakitError(
                f"{str(path)!r} contains a Lambda layer, which Keras refuses to deserialize in safe mode. "
                "If you trust this file, call keras.config.enable_unsafe_deserialization() before loading."
            ) from e
        raise KerakitError(f"Cannot load {str(path)!r}: {e}") from e
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise KerakitError(f"Cannot load {str(path)!r}: {type(e).__name__}: {e} (truncated or corrupt?).") from e


class KerasPredictor(Predictor):
    format = "keras"

    def __init__(self, path: Path, model=None):
        super().__init__(path)
        self.model = load_keras_model(path) if model is None else model
        self.inputs = [Spec(t.name, tuple(t.shape), str(t.dtype)) for t in self.model.inputs]
        self.outputs = [Spec(_layer_name(t, i, self.model), tuple(t.shape), str(t.dtype))
                        for i, t in enumerate(self.model.outputs)]

    def keras_outputs(self) -> list[str]:
        return [s.name for s in self.outputs]

    def _run(self, batch):
        x = batch[self.inputs[0].name] if len(self.inputs) == 1 else batch
        out = self.model(x, training=False)
        out = out if isinstance(out, (list, tuple)) else [out]
        return {spec.name: np.asarray(o) for spec, o in zip(self.outputs, out)}


def _layer_name(tensor, index: int, model) -> str:
    history = getattr(tensor, "_keras_history", None)
    return history.operation.name if history is not None else model.output_names[index]


FORMAT = register(Format(
    name="keras",
    suffix=".keras",
    predictor=KerasPredictor,
    triton_platform="keras",
    repository_files=("model.keras",),
))
