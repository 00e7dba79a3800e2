"""Where verification and calibration data come from: the run's recipe, a `--sample` file, or random inputs."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from kerakit.errors import KerakitError
from kerakit.formats.base import Spec

CALIBRATION_SAMPLES = 300
# A --sample is cut in two disjoint parts: a quarter of it, at least 100 and at most 300 rows (never more
# than half), calibrates int8; the rest verifies. Calibration saturates early, verification does not: the
# zoo's int8 files disagreed with Keras on the same share of 1,000 fresh rows (within noise: 0.3-1.7 %, and
# MobileNetV3's 13-16 %) whether 20, 80 or 300 rows calibrated them, and digits_cnn's on 0-2 of 576
# held-out rows from 25 to 600; while a verdict's 95 % interval narrows as 1 / sqrt(verification rows).
# So a 256-row sample verifies on 156 rows (0.64 points a row) rather than 128 (0.78).
MIN_SAMPLE_CALIBRATION = 100


@dataclass
class VerificationData:
    numeric: dict[str, np.ndarray]           # held-out inputs for the numeric comparison
    inputs_from: str                         # said in the log and the report
    split_at: int | None = None              # numeric holds validation rows up to here, then test rows
    eval_inputs: dict[str, np.ndarray] | None = None
    eval_labels: np.ndarray | None = None
    task: str | None = None
    metric: str | None = None                # the recipe's metric (None: the task's default)
    class_names: list[str] | None = None
    calibration: dict[str, np.ndarray] | None = None
    calibration_from: str = ""               # which rows calibrate, in words: with their hash, what fixes them
    metric_output: str | None = None         # None: the first Keras output
    other_labels: dict[str, np.ndarray] | None = None  # labels of further outputs (--sample label:NAME)
    more_rows: "Callable[[int | None], str] | None" = None  # where N more verification rows come from
    description: str = ""
    normalization: str = "unknown"

    def calibration_record(self) -> dict | None:
        """What an int8 artifact was calibrated on, for the export report and manifest: the same record means
        the same rows in the same order, so a re-export writes the same int8 files."""
        if self.calibration is None:
            return None
        return {"rows": len(next(iter(self.calibration.values()))), "sha256": arrays_sha256(self.calibration),
                "from": self.calibration_from}


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of named arrays: each name, dtype, shape and bytes, by name.

    >>> arrays_sha256({"x": np.zeros((2, 3), "float32")}) == arrays_sha256({"x": np.zeros((3, 2), "float32")})
    False
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        values = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{values.dtype.str}|{values.shape}|".encode())
        if values.dtype.kind != "O":
            digest.update(values.tobytes())
            continue
        for item in values.ravel():  # text: an object array's bytes are pointers
            item = item if isinstance(item, bytes) else str(item).encode()
            digest.update(len(item).to_bytes(8, "big") + item)
    return digest.hexdigest()


def verification_data(run, recipe, sample: "str | os.PathLike | None", data_dir: str | None, inputs: list[Spec],
                      samples: int, outputs: "list[str] | None" = None) -> VerificationData:
    """`samples` held-out inputs, the labelled test split, and a calibration sample, from the best source there is."""
    if run is not None or recipe is not None:
        return _from_recipe(run, recipe, data_dir, inputs, samples)
    if sample is not None:
        return _from_sample(sample, inputs, outputs or [])
    return _random(inputs, samples)


def _from_recipe(run, recipe, data_dir, inputs, samples) -> VerificationData:
    from kerakit.data import load_data
    from kerakit.folds import from_record
    from kerakit.recipe import load_recipe

    loaded = load_recipe(recipe) if recipe is not None else run.recipe()
    config = run.config["config"] if recipe is None else loaded.resolve_config({})[0]
    fold = from_record(run.config.get("fold")) if recipe is None else None  # a `kerakit cv` fold run: its own fold
    data = load_data(loaded, config, data_dir, fold=fold)
    val_x, _ = data.arrays("val")
    test_x, test_y = data.arrays("test")
    # A multi-output recipe (OUTPUTS): the first output is judged by the recipe's metric, the others by their
    # task's on their own test labels, each by name.
    several = loaded.outputs is not None and len(loaded.outputs) > 1
    others = {k: v for k, v in data.output_labels("test").items() if k != loaded.judged_output} if several else {}
    half = -(-samples // 2)
    split_at = min(half, len(next(iter(val_x.values()))))
    numeric = {k: np.concatenate([val_x[k][:split_at], test_x[k][: samples - split_at]]) for k in val_x}
    check_names(numeric, inputs, f"recipe {loaded.name!r}")
    return VerificationData(
        numeric=numeric, split_at=split_at, eval_inputs=test_x, eval_labels=test_y, task=loaded.task,
        metric=loaded.metric, class_names=data.class_names,
        metric_output=loaded.judged_output if several else None, other_labels=others,
        calibration=data.representative_sample(CALIBRATION_SAMPLES),
        calibration_from=data.calibration_rule(CALIBRATION_SAMPLES), description=loaded.description,
        normalization="inside the model (raw inputs)", more_rows=lambda rows: "a larger test split",
        inputs_from=f"{loaded.name}: {len(next(iter(numeric.values())))} val+test inputs, "
                    f"{len(test_y)} labelled test examples")


def _from_sample(sample, inputs, outputs: list[str]) -> VerificationData:
    from kerakit.sample import read_sample, task_of

    data = read_sample(sample)
    arrays = data.inputs
    check_names(arrays, inputs, f"--sample {sample}")
    # `label` is the first Keras output's; with only label:NAME keys, the first labelled one by Keras order.
    metric_output = outputs[0] if None in data.labels or not data.labels else next(
        (o for o in outputs if o in data.labels), None)
    labels = data.labels_by_output(metric_output, outputs) if data.labels else {}
    # Disjoint parts: int8 is judged on rows its calibration never saw (a quantizer that clips
    # outside the calibration range must not look perfect on the rows that set the range).
    n = data.size
    cut = sample_calibration_rows(n)
    held = {k: v[cut:] for k, v in arrays.items()}
    first = labels.get(metric_output)
    return VerificationData(
        numeric=held, eval_inputs=held if labels else None,
        eval_labels=first[cut:] if first is not None else None, task=task_of(first) if first is not None else None,
        metric_output=metric_output, other_labels={k: v[cut:] for k, v in labels.items() if k != metric_output},
        calibration={k: v[:cut] for k, v in arrays.items()}, calibration_from=f"the first {cut} rows of {sample}",
        more_rows=_more_sample_rows,
        inputs_from=f"--sample {sample}: {cut} of its {n} rows calibrate int8, the other {n - cut} verify"
                    + (f" (labels for {', '.join(labels)})" if labels else " (no labels: no metric)"))


def _more_sample_rows(verify_rows: int | None) -> str:
    if verify_rows is None:
        return "a larger --sample FILE"
    return f"a --sample FILE of about {sample_rows_for(verify_rows):,} rows, as its first part calibrates int8"


def sample_calibration_rows(n: int) -> int:
    """How many of a --sample's `n` rows calibrate int8 (the first ones); the rest verify.

    >>> [sample_calibration_rows(n) for n in (30, 160, 256, 1000, 5000)]
    [15, 80, 100, 250, 300]
    """
    return min(n // 2, max(MIN_SAMPLE_CALIBRATION, min(CALIBRATION_SAMPLES, n // 4)))


def sample_rows_for(verify_rows: int) -> int:
    """A --sample size whose verification part is at least `verify_rows` (the inverse of the split above).

    >>> sample_rows_for(156), sample_rows_for(490), sample_rows_for(5000)
    (256, 653, 5300)
    """
    n = verify_rows
    while n - sample_calibration_rows(n) < verify_rows:
        n += max(1, verify_rows - (n - sample_calibration_rows(n)))
    return n


def _random(inputs: list[Spec], samples: int) -> VerificationData:
    rng = np.random.default_rng(0)
    arrays = {}
    for s in inputs:
        shape = (samples + CALIBRATION_SAMPLES, *s.shape[1:])
        if None in shape:
            raise KerakitError(f"Input {s.name!r} has a dynamic shape {s.shape}: pass --recipe or --sample to verify.")
        arrays[s.name] = (rng.random(shape).astype(s.dtype) if np.dtype(s.dtype).kind == "f"
                          else rng.integers(0, 10, shape).astype(s.dtype))
    return VerificationData(numeric={k: v[CALIBRATION_SAMPLES:] for k, v in arrays.items()},
                            calibration={k: v[:CALIBRATION_SAMPLES] for k, v in arrays.items()},
                            calibration_from=f"{CALIBRATION_SAMPLES} random inputs of the model's shapes (seed 0)",
                            inputs_from=f"random inputs of the model's shapes ({samples}; no --recipe or --sample given)")


def check_names(arrays: dict, inputs: list[Spec], where: str) -> None:
    expected = sorted(s.name for s in inputs)
    if sorted(arrays) != expected:
        raise KerakitError(f"Inputs from {where} are named {sorted(arrays)}; the model's inputs are {expected}.")
