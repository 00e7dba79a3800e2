"""What every format module builds on: tensor specs, the Predictor base class, and `Format`.

A format module (`kerakit/formats/onnx.py`, ...) defines one `Format` object
that owns everything about its format: file naming per quantization, the
options a target may set, conversion, its Predictor, whether it takes a
thread count, the runtime settings `kerakit bench` sweeps, and how model
servers know it (Triton platform, server layout).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kerakit.errors import KerakitError


@dataclass(frozen=True)
class Spec:
    """A named tensor as callers see it: `shape[0]` is None for a dynamic batch."""

    name: str
    shape: tuple
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


class Predictor:
    """Base class of every format's runtime: subclasses set `inputs`/`outputs` and implement `_run`."""

    format = ""
    inputs: list[Spec]
    outputs: list[Spec]

    def __init__(self, path: Path):
        self.path = path

    @property
    def fixed_batch(self) -> int | None:
        """The batch size a model was converted for (an LSTM's TFLite file: 1); None: any."""
        return self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else None

    def predict(self, batch: "dict[str, np.ndarray] | np.ndarray") -> dict[str, np.ndarray]:
        """Run one batch (in slices of `fixed_batch` rows where the model has one). A bare array is
        accepted for a one-input model."""
        checked, step = self.validate(batch), self.fixed_batch
        n = len(next(iter(checked.values()))) if checked else 0
        if step is None or n == step:
            return self._run(checked)
        if n % step:
            raise KerakitError(f"This model takes batches of {step} row(s) at a time; got {n} rows.")
        parts = [self._run({k: v[i:i + step] for k, v in checked.items()}) for i in range(0, n, step)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The hot path: a batch already returned by `validate`, run with no checks."""
        return self._run(batch)

    def validate(self, batch) -> dict[str, np.ndarray]:
        """Inputs checked by name, rank, shape and dtype, cast to the model's dtypes."""
        if not isinstance(batch, dict):
            if len(self.inputs) != 1:
                raise KerakitError(
                    f"This model has {len(self.inputs)} inputs ({', '.join(s.name for s in self.inputs)}): pass a dict by name."
                )
            batch = {self.inputs[0].name: batch}
        expected = {s.name for s in self.inputs}
        missing, extra = expected - set(batch), set(batch) - expected
        if missing or extra:
            raise KerakitError(
                f"Input names {sorted(batch)} do not match the model's inputs {sorted(expected)}"
                + (f" (missing: {', '.join(sorted(missing))})" if missing else "")
                + (f" (unknown: {', '.join(sorted(extra))})" if extra else "") + "."
            )
        return {spec.name: _checked(spec, np.asarray(batch[spec.name])) for spec in self.inputs}

    def _run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def keras_outputs(self) -> list[str] | None:
        """The output names in the Keras model's order, where the file records it (kerakit's metadata).

        `outputs` follow the runtime's order (by name for LiteRT and SavedModel), which is not Keras's.
        """
        return None

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


def _checked(spec: Spec, value: np.ndarray) -> np.ndarray:
    if spec.dtype == "object":  # a string input: text in, as ONNX Runtime takes it
        if value.dtype.kind in "OS" and any(isinstance(v, bytes) for v in value.flat):  # tf.data's strings
            value = np.array([v.decode("utf-8") if isinstance(v, bytes) else v for v in value.flat],
                             dtype=object).reshape(value.shape)
        if value.dtype.kind not in "OU" or not all(isinstance(v, str) for v in value.flat):
            raise KerakitError(f"Input {spec.name!r} has dtype {value.dtype}; expected strings.")
    elif value.dtype.kind not in "biuf":
        raise KerakitError(f"Input {spec.name!r} has dtype {value.dtype}; expected numeric {spec.dtype}.")
    if value.ndim != len(spec.shape):
        raise KerakitError(
            f"Input {spec.name!r} has rank {value.ndim} (shape {value.shape}); "
            f"expected rank {len(spec.shape)} with shape {shape_text(spec.shape)}."
        )
    for got, want in zip(value.shape[1:], spec.shape[1:]):  # the batch: see Predictor.predict
        if want is not None and got != want:
            raise KerakitError(f"Input {spec.name!r} has shape {value.shape}; expected {shape_text(spec.shape)}.")
    if value.dtype.kind == "f" and np.dtype(spec.dtype).kind in "iu":
        raise KerakitError(f"Input {spec.name!r} has dtype {value.dtype}; expected {spec.dtype} (integers).")
    return value.astype(spec.dtype, copy=False)


def shape_text(shape) -> str:
    """(None, None, None, 3) -> "(batch, ?, ?, 3)": the batch, then dimensions the model leaves open."""
    return "(" + ", ".join(("batch" if i == 0 else "?") if d is None else str(d) for i, d in enumerate(shape)) + ")"


@dataclass(frozen=True)
class Variant:
    """One quantization of a format: its `--format` name (also the report's row name) and file name."""

    quantization: str
    artifact: str
    filename: str


@dataclass(frozen=True)
class Option:
    """A per-artifact key a target may set (`io = "int8"`, `opset = 17`); `check` returns the typed value."""

    default: Any
    check: Callable[[Any], Any]
    help: str = ""


@dataclass(frozen=True)
class Footprint:
    """What one inference of an artifact needs on its device, as its format measures it (`Format.measure`).

    A target's `[budget]` (`ram_kb`, `flash_kb`) is checked against `ram_bytes` and `flash_bytes`.
    """

    ram_bytes: int                # working memory the runtime must be given (TFLM: the tensor arena)
    flash_bytes: int              # read-only bytes the device stores (the model)
    macs: int | None = None       # multiply-accumulates per inference, to estimate cycles on a clock
    ram_label: str = "RAM"        # what ram_bytes is, in messages and reports ("tensor arena")
    details: dict = field(default_factory=dict)  # format-specific facts (ops, how it was measured)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Format:
    """Everything kerakit knows about one model format; registered through the `kerakit.formats` entry point.

    suffix: the file suffix, or "" for a directory format recognised by `marker` (a file inside it);
        `other_suffixes`: more it reads (Keras's legacy .h5).
    predictor: `(path, **options) -> Predictor`; `runtime_options` names the options it accepts.
    convert: `(context, spec, path) -> dict | None`, writing the artifact for an `ArtifactSpec` of this
        format (see `kerakit.export.context.ExportContext`); None for formats kerakit only reads.
    settings: `(threads) -> {label: options}`, the runtime settings `kerakit bench` compares;
        the fastest becomes the file's default (saved beside it).
    measure: `(path) -> Footprint`, the RAM, flash and MACs one inference needs on the device; export
        records it and checks it against a target's `[budget]`. None: the format measures nothing.
    timing_note: what `kerakit bench`'s latency of this format means where it is not the device's own
        ("host timing of ..."); printed with its figures.
    fixed_threads: bench's threads label for a format without a thread setting.
    libraries: the distributions that convert and run it; export records their versions in each
        artifact's report row (`library_versions`).
    needs_tensorflow: whether its predictor imports TensorFlow (the CLI then starts it quietly first).
    preference: the registry's order, lowest first (ties by name): a model repository's files are
        preferred in it, and a run's export in it; kerakit's own are 10..60, another package's default 100.
    """

    name: str
    suffix: str
    predictor: Callable[..., Predictor]
    other_suffixes: tuple[str, ...] = ()
    variants: tuple[Variant, ...] = ()
    options: dict[str, Option] = field(default_factory=dict)
    convert: Callable[..., dict | None] | None = None  # returns the report's "conversion" note, if any
    marker: str | None = None
    runtime_options: tuple[str, ...] = ()
    settings: Callable[[list[int]], dict[str, dict]] | None = None
    triton_platform: str = ""
    layout: str | None = None  # the model-server layout its float artifact feeds ("tfserving", "triton")
    repository_files: tuple[str, ...] = ()  # its names in a NAME/VERSION/ model repository (Triton, TF Serving)
    measure: Callable[[Path], Footprint] | None = None
    timing_note: str = ""
    fixed_threads: str = "tf-default"  # Keras and SavedModel run on TensorFlow's process-wide thread pools
    libraries: tuple[str, ...] = ()
    needs_tensorflow: bool = False
    preference: int = 100

    @property
    def takes_threads(self) -> bool:
        return "threads" in self.runtime_options

    def thread_options(self, threads: int) -> dict[str, int]:
        """The runtime options that run this format on `threads` threads (`{"threads": 2}`); one clear
        error for a format whose runtime takes no thread count, rather than dropping it."""
        if not self.takes_threads:
            raise KerakitError(f"Invalid threads={threads}: {self.name} models take no thread count "
                               f"(their runtime's threads: {self.fixed_threads}).")
        return {"threads": threads}

    def library_versions(self) -> dict[str, str]:
        """The installed version of each of `libraries` ({"onnxruntime": "1.23.2", ...}); one not installed
        is left out."""
        from importlib import metadata

        versions = {}
        for dist in self.libraries:
            try:
                versions[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
        return versions

    @property
    def quantizations(self) -> tuple[str, ...]:
        return tuple(v.quantization for v in self.variants)

    def variant(self, quantization: str) -> Variant:
        for v in self.variants:
            if v.quantization == quantization:
                return v
        raise KerakitError(
            f"Invalid quantization={quantization!r} for {self.name}. Expected one of {', '.join(self.quantizations)}."
        )

    def matches(self, path: Path) -> bool:
        """Whether `path` (which exists) is a model of this format."""
        if self.marker is not None:
            return path.is_dir() and (path / self.marker).exists() and (not self.suffix or path.suffix == self.suffix)
        return path.is_file() and path.suffix in (self.suffix, *self.other_suffixes)

    def load(self, path: "str | os.PathLike", **options: Any) -> Predictor:
        unknown = set(options) - set(self.runtime_options)
        if unknown:
            allowed = ", ".join(self.runtime_options) or "none"
            raise KerakitError(f"{self.name} models take no option(s) {', '.join(sorted(unknown))}. Allowed: {allowed}.")
        return self.predictor(Path(path), **options)
