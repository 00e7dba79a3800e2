"""The format registry: one module per format, each registering one `Format`.

>>> from kerakit import formats
>>> formats.get("onnx").variant("int8").filename
'model_int8.onnx'
>>> [f.name for f in formats.all_formats()]
['onnx', 'tflite', 'keras', 'savedmodel', 'tflite-micro', 'openvino']

Export, targets, runtime, bench, serve and the server layouts ask the registry
instead of knowing formats. Adding a format is one new file in this package
that ends with `register(Format(...))`, and its module name in `BUILTIN`
below. A format kept outside kerakit is a module on the Python path named in
$KERAKIT_FORMATS (comma-separated), imported with the built-in ones, so every
command (and `kerakit serve`'s worker processes) knows it. Format modules
import their heavy libraries inside functions, so loading the registry costs
nothing.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from kerakit.errors import KerakitError
from kerakit.formats.base import Footprint, Format, Option, Predictor, Spec, Variant

__all__ = ["Footprint", "Format", "Option", "Predictor", "Spec", "Variant", "all_formats", "artifact_names", "for_artifact",
           "for_layout", "for_path", "get", "match", "register", "repository_files"]

# Modules of kerakit.formats, in registration order (also the order a model repository's files are preferred in).
BUILTIN = ("onnx", "tflite", "keras", "savedmodel", "tflite_micro", "openvino")
PLUGINS_ENV = "KERAKIT_FORMATS"  # more format modules to import, comma-separated

_REGISTRY: dict[str, Format] = {}
_loaded = False


def register(fmt: Format) -> Format:
    """Add (or replace) a format; returns it, so a module can end with `FORMAT = register(Format(...))`."""
    _REGISTRY[fmt.name] = fmt
    return fmt


def _builtins() -> dict[str, Format]:
    global _loaded
    if not _loaded:
        _loaded = True
        modules = [importlib.import_module(f"kerakit.formats.{name}") for name in BUILTIN]
        # Format modules import each other (tflite reads savedmodel's signature name): restore BUILTIN's order.
        ordered = {m.FORMAT.name: m.FORMAT for m in modules}
        ordered.update(_REGISTRY)
        _REGISTRY.clear()
        _REGISTRY.update(ordered)
        for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise KerakitError(f"Cannot import format module {module!r} named in ${PLUGINS_ENV}: {e}.") from None
    return _REGISTRY


def all_formats() -> list[Format]:
    return list(_builtins().values())


def get(name: str) -> Format:
    formats = _builtins()
    if name not in formats:
        raise KerakitError(f"Invalid format={name!r}. Expected one of {', '.join(formats)}.")
    return formats[name]


def artifact_names() -> dict[str, tuple[str, str]]:
    """`--format` names -> (format, quantization): savedmodel, tflite-int8, onnx, ..."""
    return {v.artifact: (f.name, v.quantization) for f in all_formats() if f.convert for v in f.variants}


def for_artifact(name: str) -> tuple[Format, str]:
    """The format and quantization of a `--format` name (`tflite-int8` -> tflite, int8)."""
    names = artifact_names()
    if name not in names:
        raise KerakitError(f"Invalid format={name!r}. Expected one of {', '.join(names)}.")
    fmt, quantization = names[name]
    return get(fmt), quantization


def for_layout(layout: str) -> Format | None:
    return next((f for f in all_formats() if f.layout == layout), None)


def match(path: "str | os.PathLike") -> Format | None:
    """The format of an existing path, or None. Suffix formats are tried before marker-only ones."""
    path = Path(path)
    ordered = sorted(all_formats(), key=lambda f: not f.suffix)
    return next((f for f in ordered if f.matches(path)), None)


def for_path(path: "str | os.PathLike") -> Format:
    """The format of a model path, or one clear error naming what is accepted."""
    path = Path(path)
    if not path.exists():
        raise KerakitError(f"Model path {str(path)!r} does not exist.")
    fmt = match(path)
    if fmt is not None:
        return fmt
    files = ", ".join(x for f in all_formats() if f.suffix and f.marker is None for x in (f.suffix, *f.other_suffixes))
    dirs = ", ".join(f"{f.name} ({f'a *{f.suffix} directory with ' if f.suffix else ''}{f.marker})"
                     for f in all_formats() if f.marker)
    if path.is_dir():
        raise KerakitError(f"Directory {str(path)!r} is not a model directory. Expected one of: {dirs}.")
    raise KerakitError(f"Unsupported model file {str(path)!r}. Expected a {files} file, or a directory: {dirs}.")


def repository_files() -> tuple[str, ...]:
    """File names a NAME/VERSION/ model-repository directory may hold, in order of preference."""
    return tuple(name for f in all_formats() for name in f.repository_files)
