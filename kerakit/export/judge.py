"""How an artifact's outputs are judged against Keras's: numbers, the task metric, not vacuous.

    check = Check()
    judge(check, got, got_on_eval, reference, quantized=True, tolerances=Verify())
    check.reasons, check.metric_change, check.metric_change_ci

The judgement itself, apart from how the outputs were produced: `kerakit.export.verify` runs an artifact at
export and judges it here; `kerakit.export.rows` judges it again on another machine from the rows the export
stored, in the artifact's own runtime. It imports no runtime and no TensorFlow (`kerakit.deployment` reaches it
while opening a run, below `kerakit.runtime`). The rules are `kerakit.export.verify`'s docstring.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from kerakit import metrics
from kerakit.export.confidence import Change, Outcome, decide, from_differences, more_rows_text, paired_change
from kerakit.export.confidence import reason as metric_reason
from kerakit.export.targets import Verify

CONSTANT_OUTPUT_STD = 1e-6
# An artifact's mean error against Keras, as a fraction of the error of the best constant (the per-output
# mean of Keras's outputs) at most: an input-ignoring artifact fails even where atol would let it pass.
MAX_ERROR_VS_CONSTANT = 0.25
# An output nobody labelled is judged against Keras's own answers on the labelled rows: a class head (a last
# axis of several scores) by how often its argmax agrees with Keras's (at most `max_metric_drop` of rows may
# differ, as for accuracy), any other head by its mean error as a share of Keras's own spread there (the
# mean abs deviation from its mean): at most this much. 10 %: an int8 regression head of a 3-output model
# off by up to 1.23 (its spread 0.9) was 38 %; the heads of the zoo's verified int8 files are within 6 %.
MAX_UNLABELLED_ERROR_VS_SPREAD = 0.10

@dataclass
class Reference:
    """What every artifact is compared with: Keras outputs on the same inputs.

    numeric_inputs holds `split_at` validation rows, then test rows; `rows(n)`
    picks n of them, half from each part where there are two.
    """

    numeric_inputs: dict[str, np.ndarray]
    numeric_outputs: dict[str, np.ndarray]
    split_at: int | None = None
    task: str | None = None  # None: no labels, no metric
    eval_inputs: dict[str, np.ndarray] | None = None
    eval_labels: np.ndarray | None = None
    class_names: list[str] | None = None
    metric_name: str | None = None
    metric_output: str | None = None  # the Keras output the metric is computed on (its first, by Keras order)
    metric: float | None = None
    other_labels: dict[str, np.ndarray] = field(default_factory=dict)  # further labelled outputs, by name
    other_metrics: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # name: (task, metric, Keras's)
    eval_outputs: dict[str, np.ndarray] = field(default_factory=dict)  # Keras's outputs on eval_inputs
    inputs_from: str = ""
    # Where N more verification rows come from, said when these rows cannot decide.
    more_rows: Callable[[int | None], str] = field(default=lambda rows: "more labelled rows")
    # A mixed-precision model: these outputs are its float32 copy's, judged against it (`judge_float32_copy`).
    precision: dict | None = None

    @property
    def size(self) -> int:
        return len(next(iter(self.numeric_inputs.values())))

    def rows(self, n: int) -> np.ndarray:
        total = self.size
        if self.split_at is None or self.split_at >= total:
            return np.arange(min(n, total))
        first = min(-(-n // 2), self.split_at)
        second = min(n - first, total - self.split_at)
        return np.concatenate([np.arange(first), self.split_at + np.arange(second)])


@dataclass
class Check:
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    error_vs_constant: float | None = None  # mean abs error / that of a constant predictor, worst output
    within_tolerance: bool | None = None
    numeric_examples: int | None = None
    metric: float | None = None
    metric_change: float | None = None
    metric_change_ci: list[float] | None = None  # its 95 % interval [low, high] (kerakit.export.confidence)
    metric_rows: int | None = None               # the labelled rows the metric and its interval come from
    output_metrics: dict | None = None  # every labelled output's {metric, value, change}, by name
    verdict: str = "failed"
    reasons: list[str] = field(default_factory=list)
    footprint: dict | None = None  # Format.measure's figures (ram_bytes, flash_bytes, macs, ...)
    budget: dict | None = None     # the target's, where it declares one
    latency: dict | None = None    # batch-1 p50 in its runtime, timed where the budget bounds it (`_judge_latency`)

    def to_dict(self) -> dict:
        return asdict(self)


def _compare(check: Check, got: dict, expected: dict, quantized: bool, tolerances: Verify) -> None:
    abs_errors, rel_errors, vs_constant, close = [], [], [], True
    for name, want in expected.items():
        have = got[name].astype(np.float64).reshape(want.shape)
        want = want.astype(np.float64)
        diff = np.abs(have - want)
        abs_errors.append(float(diff.max()))
        rel_errors.append(float(diff.max() / max(np.abs(want).max(), 1e-12)))
        close &= bool(np.all(diff <= tolerances.atol + tolerances.rtol * np.abs(want)))
        if float(want.std(axis=0).max()) < CONSTANT_OUTPUT_STD:
            check.reasons.append(f"vacuous check: the Keras model gives the same {name!r} for all {len(want)} inputs")
            continue
        constant = float(np.abs(want - want.mean(axis=0)).mean())
        vs_constant.append(float(diff.mean()) / constant)
        if vs_constant[-1] > MAX_ERROR_VS_CONSTANT:
            check.reasons.append(
                f"output {name!r} is no closer to Keras than a constant: mean abs error {diff.mean():.3g} is "
                f"{vs_constant[-1]:.0%} of the constant per-output mean's {constant:.3g} "
                f"(at most {MAX_ERROR_VS_CONSTANT:.0%} allowed)")
    check.max_abs_error, check.max_rel_error, check.within_tolerance = max(abs_errors), max(rel_errors), close
    check.error_vs_constant = round(max(vs_constant), 6) if vs_constant else None
    if not quantized and not close:
        check.reasons.append(
            f"max abs error {check.max_abs_error:.3g} exceeds atol={tolerances.atol:g} + rtol={tolerances.rtol:g}*|keras|"
        )


def _judge_metric(check: Check, outputs: dict, reference: Reference, tolerances: Verify, quantized: bool) -> None:
    """The task metric of `outputs` (on `reference.eval_inputs`) on every labelled output, bound by name, and its
    change from Keras with a 95 % interval; each change must be within the target's limit (`decide`). Rows that
    cannot decide fail a quantized artifact, which is judged by its metric; a float one is judged by its numbers.
    Every other output is judged against Keras's own answers (`_judge_unlabelled`)."""
    judged = dict(reference.other_metrics)
    if reference.metric is not None:
        judged = {reference.metric_output: (reference.task, reference.metric_name, reference.metric), **judged}
    check.output_metrics = {}
    for name, (task, metric_name, keras_value) in judged.items():
        first = name == reference.metric_output
        labels = reference.eval_labels if first else reference.other_labels[name]
        value = metrics.score(task, metric_name, labels, outputs[name], reference.class_names if first else None)
        change = paired_change(task, metric_name, labels, reference.eval_outputs[name], outputs[name])
        change = Change(value - keras_value, change.low, change.high, change.rows, change.method)
        outcome = decide(change, metric_name, keras_value, tolerances.max_metric_drop,
                         tolerances.max_metric_rel_increase)
        check.output_metrics[name] = {"judged_on": "labels", "metric": metric_name, "value": value,
                                      "change": change.value, **_interval_fields(change, outcome)}
        if first:
            check.metric, check.metric_change = value, change.value
            check.metric_change_ci, check.metric_rows = _rounded(change.interval), change.rows
        if outcome.decision == "beyond" or (outcome.decision == "undecided" and quantized):
            reason = metric_reason(change, outcome, metric_name, keras_value, reference.more_rows)
            check.reasons.append(reason if len(judged) == 1 else f"output {name!r}: {reason}")
    for name in sorted(set(reference.eval_outputs) - set(judged)):
        _judge_unlabelled(check, name, outputs[name], reference.eval_outputs[name], tolerances, quantized,
                          reference.more_rows)


