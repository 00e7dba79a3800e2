"""One inference API over every registered format (Keras, SavedModel, LiteRT, ONNX Runtime, ...).

    with kerakit.runtime.load("runs/demo/export/model_int8.tflite") as p:
        p.inputs                 # [Spec(name='image', shape=(None, 8, 8, 1), dtype='float32')]
        p.predict({"image": x})  # {'probabilities': array(...)}

The format is found from the path a user hands in (`kerakit.formats.for_path`);
code that knows it already (export's artifact spec, a run's deployment choice)
passes its `Format` as `format=`, and nothing looks at the file again. Inputs are
validated by name, rank, shape and dtype; every predictor takes and returns
float arrays for float models, whatever the file stores.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from kerakit import cpu, files, formats, runs
from kerakit.errors import KerakitError
from kerakit.formats.base import Predictor, Spec, shape_text

__all__ = ["Predictor", "Spec", "check_threads", "cores", "detect_format", "example_inputs", "first_output", "load",
           "metric_output", "parse_input_shapes", "predict_all", "save_tuned_options", "tuned_options"]


def detect_format(path: "str | os.PathLike") -> str:
    """The registered format name of a model path (one clear error for anything else)."""
    return formats.for_path(path).name


def load(path: "str | os.PathLike", *, format: "formats.Format | str | None" = None, batch: int | None = None,
         rebench: "bool | float" = False, tuned: bool = True, **options: Any) -> Predictor:
    """Open a model for inference; `options` go to the format's predictor (threads, ...).

    format: the model's `Format` (or its registered name) where the caller knows it; by default
    it is found from the path. A run directory opens its deployment choice (`kerakit.deployment`):
    the fastest verified artifact `kerakit bench RUN` measured on this machine for `batch`
    (default: the smallest batch size benched), with its settings. Measured on another machine
    (other ISA flags, fewer cores) or an unknown one, one line on stderr says what differs, and
    `rebench` (True, or a bound in seconds) re-benches here first; without it a rule chooses
    (`deployment.plan`), as it does for a run never benched; either way its quantized files are
    judged again here first. A run's choice carries its settings whole: the settings `kerakit bench`
    saved beside a file (runtime.json, perhaps on another machine) are not applied beneath them, as
    `kerakit serve RUN` does not. For a file, those saved settings are the defaults (`tuned=False`:
    not). Explicit options win.
    """
    if format is None and Path(path).is_dir() and runs.is_run(path):
        from kerakit import deployment

        run = runs.Run(Path(path))
        choice = deployment.choose(run, batch, deployment.plan(run, rebench))
        return formats.get(choice["format"]).load(choice["path"], **{**choice.get("options", {}), **options})
    fmt = formats.for_path(path) if format is None else formats.get(format) if isinstance(format, str) else format
    return fmt.load(path, **{**(tuned_options(path) if tuned else {}), **options})


def predict_all(predictor: Predictor, inputs: dict[str, np.ndarray], batch: int = 256) -> dict[str, np.ndarray]:
    """Run many inputs in batches of `batch`; outputs concatenated by name."""
    n = len(next(iter(inputs.values())))
    parts: dict[str, list] = {}
    for start in range(0, n, batch):
        out = predictor.predict({k: v[start : start + batch] for k, v in inputs.items()})
        for k, v in out.items():
            parts.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in parts.items()}


def metric_output(predictor: Predictor, requested: str | None = None) -> str:
    """The output a task metric is computed on: `requested`, else the first Keras output (by Keras order,
    as the file records it), never the runtime's first; a multi-output file that records no order needs a name."""
    names = [s.name for s in predictor.outputs]
    if requested is not None:
        if requested not in names:
            raise KerakitError(f"Invalid --metric-output {requested!r}. This model's outputs: {', '.join(names)}.")
        return requested
    if len(names) == 1:
        return names[0]
    order = [n for n in predictor.keras_outputs() or () if n in names]
    if not order:
        raise KerakitError(f"{predictor.path.name} has {len(names)} outputs ({', '.join(names)}) and records no Keras "
                           "order: pass --metric-output NAME.")
    return order[0]


