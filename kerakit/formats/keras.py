"""Keras 3 `.keras` files (and legacy `.h5` ones): the reference every artifact is verified against.

kerakit reads this format (train writes it); it does not export to it.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import numpy as np

from kerakit.dtypes import from_tf_name
from kerakit.errors import KerakitError
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


LEGACY_SUFFIXES = (".h5", ".hdf5")  # Keras 2's HDF5 files: Keras 3 still loads them


def load_keras_model(path: "str | os.PathLike", objects: dict | None = None):
    """Load a `.keras` file (or a legacy `.h5`), turning the ways it can be broken into one clear message.

    The one Keras loader: every command that opens a model's own file comes
    here. A model inside a finished run loads its recipe first, so custom
    layers the recipe imports (and its CUSTOM_OBJECTS) are known; `objects` (name
    -> class) adds classes the caller knows (train: its recipe's, before the run is
    finished); others come from --custom-objects ($KERAKIT_CUSTOM_OBJECTS).

        model = load_keras_model("runs/demo/model.keras")
    """
    path = Path(path)
    if path.suffix not in (".keras", *LEGACY_SUFFIXES):
        raise KerakitError(f"Invalid model file {str(path)!r}: expected a .keras file (Keras 3 format) "
                           "or a legacy .h5 file.")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise KerakitError(f"{str(path)!r} is not a valid .keras file (not a zip archive: truncated or corrupt?).")
    if path.suffix != ".keras" and not _is_hdf5(path):
        raise KerakitError(f"{str(path)!r} is not a valid legacy {path.suffix} file (not HDF5: truncated or corrupt?).")
    import keras

    from kerakit import runs

    run = runs.find_run(path)
    objects = {**(run.recipe().custom_objects if run is not None else {}), **(objects or {}), **custom_objects()}
    try:
        model = keras.saving.load_model(path, custom_objects=objects or None)
    except (TypeError, ValueError) as e:
        raise _load_error(path, e) from e
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise KerakitError(f"Cannot load {str(path)!r}: {type(e).__name__}: {e} (truncated or corrupt?).") from e
    model_inputs(model)  # a subclassed model that was never called is refused here, in one line
    return model


LOW_PRECISION = ("float16", "bfloat16")  # compute dtypes of mixed_float16, mixed_bfloat16, float16, bfloat16
_LOW_POLICIES = {"mixed_float16", "mixed_bfloat16", "float16", "bfloat16"}


def low_precision_policies(model) -> list[str]:
    """The dtype policies (`mixed_float16`, ...) under which some layer of `model` computes in float16 or bfloat16;
    [] for a float32 model."""
    return sorted({layer.dtype_policy.name for layer in model._flatten_layers(include_self=True)
                   if getattr(layer.dtype_policy, "compute_dtype", None) in LOW_PRECISION})


def float32_copy(model):
    """The same architecture under the float32 policy, holding `model`'s weights as float32.

    Functional, Sequential and subclassed models alike: the model's own config with every low-precision policy
    replaced by float32, rebuilt under the float32 global policy (so layers a subclassed `__init__` makes take
    it too); a layer that still computes in float16 after that (a dtype written into `__init__`) is switched in
    place. The weights of a mixed policy are float32 already, so they are copied exactly.
    """
    import keras

    config = _float32_config(keras.saving.serialize_keras_object(model))
    classes = {type(layer).__name__: type(layer) for layer in model._flatten_layers(include_self=True)}
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:  # the config comes from a model already loaded here, so safe mode has nothing left to guard
        copy = keras.saving.deserialize_keras_object(config, custom_objects=classes, safe_mode=False)
        for layer in copy._flatten_layers(include_self=True):
            if getattr(layer.dtype_policy, "compute_dtype", None) in LOW_PRECISION:
                layer.dtype_policy = "float32"
        copy.set_weights([np.asarray(w).astype(v.dtype) for w, v in zip(model.get_weights(), copy.weights)])
    except (TypeError, ValueError) as e:
        raise KerakitError(f"Cannot make a float32 copy of this {'/'.join(low_precision_policies(model))} model "
                           f"to convert: {_first(e)}. Save a float32 copy yourself (the same layers under "
                           "keras.config.set_dtype_policy('float32'), then set_weights) and export that.") from e
    finally:
        keras.config.set_dtype_policy(policy)
    return copy


def _float32_config(config):
    """A serialized model with every float16/bfloat16 dtype policy (an object, or a name under "dtype") float32."""
    if isinstance(config, list):
        return [_float32_config(v) for v in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") == "DTypePolicy" and config.get("config", {}).get("name") in _LOW_POLICIES:
        return {**config, "config": {**config["config"], "name": "float32"}}
    return {k: "float32" if k == "dtype" and isinstance(v, str) and v in _LOW_POLICIES else _float32_config(v)
            for k, v in config.items()}


def _first(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89HDF\r\n\x1a\n"


def _load_error(path: Path, e: Exception) -> KerakitError:
    """Keras's TypeError or ValueError from `load_model`, as one line saying what to do."""
    missing = re.search(r"Could not locate (?:class|function) '([^']+)'|Unknown (?:layer|object)[^']*'([^']+)'",
                        str(e))
    if missing:
        return KerakitError(
            f"{str(path)!r} uses the custom class {missing.group(1) or missing.group(2)!r}, which is not known here: "
            "pass --custom-objects MODULE (the module that defines it; repeatable), or name it in the recipe's "
            "CUSTOM_OBJECTS.")
    if isinstance(e, ValueError) and ("Lambda" in str(e) or "safe_mode" in str(e)):
        return KerakitError(
            f"{str(path)!r} contains a Lambda layer, which Keras refuses to deserialize in safe mode. "
            "If you trust this file, call keras.config.enable_unsafe_deserialization() before loading.")
    # Keras nests its causes; the innermost says what went wrong
    cause = [line for line in str(e).splitlines() if line.startswith("Exception encountered:")]
    text = (cause[-1].removeprefix("Exception encountered:") if cause else (str(e).splitlines() or [""])[0]).strip()
    legacy = (f". Keras 3 reads legacy {path.suffix} files only in part (no subclassed models): where the model "
              "is built, save it as .keras instead (model.save('model.keras'))") if path.suffix in LEGACY_SUFFIXES else ""
    return KerakitError(f"Cannot load {str(path)!r}: {text[:300].rstrip('.') or type(e).__name__}{legacy}")


