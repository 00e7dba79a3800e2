"""One inference API over every registered format (Keras, SavedModel, LiteRT, ONNX Runtime, ...).

    with kerakit.runtime.load("runs/demo/export/model_int8.tflite") as p:
        p.inputs                 # [Spec(name='image', shape=(None, 8, 8, 1), dtype='float32')]
        p.predict({"image": x})  # {'probabilities': array(...)}

The format comes from the path (`kerakit.formats.for_path`). Inputs are
validated by name, rank, shape and dtype; every predictor takes and returns
float arrays for float models, whatever the file stores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from kerakit import formats, runs
from kerakit.formats.base import Predictor, Spec

__all__ = ["Predictor", "Spec", "detect_format", "first_output", "load", "predict_all", "save_tuned_options",
           "tuned_options"]


def detect_format(path: "str | os.PathLike") -> str:
    """The registered format name of a model path (one clear error for anything else)."""
    return formats.for_path(path).name


def load(path: "str | os.PathLike", **options: Any) -> Predictor:
    """Open a model for inference; `options` go to the format's predictor (threads, ...).

    Settings that `kerakit bench` found fastest for this file (saved beside it)
    are the defaults; explicit options win.
    """
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


def tuned_options(path: "str | os.PathLike") -> dict:
    """The runtime settings `kerakit bench` saved for the model at `path` ({} if none or unreadable)."""
    sidecar = Path(path).parent / runs.RUNTIME_SETTINGS_FILE
    if not sidecar.exists():
        return {}
    try:
        return dict(json.loads(sidecar.read_text()).get(Path(path).name, {}).get("options", {}))
    except (ValueError, AttributeError, TypeError):
        return {}


def save_tuned_options(path: "str | os.PathLike", options: dict, evidence: dict) -> Path:
    """Record the runtime settings to use by default for the model at `path`."""
    sidecar = Path(path).parent / runs.RUNTIME_SETTINGS_FILE
    current = runs.read_json(sidecar) if sidecar.exists() else {}
    current[Path(path).name] = {"options": options, "evidence": evidence}
    return runs.write_json(sidecar, current)
