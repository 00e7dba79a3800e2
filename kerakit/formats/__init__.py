"""The format registry: one module per format, each defining one `Format`, registered by entry point.

>>> from kerakit import formats
>>> formats.get("onnx").variant("int8").filename
'model_int8.onnx'
>>> [f.name for f in formats.all_formats()]
['onnx', 'tflite', 'keras', 'savedmodel', 'tflite-micro', 'openvino']

Export, targets, runtime, bench, serve and the server layouts ask the registry
instead of knowing formats, and pass the `Format` on; only where a user hands
in a path is its format found from the file (`for_path`, `match`). A format
is registered the packaging standard's way, as an entry point in the group
`kerakit.formats` named after it, pointing at its `Format` object; kerakit's
own are declared in its pyproject.toml, and a format kept in another package
is declared in that package's metadata:

    [project.entry-points."kerakit.formats"]
    toy = "toy_format:FORMAT"

Two entry points with one name are an error, not a replacement. The order is
`Format.preference`, then the name. Format modules import their heavy
libraries inside functions, so loading the registry costs nothing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from kerakit.errors import KerakitError
from kerakit.formats.base import Footprint, Format, Option, Predictor, Spec, Variant

__all__ = ["ENTRY_POINTS", "SIZE_BASELINE", "Footprint", "Format", "Option", "Predictor", "Spec", "Variant",
           "all_formats", "artifact_names", "for_artifact", "for_layout", "for_path", "get", "match",
           "repository_files", "with_threads"]

ENTRY_POINTS = "kerakit.formats"  # the entry-point group a format registers in
# The artifact export reports every other artifact's size against (`size_vs_tflite_fp32`).
SIZE_BASELINE = "tflite"

_REGISTRY: dict[str, Format] = {}


def _registry() -> dict[str, Format]:
    if not _REGISTRY:
        _REGISTRY.update(_load_entry_points())
    return _REGISTRY


def _load_entry_points() -> dict[str, Format]:
    """Every `kerakit.formats` entry point, loaded and checked, in `preference` order.

    Every distribution on the path is read, not only the first of each name: a stale `kerakit.egg-info` in a
    checkout would otherwise hide the installed metadata. One package's metadata found twice declares one
    registration; two packages, or two objects, under one name are an error."""
    from importlib import metadata

    points: dict[str, tuple[metadata.EntryPoint, tuple[str, str], str]] = {}
    for dist in metadata.distributions():
        package = dist.metadata["Name"] or "an unnamed package"
        for point in dist.entry_points.select(group=ENTRY_POINTS):
            where, key = f"{point.value!r} (entry point {point.name!r} of {package})", (_normal(package), point.value)
            if point.name in points and points[point.name][1] != key:
                both = " and ".join(sorted([points[point.name][2], where]))
                raise KerakitError(f"Two formats are named {point.name!r}: {both}. "
                                   "A format name is registered once; uninstall or rename one.")
            points.setdefault(point.name, (point, key, where))
    if not points:
        raise KerakitError(f"No model formats are registered (entry-point group {ENTRY_POINTS!r}): "
                           "install kerakit (pip install -e .) so its entry points are known.")
    loaded = [_loaded(point, where) for point, _, where in points.values()]
    return {f.name: f for f in sorted(loaded, key=lambda f: (f.preference, f.name))}


def _normal(package: str) -> str:
    return re.sub(r"[-_.]+", "-", package).lower()


def _loaded(point, where: str) -> Format:
    try:
        fmt = point.load()
    except Exception as e:  # a plugin's ImportError, AttributeError, or an error in its module
        raise KerakitError(f"Cannot load format {where}: {type(e).__name__}: {e}.") from e
    if not isinstance(fmt, Format) or fmt.name != point.name:
        got = f"a Format named {fmt.name!r}" if isinstance(fmt, Format) else f"{type(fmt).__name__} {str(fmt)[:60]!r}"
        raise KerakitError(f"Format entry point {where} must point at a Format named {point.name!r}; got {got}.")
    return fmt


def all_formats() -> list[Format]:
    return list(_registry().values())


def get(name: str) -> Format:
    formats = _registry()
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


def with_threads() -> list[str]:
    """The names of the formats whose runtime takes a thread count."""
    return [f.name for f in all_formats() if f.takes_threads]


def repository_files() -> tuple[str, ...]:
    """File names a NAME/VERSION/ model-repository directory may hold, in order of preference."""
    return tuple(name for f in all_formats() for name in f.repository_files)