def _interval_fields(change: Change, outcome: Outcome) -> dict:
    """What an output's entry in the report says of its change: interval, rows, and the decision."""
    fields = {"change_ci": _rounded(change.interval), "rows": change.rows, "interval": change.method,
              "decision": outcome.decision}
    if outcome.decision == "undecided":
        fields["rows_needed"] = outcome.rows_needed
    return fields


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 6) for v in values]


def _judge_unlabelled(check: Check, name: str, got: np.ndarray, keras: np.ndarray, tolerances: Verify,
                      quantized: bool = True,
                      more_rows: Callable[[int | None], str] = lambda rows: "more labelled rows") -> None:
    """An output without labels, against Keras's outputs on the same rows (see MAX_UNLABELLED_ERROR_VS_SPREAD)."""
    got, keras = np.asarray(got, np.float64).reshape(keras.shape), np.asarray(keras, np.float64)
    if keras.ndim >= 2 and keras.shape[-1] > 1 and _looks_like_scores(keras):
        _judge_argmax_agreement(check, name, got, keras, tolerances, quantized, more_rows)
        return
    spread = float(np.abs(keras - keras.mean(axis=0)).mean())
    share = float(np.abs(got - keras).mean()) / max(spread, 1e-12)
    check.output_metrics[name] = {"judged_on": "keras", "metric": "error_vs_spread", "value": share,
                                  "change": share}
    if share > MAX_UNLABELLED_ERROR_VS_SPREAD:
        check.reasons.append(f"output {name!r} (no labels): mean abs error against Keras is {share:.0%} of Keras's "
                             f"own spread (at most {MAX_UNLABELLED_ERROR_VS_SPREAD:.0%} allowed)")


