"""Is this artifact the model we trained? Numbers and the task metric, every time.

- Numeric: the artifact and the Keras model run on the same held-out inputs;
  max absolute error, and max error relative to the output's range. Float
  formats must satisfy |artifact - keras| <= atol + rtol * |keras| everywhere.
- The task metric (the recipe's, `kerakit.metrics`) on the test split, and its
  change from Keras with a 95 % interval (`kerakit.export.confidence`: paired,
  since both answer the same rows). Quantized formats are judged by it (a
  higher-is-better metric may drop at most `max_metric_drop`; an error metric
  such as MAE may grow at most `max_metric_rel_increase` of its value): the
  whole interval must be within the limit; an interval across the limit means
  these rows cannot decide, which fails too and says how many rows would.
- Not vacuous: a model that gives the same output for every input proves
  nothing, so that fails too; and an artifact must be much closer to Keras
  than the best constant (its mean error at most 25 % of the per-output
  mean's), so an artifact that ignores its input fails even within atol.
- Fits the device: a format that measures its footprint (`Format.measure`:
  RAM, flash, MACs) reports it, and a target's `[budget]` bounds it; a
  budget's `size_mb` bounds any artifact's file, its `latency_ms` the p50 of
  one row (batch 1) in the artifact's runtime, timed here (`kerakit.measure`).
- Mixed precision: a model that computes in float16 or bfloat16 (`mixed_float16`)
  is converted from its float32 copy (`kerakit.formats.keras.float32_copy`), so
  artifacts are compared with that copy at their target's atol; the copy itself
  is judged against the model as trained as a float16 artifact is, by the task
  metric (`judge_float32_copy`), its numbers stated: float16 arithmetic differs
  from float32 past any float32 atol. A copy that fails fails every artifact.

    check = verify_artifact("runs/demo/export/model_int8.tflite", reference, spec, tolerances)
    check.verdict, check.max_abs_error, check.metric_change
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from kerakit import formats, runtime
from kerakit.export.confidence import Change, interval_text
# The judgement itself (imports no runtime: a run is judged again on another machine from stored rows);
# its names stay importable from here.
from kerakit.export.judge import (MAX_UNLABELLED_ERROR_VS_SPREAD, Check, Reference, _compare,  # noqa: F401
                                  _judge_metric, _judge_unlabelled, _looks_like_scores, judge, score_keras)
from kerakit.export.targets import ArtifactSpec, Budget, Verify
from kerakit.runtime import predict_all

# Unit roundoff (half an ulp at 1) of each low-precision compute dtype: every op of a mixed-precision model rounds
# its result by up to this share, so the model differs from its float32 copy by ~1e-3 (1.3-1.5e-3 in issue 23,
# where float32 artifacts are held to 1e-4): the copy is judged by the task metric, its numbers stated.
UNIT_ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}


def make_reference(keras_predictor: runtime.Predictor, numeric_inputs, *, split_at=None, task=None, metric=None,
                   eval_inputs=None, eval_labels=None, class_names=None, inputs_from="", metric_output=None,
                   other_labels=None, more_rows=None) -> Reference:
    """Keras outputs on `numeric_inputs`, and its `metric` (default: the task's) on the labelled inputs,
    computed on `metric_output` (default: the first Keras output); `other_labels` score further outputs.
    `more_rows` says where more labelled rows come from when these cannot decide."""
    ref = Reference(numeric_inputs=numeric_inputs, numeric_outputs=predict_all(keras_predictor, numeric_inputs),
                    split_at=split_at, task=task, eval_inputs=eval_inputs, eval_labels=eval_labels,
                    class_names=class_names, inputs_from=inputs_from, other_labels=dict(other_labels or {}),
                    **({"more_rows": more_rows} if more_rows else {}))
    if eval_inputs is None or (eval_labels is None and not ref.other_labels):
        return ref
    ref.eval_outputs = predict_all(keras_predictor, eval_inputs)
    score_keras(ref, metric, metric_output or keras_predictor.outputs[0].name)
    return ref


def judge_float32_copy(reference: Reference, trained: runtime.Predictor, policies: list[str],
                       tolerances: list[Verify]) -> dict:
    """`reference` holds the float32 copy's outputs; judge the copy against `trained` (the model as trained, in
    `policies`) on the same rows, as a float16 artifact is judged: by the task metric of every labelled output
    (an unlabelled one by argmax agreement or error against its spread), within the strictest of `tolerances`,
    its numbers stated. The record the report keeps as `precision`, with a one-line `summary`.

        record = judge_float32_copy(copy_reference, KerasPredictor(path, model=mixed), ["mixed_float16"], [Verify()])
        record["verdict"], record["max_abs_error"], record["summary"]
    """
    strict = Verify(max_metric_drop=min(t.max_metric_drop for t in tolerances),
                    max_metric_rel_increase=min(t.max_metric_rel_increase for t in tolerances))
    as_trained = make_reference(trained, reference.numeric_inputs, split_at=reference.split_at, task=reference.task,
                                metric=reference.metric_name, eval_inputs=reference.eval_inputs,
                                eval_labels=reference.eval_labels, class_names=reference.class_names,
                                metric_output=reference.metric_output, other_labels=reference.other_labels,
                                more_rows=reference.more_rows)
    check = Check(numeric_examples=reference.size)
    _compare(check, reference.numeric_outputs, as_trained.numeric_outputs, True, strict)
    if as_trained.metric is not None or as_trained.other_metrics:
        _judge_metric(check, reference.eval_outputs, as_trained, strict, quantized=True)
    else:  # no labels: every output against the model's own answers
        check.output_metrics = {}
        for name in sorted(as_trained.numeric_outputs):
            _judge_unlabelled(check, name, reference.numeric_outputs[name], as_trained.numeric_outputs[name], strict,
                              True, reference.more_rows)
    check.verdict = "failed" if check.reasons else "verified"
    first = as_trained.metric_output or next(iter(as_trained.numeric_outputs))
    want, got = as_trained.numeric_outputs[first], reference.numeric_outputs[first]
    classes = want.ndim >= 2 and want.shape[-1] > 1 and (as_trained.task == "classification" or _looks_like_scores(want))
    record = {"policies": policies, "converted_from": "float32 copy", "model_metric": as_trained.metric,
              "argmax_output": first if classes else None,
              "argmax_agreement": float((got.argmax(-1) == want.argmax(-1)).mean()) if classes else None,
              "tolerance": _copy_tolerance(policies, strict, as_trained), **check.to_dict()}
    for bounded in ("footprint", "budget", "latency", "within_tolerance"):  # its numbers are stated, not bounded
        del record[bounded]
    record["summary"] = _copy_summary(record, as_trained)
    return record


def _copy_tolerance(policies: list[str], strict: Verify, as_trained: Reference) -> str:
    """What the float32 copy is held to against a mixed-precision model, and why."""
    dtypes = _compute_dtypes(policies)
    roundoff = ", ".join(f"{d} {UNIT_ROUNDOFF[d]:.1e}" for d in dtypes)
    judged = (f"the task metric ({as_trained.metric_name or 'each labelled output'}: within max_metric_drop="
              f"{strict.max_metric_drop:g} / max_metric_rel_increase={strict.max_metric_rel_increase:g}, the "
              "strictest target's, on a 95 % interval)" if as_trained.metric is not None or as_trained.other_metrics
              else f"agreement with the model's own answers (argmax, or mean error within "
                   f"{MAX_UNLABELLED_ERROR_VS_SPREAD:.0%} of its spread; no labels given)")
    return (f"numbers stated, not bounded: each {'/'.join(dtypes)} op rounds by up to its unit roundoff "
            f"({roundoff}), past any float32 atol; the copy is judged by {judged}, as a float16 artifact is; "
            "every artifact is compared with the copy at its target's atol/rtol")


def _compute_dtypes(policies: list[str]) -> list[str]:
    """float16 of mixed_float16 and of int8_from_mixed_float16; bfloat16 of mixed_bfloat16."""
    return sorted({p.rsplit("_", 1)[-1] for p in policies})


def _copy_summary(record: dict, as_trained: Reference) -> str:
    """`mixed_float16 model: every format converts from a float32 copy of it ...; copy vs model on 600 rows:
    max |Δ| 1.4e-03 (...), accuracy +0.00 points (...), argmax agrees on 100.00 % of rows: verified`."""
    figures = [f"max |Δ| {record['max_abs_error']:.1e} (the model's own {'/'.join(_compute_dtypes(record['policies']))}"
               " arithmetic; the copy is judged as a float16 artifact is)"]
    if as_trained.metric is not None:
        change = Change(record["metric_change"], *record["metric_change_ci"], record["metric_rows"],
                        record["output_metrics"][as_trained.metric_output]["interval"])
        text = interval_text(change, as_trained.metric_name).replace("from Keras", "from the model")
        figures.append(f"{as_trained.metric_name} {text}")
    if record["argmax_agreement"] is not None:
        figures.append(f"argmax agrees on {record['argmax_agreement']:.2%} of rows")
    verdict = "verified" if not record["reasons"] else f"FAILED ({'; '.join(record['reasons'])})"
    return (f"{'/'.join(record['policies'])} model: every format converts from a float32 copy of it and is compared "
            f"with that copy; copy vs model on {record['numeric_examples']:,} rows: {', '.join(figures)}: {verdict}.")


def verify_artifact(path: "str | Path", reference: Reference, spec: ArtifactSpec, tolerances: Verify,
                    budget: Budget = Budget()) -> Check:
    """Run the artifact through the runtime API and judge it against `reference` (and `budget`).
    Its format is the spec's: the file just written is not looked at to find it again."""
    check, fmt = Check(), formats.get(spec.format)
    with runtime.load(path, format=fmt) as predictor:
        rows = reference.rows(tolerances.samples)
        got = predict_all(predictor, {k: v[rows] for k, v in reference.numeric_inputs.items()})
        if not judge(check, got, rows, lambda: predict_all(predictor, reference.eval_inputs), reference,
                     spec.quantized, tolerances):
            return check
        if budget.latency_ms is not None:
            _judge_latency(check, predictor, {k: v[rows[:1]] for k, v in reference.numeric_inputs.items()}, budget,
                           _smaller(spec))
    _judge_footprint(check, Path(path), fmt, budget)
    _judge_size(check, Path(path), budget, _smaller(spec))
    if reference.precision and reference.precision["reasons"]:
        check.reasons.append(f"converted from a float32 copy of this {'/'.join(reference.precision['policies'])} "
                             f"model that does not match the model: {'; '.join(reference.precision['reasons'])}")
    check.verdict = "failed" if check.reasons else "verified"
    return check


