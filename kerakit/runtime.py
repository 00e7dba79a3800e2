"""One inference API over every registered format (Keras, SavedModel, LiteRT, ONNX Runtime, ...).

    with kerakit.runtime.load("runs/demo/export/model_int8.tflite") as p:
        p.inputs                 # [Spec(name='image', shape=(None, 8, 8, 1), dtype='float32')]
        p.predict({"image": x})  # {'probabilities': array(...)}

The format comes from the path (`kerakit.formats.for_path`). Inputs are
validated by name, rank, shape and dtype; every predictor takes and returns
float arrays for float models, whatever the file stores.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from kerakit import formats, runs
from kerakit.errors import KerakitError
from kerakit.formats.base import Predictor, Spec

__all__ = ["Predictor", "Spec", "check_threads", "cores", "detect_format", "first_output", "load", "predict_all", "save_tuned_options",
           "tuned_options"]


def detect_format(path: "str | os.PathLike") -> str:
    """The registered format name of a model path (one clear error for anything else)."""
    return formats.for_path(path).name


def load(path: "str | os.PathLike", *, batch: int | None = None, **options: Any) -> Predictor:
    """Open a model for inference; `options` go to the format's predictor (threads, ...).

    A run directory opens its deployment choice (`kerakit.deployment`): the
    fastest verified artifact `kerakit bench RUN` measured on this machine for
    `batch` (default: the smallest batch size benched), with its settings.
    For a file, the settings `kerakit bench` found fastest for it (saved beside
    it) are the defaults. Explicit options win.
    """
    if Path(path).is_dir() and runs.is_run(path):
        from kerakit import deployment

        path, chosen = deployment.artifact(path, batch)
        return formats.for_path(path).load(path, **{**chosen, **options})
    fmt = formats.for_path(path)
    return fmt.load(path, **{**tuned_options(path), **options})


def predict_all(predictor: Predictor, inputs: dict[str, np.ndarray], batch: int = 256) -> dict[str, np.ndarray]:
    """Run many inputs in batches of `batch`; outputs concatenated by name."""
    n = len(next(iter(inputs.values())))
    parts: dict[str, list] = {}
    for start in range(0, n, batch):
        out = predictor.predict({k: v[start : start + batch] for k, v in inputs.items()})
        for k, v in out.items():
            parts.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in parts.items()}


def first_output(predictor: Predictor, inputs: dict[str, np.ndarray], batch: int = 256) -> np.ndarray:
    """Validate `inputs`, run them in batches, return the model's first output."""
    return next(iter(predict_all(predictor, predictor.validate(inputs), batch).values()))


def cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    return runs.write_json(sidecar, current)


def _settings(sidecar: Path) -> dict:
    return runs.load_json(sidecar, "delete it to re-run the runtime settings sweep (`kerakit bench`)")