def first_output(predictor: Predictor, inputs: dict[str, np.ndarray], batch: int = 256,
                 output: str | None = None) -> np.ndarray:
    """Validate `inputs`, run them in batches, return `output` (default: the first by Keras order)."""
    return predict_all(predictor, predictor.validate(inputs), batch)[metric_output(predictor, output)]


def parse_input_shapes(texts) -> dict[str, tuple[int, ...]]:
    """`["image=1x64x64x3"]` -> {"image": (1, 64, 64, 3)}: the shapes `--input-shape` gives a dynamic model."""
    shapes = {}
    for text in texts or ():
        name, sep, dims = str(text).partition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1:
            raise KerakitError(f"Invalid --input-shape {text!r}: expected NAME=DIMS with positive integers joined "
                               "by 'x', batch first (e.g. image=1x64x64x3).")
        shapes[name.strip()] = shape
    return shapes


def example_inputs(specs: list[Spec], shapes: "dict[str, tuple] | None" = None, rows: int = 1,
                   seed: int | None = None) -> dict[str, np.ndarray]:
    """`rows` inputs of each spec's shape (zeros, or random with `seed`), dynamic dimensions from `shapes`.

    A dimension other than the batch that the model leaves open (an image of any size) must come
    from `shapes` (`--input-shape image=1x64x64x3`): a made-up 1x1 can break the model.
    """
    shapes = shapes or {}
    unknown = sorted(set(shapes) - {s.name for s in specs})
    if unknown:
        raise KerakitError(f"--input-shape names {', '.join(unknown)}, which the model does not have; "
                           f"its inputs: {', '.join(s.name for s in specs)}.")
    rng = np.random.default_rng(seed) if seed is not None else None
    arrays = {}
    for s in specs:
        given = shapes.get(s.name)
        if given is not None and (len(given) != len(s.shape) or any(
                w is not None and g != w for g, w in zip(given[1:], s.shape[1:]))):
            raise KerakitError(f"Invalid --input-shape {s.name}={'x'.join(map(str, given))}: the model's input "
                               f"{s.name!r} has shape {shape_text(s.shape)}.")
        dims = tuple(given[1:]) if given is not None else tuple(s.shape[1:])
        if None in dims:
            raise KerakitError(f"Input {s.name!r} has dynamic dimensions {shape_text(s.shape)}: give a size, e.g. "
                               f"--input-shape {s.name}=1x{'x'.join('64' if d is None else str(d) for d in s.shape[1:])}.")
        shape = (rows, *dims)
        if s.dtype == "object":
            arrays[s.name] = np.full(shape, "", dtype=object)
        elif rng is None:
            arrays[s.name] = np.zeros(shape, s.dtype)
        else:
            arrays[s.name] = (rng.random(shape).astype(s.dtype) if np.dtype(s.dtype).kind == "f"
                              else rng.integers(0, 10, shape).astype(s.dtype))
    return arrays


def cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    return cpu.cores()


def check_threads(threads: int) -> int:
    """A thread count this machine can run: at most the cores this process may use."""
    if threads > cores():
        raise KerakitError(f"Invalid threads={threads}: this process may use {cores()} core(s); pass at most {cores()}.")
    return threads


def tuned_options(path: "str | os.PathLike") -> dict:
    """The runtime settings `kerakit bench` saved for the model at `path` ({} if there are none)."""
    sidecar = Path(path).parent / runs.RUNTIME_SETTINGS_FILE
    if not sidecar.exists():
        return {}
    settings = _settings(sidecar).get(Path(path).name, {})
    options = settings.get("options", {}) if isinstance(settings, dict) else None
    if not isinstance(options, dict):
        raise KerakitError(f"{sidecar} has no options object for {Path(path).name!r}; "
                           "delete it to re-run the runtime settings sweep (`kerakit bench`).")
    return dict(options)


def save_tuned_options(path: "str | os.PathLike", options: dict, evidence: dict) -> Path:
    """Record the runtime settings to use by default for the model at `path`."""
    sidecar = Path(path).parent / runs.RUNTIME_SETTINGS_FILE
    current = _settings(sidecar) if sidecar.exists() else {}
    current[Path(path).name] = {"options": options, "evidence": evidence}
    return files.write_json(sidecar, current)


def _settings(sidecar: Path) -> dict:
    return files.load_json(sidecar, "delete it to re-run the runtime settings sweep (`kerakit bench`)")