def _judge_argmax_agreement(check: Check, name: str, got: np.ndarray, keras: np.ndarray, tolerances: Verify,
                            quantized: bool, more_rows: Callable[[int | None], str]) -> None:
    """Class scores nobody labelled: how often their argmax agrees with Keras's, per row (per pixel or position of
    a rank > 2 head, averaged within each row), with a 95 % interval; at most `max_metric_drop` may differ."""
    differs = (got.argmax(-1) != keras.argmax(-1)).reshape(len(keras), -1).mean(1)
    change = from_differences(-differs)  # agreement - 1
    outcome = decide(change, "accuracy", 1.0, tolerances.max_metric_drop, 0.0)
    agreement = 1.0 + change.value
    check.output_metrics[name] = {"judged_on": "keras", "metric": "argmax_agreement", "value": agreement,
                                  "change": change.value, **_interval_fields(change, outcome)}
    if outcome.decision == "within" or (outcome.decision == "undecided" and not quantized):
        return
    where = "rows" if keras.ndim == 2 else "positions"
    figure = (f"its argmax agrees with Keras's on {agreement:.2%} of {where} "
              f"± {100 * (change.high - change.value):.2f} points (95 %, {change.rows:,} rows")
    required = f"{1 - tolerances.max_metric_drop:.2%}"
    if outcome.decision == "beyond":
        check.reasons.append(f"output {name!r} (no labels): {figure}; at least {required} required)")
    else:
        check.reasons.append(f"output {name!r} (no labels): {figure}): these rows cannot decide whether at least "
                             f"{required} do; " + more_rows_text(outcome.rows_needed, change.rows, more_rows))


def _looks_like_scores(keras: np.ndarray) -> bool:
    """Class scores, not a vector of values: probabilities (non-negative, summing to 1 along the last axis)."""
    return bool(keras.min() >= 0 and np.allclose(keras.sum(-1), 1.0, atol=1e-3))


def score_keras(reference: Reference, metric: str | None, metric_output: str) -> None:
    """Keras's own metric on the labelled rows (`reference.eval_outputs` against `eval_labels`), and each further
    labelled output's by its task's metric: what an artifact's metric change is measured from."""
    outputs = reference.eval_outputs
    if reference.task is not None and reference.eval_labels is not None:
        reference.metric_name = metric or metrics.TASK_DEFAULTS[reference.task]
        reference.metric_output = metric_output
        reference.metric = metrics.score(reference.task, reference.metric_name, reference.eval_labels,
                                         outputs[metric_output], reference.class_names)
    for name, labels in reference.other_labels.items():
        other_task = "classification" if labels.dtype.kind in "iu" else "regression"
        other_metric = metrics.TASK_DEFAULTS[other_task]
        reference.other_metrics[name] = (other_task, other_metric,
                                         metrics.score(other_task, other_metric, labels, outputs[name]))


def judge(check: Check, got: dict, rows: np.ndarray, on_eval: "Callable[[], dict] | None", reference: Reference,
          quantized: bool, tolerances: Verify) -> bool:
    """Judge an artifact's outputs `got` on `reference.numeric_inputs[rows]` by its numbers, and those on the
    labelled rows (`on_eval()`, run only where there are labels) by the task metric: `check` gets the figures
    and the reasons. False where an output Keras has is missing (nothing else is judged then)."""
    missing = set(reference.numeric_outputs) - set(got)
    if missing:
        check.reasons.append(f"outputs {sorted(missing)} missing (artifact has {sorted(got)})")
        return False
    check.numeric_examples = len(rows)
    _compare(check, got, {k: v[rows] for k, v in reference.numeric_outputs.items()}, quantized, tolerances)
    if reference.metric is not None or reference.other_metrics:
        _judge_metric(check, on_eval(), reference, tolerances, quantized)
    elif quantized:
        check.reasons.append("a quantized artifact is judged by the task metric, and no labelled data was given")
    return True