def model_inputs(model) -> list[Spec]:
    """The named inputs of a built Keras model: a functional model's Input layers, or a subclassed model's
    `call` arguments with the shapes of its first call (batch dynamic); one dict argument: its keys."""
    traced = getattr(model, "inputs", None)  # a subclassed model has none
    if traced:
        return [Spec(t.name, tuple(t.shape), from_tf_name(str(t.dtype))) for t in traced]
    shapes = getattr(model, "_build_shapes_dict", None)
    if not getattr(model, "built", False) or not shapes:
        raise KerakitError(f"The subclassed model {type(model).__name__!r} was never called, so its inputs are "
                           "unknown: call it once on a batch (model(x)) before saving it.")
    import inspect

    arguments = [n for n in inspect.signature(model.call).parameters if n not in ("training", "mask")]
    dtype = str(getattr(model, "input_dtype", None) or "float32")
    names = [arguments[0] if key == "input_shape" and arguments else key.removesuffix("_shape") for key in shapes]
    values = list(shapes.values())
    if len(values) == 1 and isinstance(values[0], dict):
        names, values = list(values[0]), list(values[0].values())
    if not all(isinstance(v, (list, tuple)) and all(d is None or isinstance(d, int) for d in v) for v in values):
        raise KerakitError(f"The subclassed model {type(model).__name__!r} takes nested inputs {shapes}: kerakit "
                           "takes tensors as arguments or one dict of tensors.")
    return [Spec(n, (None, *tuple(v)[1:]), dtype) for n, v in zip(names, values)]


def call_model(model, features: dict, inputs: list[Spec]):
    """`model` on named `features`, as it takes them (see `_arguments`)."""
    return model(*_arguments(model, features, inputs), training=False)


def _arguments(model, features: dict, inputs: list[Spec]) -> tuple:
    """One tensor; a subclassed model's arguments, in order; or one dict by input name."""
    shapes = None if getattr(model, "inputs", None) else getattr(model, "_build_shapes_dict", None)
    takes_dict = bool(shapes) and isinstance(next(iter(shapes.values())), dict)
    if len(inputs) == 1 and not takes_dict:
        return (features[inputs[0].name],)
    if shapes and not takes_dict:
        return tuple(features[s.name] for s in inputs)
    return (features,)


def model_outputs(model, inputs: list[Spec]) -> list[Spec]:
    """The named outputs of a built Keras model, in Keras order: a dict's keys (Keras flattens them sorted),
    else a functional model's output layers, a subclassed model's output_0, output_1, ... (as `model.export`)."""
    import keras

    traced = getattr(model, "outputs", None)
    if traced:
        struct = getattr(model, "_outputs_struct", None)
        keys = {id(t): k for k, t in struct.items()} if isinstance(struct, dict) else {}
        return [Spec(keys.get(id(t)) or _layer_name(t, i, model), tuple(t.shape), str(t.dtype))
                for i, t in enumerate(traced)]
    symbolic = {s.name: keras.KerasTensor(s.shape, s.dtype, name=s.name) for s in inputs}
    struct = model.compute_output_spec(*_arguments(model, symbolic, inputs))
    if isinstance(struct, dict):
        items = sorted(struct.items())
    else:
        items = [(f"output_{i}", t) for i, t in enumerate(struct if isinstance(struct, (list, tuple)) else [struct])]
    if not all(isinstance(t, keras.KerasTensor) for _, t in items):
        raise KerakitError(f"The model {type(model).__name__!r} returns nested outputs: kerakit takes a tensor, "
                           "a list of tensors or a flat dict of them.")
    return [Spec(k, tuple(t.shape), str(t.dtype)) for k, t in items]


def named_outputs(result, outputs: list[str]) -> dict:
    """A Keras model's answer (a tensor, a list or a dict) by output name."""
    if isinstance(result, dict):
        return {name: result[name] for name in outputs}
    return dict(zip(outputs, result if isinstance(result, (list, tuple)) else [result]))


class KerasPredictor(Predictor):
    format = "keras"

    def __init__(self, path: Path, model=None):
        super().__init__(path)
        self.model = load_keras_model(path) if model is None else model
        self.inputs = model_inputs(self.model)
        self.outputs = model_outputs(self.model, self.inputs)

    def keras_outputs(self) -> list[str]:
        return [s.name for s in self.outputs]

    def _run(self, batch):
        out = named_outputs(call_model(self.model, batch, self.inputs), [s.name for s in self.outputs])
        return {k: np.asarray(v) for k, v in out.items()}


def _layer_name(tensor, index: int, model) -> str:
    history = getattr(tensor, "_keras_history", None)
    return history.operation.name if history is not None else model.output_names[index]


FORMAT = Format(
    name="keras",
    suffix=".keras",
    other_suffixes=LEGACY_SUFFIXES,
    predictor=KerasPredictor,
    triton_platform="keras",
    repository_files=("model.keras",),
    libraries=("keras", "tensorflow"),
    needs_tensorflow=True,
    preference=30,
)
