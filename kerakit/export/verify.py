"""Is this artifact the model we trained? Numbers and the task metric, every time.

- Numeric: the artifact and the Keras model run on the same held-out inputs;
  max absolute error, and max error relative to the output's range. Float
  formats must satisfy |artifact - keras| <= atol + rtol * |keras| everywhere.
- Task metric on the test split, and its change from Keras. Quantized formats
  are judged by it (accuracy may drop at most `max_metric_drop`; an error
  metric such as MAE may grow at most `max_metric_rel_increase`).
- Not vacuous: a model that gives the same output for every input proves
  nothing, so that fails too.

>>> check = verify_artifact("runs/demo/export/model_int8.tflite", reference, spec, tolerances)
>>> check.verdict, check.max_abs_error, check.metric_change
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kerakit import runtime
from kerakit.runtime import predict_all
from kerakit.evaluate import task_metrics
from kerakit.export.targets import ArtifactSpec, Verify

CONSTANT_OUTPUT_STD = 1e-6


@dataclass
class Reference:
    """What every artifact is compared with: Keras outputs on the same inputs."""

    numeric_inputs: dict[str, np.ndarray]
    numeric_outputs: dict[str, np.ndarray]
    task: str | None = None  # None: no labels, no metric
    eval_inputs: dict[str, np.ndarray] | None = None
    eval_labels: np.ndarray | None = None
    class_names: list[str] | None = None
    metric_name: str | None = None
    metric: float | None = None
    inputs_from: str = ""


@dataclass
class Check:
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    within_tolerance: bool | None = None
    metric: float | None = None
    metric_change: float | None = None
    verdict: str = "failed"
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def task_metric(task: str, labels, outputs: np.ndarray, class_names) -> tuple[str, float]:
    """The number a quantized artifact is judged by: accuracy, or MAE for regression."""
    name = "accuracy" if task == "classification" else "mae"
    return name, task_metrics(task, labels, outputs, class_names)[name]


def make_reference(keras_predictor: runtime.Predictor, numeric_inputs, *, task=None, eval_inputs=None,
                   eval_labels=None, class_names=None, inputs_from="") -> Reference:
    ref = Reference(numeric_inputs=numeric_inputs, numeric_outputs=predict_all(keras_predictor, numeric_inputs),
                    task=task, eval_inputs=eval_inputs, eval_labels=eval_labels, class_names=class_names,
                    inputs_from=inputs_from)
    if task is not None and eval_inputs is not None and eval_labels is not None:
        first = keras_predictor.outputs[0].name
        ref.metric_name, ref.metric = task_metric(task, eval_labels, predict_all(keras_predictor, eval_inputs)[first],
                                                  class_names)
    return ref


def verify_artifact(path: "str | Path", reference: Reference, spec: ArtifactSpec, tolerances: Verify) -> Check:
    """Run the artifact through the runtime API and judge it against `reference`."""
    check = Check()
    with runtime.load(path) as predictor:
        got = predict_all(predictor, reference.numeric_inputs)
        missing = set(reference.numeric_outputs) - set(got)
        if missing:
            check.reasons.append(f"outputs {sorted(missing)} missing (artifact has {sorted(got)})")
            return check
        abs_errors, rel_errors, close = [], [], True
        for name, want in reference.numeric_outputs.items():
            have = got[name].astype(np.float64).reshape(want.shape)
            want = want.astype(np.float64)
            diff = np.abs(have - want)
            abs_errors.append(float(diff.max()))
            rel_errors.append(float(diff.max() / max(np.abs(want).max(), 1e-12)))
            close &= bool(np.all(diff <= tolerances.atol + tolerances.rtol * np.abs(want)))
            if float(want.std(axis=0).max()) < CONSTANT_OUTPUT_STD:
                check.reasons.append(
                    f"vacuous check: the Keras model gives the same {name!r} for all {len(want)} inputs"
                )
        check.max_abs_error, check.max_rel_error, check.within_tolerance = max(abs_errors), max(rel_errors), close
        if not spec.quantized and not close:
            check.reasons.append(
                f"max abs error {check.max_abs_error:.3g} exceeds atol={tolerances.atol:g} + rtol={tolerances.rtol:g}*|keras|"
            )
        if reference.metric is not None:
            first = predictor.outputs[0].name if predictor.outputs[0].name in got else next(iter(got))
            _, check.metric = task_metric(reference.task, reference.eval_labels,
                                          predict_all(predictor, reference.eval_inputs)[first], reference.class_names)
            check.metric_change = check.metric - reference.metric
            if reference.metric_name == "accuracy" and -check.metric_change > tolerances.max_metric_drop + 1e-12:
                check.reasons.append(
                    f"accuracy dropped {-check.metric_change * 100:.2f} points (allowed {tolerances.max_metric_drop * 100:.2f})"
                )
            if reference.metric_name == "mae":
                allowed = reference.metric * tolerances.max_metric_rel_increase
                if check.metric_change > allowed:
                    check.reasons.append(f"mae grew by {check.metric_change:.4g} (allowed {allowed:.4g})")
        elif spec.quantized:
            check.reasons.append("a quantized artifact is judged by the task metric, and no labelled data was given")
    check.verdict = "failed" if check.reasons else "verified"
    return check