def _judge_footprint(check: Check, path: Path, fmt: formats.Format, budget: Budget) -> None:
    """The format's measured RAM, flash and MACs, against the target's budget."""
    if fmt.measure is None:
        return
    footprint = fmt.measure(path)
    check.footprint = footprint.to_dict()
    if budget.footprint_declared:
        check.budget = {k: v for k, v in asdict(budget).items() if v is not None}
    over = []
    if budget.ram_kb is not None and footprint.ram_bytes > budget.ram_kb * 1024:
        over.append(f"{kb(footprint.ram_bytes)} KB of {footprint.ram_label} (the target allows {budget.ram_kb:g} KB)")
    if budget.flash_kb is not None and footprint.flash_bytes > budget.flash_kb * 1024:
        over.append(f"{kb(footprint.flash_bytes)} KB of flash (the target allows {budget.flash_kb:g} KB)")
    if over:
        check.reasons.append(f"over budget: needs {' and '.join(over)}; use fewer filters or units, "
                             "or a target with a larger budget")


def kb(n_bytes: int) -> str:
    """Bytes as KB (1024) with one decimal: 319488 -> '312.0'."""
    return f"{n_bytes / 1024:.1f}"


LATENCY_RULE = dict(precision=0.05, budget_s=1.0, max_calls=200)  # kerakit.measure.StopRule: p50 within 5 %, <= 1 s


def _smaller(spec: ArtifactSpec) -> str:
    """What to try when an artifact is over its size or latency budget."""
    int8 = "" if spec.quantized else ", an int8 artifact"
    return f"use a smaller model or input{int8}, or a target with a larger budget"


def _judge_size(check: Check, path: Path, budget: Budget, advice: str) -> None:
    """The artifact's size on disk against the budget's size_mb (MB = 1024 KB)."""
    if budget.size_mb is None:
        return
    check.budget = {k: v for k, v in asdict(budget).items() if v is not None}
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    if size > budget.size_mb * 1024 * 1024:
        check.reasons.append(f"over budget: {path.name} is {size / 1024 / 1024:.2f} MB (the target allows "
                             f"{budget.size_mb:g} MB); {advice}")


def _judge_latency(check: Check, predictor, row: dict, budget: Budget, advice: str) -> None:
    """The p50 of one row (batch 1) through the artifact's runtime, as loaded by default, timed on this machine
    until it is known within 5 % (or 1 s is spent), against the budget's latency_ms."""
    from kerakit.measure import StopRule, measure

    batch = predictor.validate(row)
    timed = measure({"b1": lambda: predictor.run(batch)}, StopRule(**LATENCY_RULE), warmup=5)["b1"]
    p50_ms = timed.p50_ns / 1e6
    check.budget = {k: v for k, v in asdict(budget).items() if v is not None}
    check.latency = {"p50_ms_b1": round(p50_ms, 4), "precision": timed.precision, "calls": len(timed.samples_ns),
                     "stopped": timed.stopped, "measured_on": "this machine, at export (the runtime's defaults)"}
    if p50_ms > budget.latency_ms:
        check.reasons.append(f"over budget: {p50_ms:.2f} ms per row at batch 1 (p50 on this machine; the target "
                             f"allows {budget.latency_ms:g} ms); {advice}")
