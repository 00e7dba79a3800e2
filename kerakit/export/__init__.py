"""`kerakit export`: a run (or any `.keras` file) -> verified deployment artifacts.

    from kerakit.export import export
    report = export("runs/demo", targets=["server", "edge"])
    [(row.artifact, row.verdict) for row in report.artifacts]
    # [('savedmodel', 'verified'), ('onnx', 'verified'), ('tflite-int8', 'verified'), ...]
    # an artifact that fails verification: VerificationFailed naming each, its `report` already written

Every artifact is converted by its format (`kerakit.formats`), written
atomically, then verified against the Keras model (`kerakit.export.verify`);
figures go to `export_report.json`, verdicts and SHA-256s to the export's
`manifest.json` (and the run's). One format failing does not stop the others:
every artifact is converted, checked and reported, then `export` raises
`VerificationFailed` (a KerakitError carrying the report), as `build` raises
`BuildFailed`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

from kerakit import files, formats, runs
from kerakit.errors import KerakitError, VerificationFailed
from kerakit.export import confidence
from kerakit.export import layouts as _layouts
from kerakit.export.context import ExportContext, convert_from
from kerakit.export.report import ArtifactRow, ExportReport, now
from kerakit.export.rows import store
from kerakit.export.source import verification_data
from kerakit.export.targets import ArtifactSpec, Target, format_target, load_target
from kerakit.export.verify import Check, Reference, judge_float32_copy, kb, make_reference, verify_artifact

__all__ = ["ArtifactRow", "ExportReport", "VerificationFailed", "export", "load_target", "resolve_targets",
           "verify_artifact"]


def export(
    source: "str | os.PathLike",
    targets: "Iterable[str | Target]" = ("server",),
    formats: Iterable[str] = (),
    *,
    out: "str | os.PathLike | None" = None,
    recipe: str | None = None,
    sample: "str | os.PathLike | None" = None,
    data_dir: str | None = None,
    opset: int | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
) -> ExportReport:
    """Export `source` for each target (names or TOML paths) and each `--format` name.

    source: a run directory or a `.keras` file. A file outside a run needs
    `recipe=` (its data verifies and calibrates) or `sample=` (an .npz of
    inputs by name, plus `label` for the metric); with neither, verification
    uses random inputs of the model's shapes and quantized formats cannot be judged.
    progress(done, total) is called after each artifact is converted and checked.
    An artifact that fails verification raises `VerificationFailed` once every artifact is done and the
    report is written; `e.report` is that report.
    """
    from kerakit.formats.keras import load_keras_model

    chosen = resolve_targets(targets, formats, opset)
    if not chosen:
        raise KerakitError("Nothing to export: pass --target NAME (e.g. server, edge) or --format NAME.")
    run, model_path = _resolve_source(Path(source))
    model = load_keras_model(model_path)
    name = (recipe and Path(recipe).stem) or (run.manifest["recipe"]["name"] if run else model_path.stem)
    out = Path(out) if out else (run.export_dir if run else model_path.with_name(f"{model_path.stem}_export"))
    files.ensure_writable_dir(out)
    with contextlib.ExitStack() as locks:  # the output's writer, and the run's (its manifest records the export)
        for directory in {runs.owner(out), *([run.path.resolve()] if run else [])}:
            locks.enter_context(files.writer(directory, "kerakit export"))
        return _export(chosen, run, model_path, model, name, out, recipe, sample, data_dir, log, progress)


def _export(chosen, run, model_path: Path, model, name: str, out: Path, recipe, sample, data_dir, log,
            progress) -> ExportReport:
    from kerakit.formats.keras import KerasPredictor

    source, policies = convert_from(model)  # a mixed-precision model: its float32 copy (export.context)
    keras_predictor = KerasPredictor(model_path, model=source)
    samples = max(t.verify.samples for t in chosen)
    data = verification_data(run, recipe, sample, data_dir, keras_predictor.inputs, samples,
                             [s.name for s in keras_predictor.outputs])
    reference = make_reference(keras_predictor, data.numeric, split_at=data.split_at, task=data.task,
                               metric=data.metric, eval_inputs=data.eval_inputs, eval_labels=data.eval_labels,
                               class_names=data.class_names, inputs_from=data.inputs_from,
                               metric_output=data.metric_output, other_labels=data.other_labels,
                               more_rows=data.more_rows)
    log(f"Verifying against Keras on {data.inputs_from}.")
    if policies:
        reference.precision = judge_float32_copy(reference, KerasPredictor(model_path, model=model), policies,
                                                 [t.verify for t in chosen])
        log(reference.precision["summary"])
    if data.class_names:
        files.write_text(out / runs.LABELS_FILE, "\n".join(data.class_names) + "\n")
    metadata = {"name": name, "description": data.description, "inputs": [s.to_dict() for s in keras_predictor.inputs],
                "outputs": [s.name for s in keras_predictor.outputs], "labels": data.class_names,
                "normalization": data.normalization}

    specs = _plan(chosen)
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=out) as staging:
        context = ExportContext(source, keras_predictor.inputs, metadata["outputs"], Path(staging),
                                data.calibration, metadata)
        rows = []
        for spec, target in specs:
            rows.append(_artifact(spec, target, context, reference, out, log))
            if progress:
                progress(len(rows), len(specs))
    _size_ratios(rows)
    # What the quantized artifacts were judged on, kept to judge them again where they are deployed (export.rows).
    kept = store(out, reference) if any(spec.quantized for spec, _ in specs) else None
    report = ExportReport(source=str(model_path), run=str(run.path) if run else None, out=str(out),
                          targets=[t.name for t in chosen], inputs_from=data.inputs_from,
                          keras_metric=({"name": reference.metric_name, "value": reference.metric}
                                        if reference.metric is not None else None),
                          artifacts=rows, layouts=_write_layouts(chosen, rows, out, name), created=now(),
                          precision=reference.precision, calibration=data.calibration_record(),
                          verification_rows=kept)
    report.write(out)
    _record(report, run, model_path, out)
    report.raise_for_failures()  # written first: the figures of what failed are on disk
    return report


def resolve_targets(targets: "Iterable[str | Target]" = (), formats: Iterable[str] = (),
                    opset: int | None = None) -> list[Target]:
    """The targets (names, TOML paths or Targets) and `--format` names an export will build, as loaded now;
    refused in one line where two of them ask for one artifact with different options."""
    chosen = [t if isinstance(t, Target) else load_target(t) for t in targets]
    chosen += [format_target(f, opset) for f in formats]
    _plan(chosen)
    return chosen


def artifact_options(spec: ArtifactSpec) -> dict:
    """The artifact's format options as they apply: its own values, else its format's defaults."""
    return {key: spec.option(key) for key in sorted(formats.get(spec.format).options)}


def _plan(chosen: list[Target]) -> list[tuple[ArtifactSpec, Target]]:
    """Each artifact once (the first target naming it sets its tolerances and budget). One artifact name is
    one file, so two targets asking for it with different options cannot both be served: refused."""
    specs: dict[str, tuple[ArtifactSpec, Target]] = {}
    for target in chosen:
        for spec in target.artifacts:
            first, by = specs.setdefault(spec.name, (spec, target))
            if artifact_options(first) != artifact_options(spec):
                raise KerakitError(_clash_text(first, by, spec, target))
    return list(specs.values())


def _clash_text(first: ArtifactSpec, by: Target, spec: ArtifactSpec, target: Target) -> str:
    a, b = artifact_options(first), artifact_options(spec)
    differ = [k for k in a if a[k] != b[k]]
    asking = f"{_who(by)} asks" if by is target else f"{_who(by)} and {_who(target)} ask"
    return (f"{asking} for {spec.name} ({spec.filename}) with different options: "
            f"{', '.join(f'{k}={a[k]!r}' for k in differ)} against {', '.join(f'{k}={b[k]!r}' for k in differ)}. "
            f"One export writes one {spec.filename}: make the options agree, or export them to separate --out "
            "directories.")


def _who(target: Target) -> str:
    """`target 'edge'`, or `--format onnx` for a format named on the command line."""
    by_format = target.path is None and target.description.startswith("--format ")
    return target.description if by_format else f"target {target.name!r}"


def _artifact(spec: ArtifactSpec, target: Target, context: ExportContext, reference: Reference, out: Path,
              log: Callable[[str], None]) -> ArtifactRow:
    """Convert one artifact with its format, then verify it: its report row."""
    path = out / spec.filename
    row = ArtifactRow(spec.name, spec.format, spec.quantization, str(path), options=artifact_options(spec),
                      figures={"tolerances": vars(target.verify)})
    row.figures["libraries"] = formats.get(spec.format).library_versions()  # what converts and runs it, as installed
    started = time.perf_counter()
    try:
        note = formats.get(spec.format).convert(context, spec, path)
    except KerakitError:
        raise
    except Exception as e:  # one format failing must not stop the others
        row.reasons = [f"{spec.name} conversion failed: {_first_line(e)}"]
        row.figures["export_seconds"] = round(time.perf_counter() - started, 2)
        log(f"  {spec.name}: conversion failed: {_first_line(e)}")
        return row
    row.figures["export_seconds"] = round(time.perf_counter() - started, 2)
    if note:  # what the conversion chose and why (ops kept in float, the int8 form)
        row.figures["conversion"] = note
    try:
        check = verify_artifact(path, reference, spec, target.verify, target.budget)
    except Exception as e:  # e.g. the runtime cannot load what the converter wrote
        check = Check(reasons=[f"{spec.name} could not run: {_first_line(e)}"])
    figures = check.to_dict()
    row.verdict, row.reasons = figures.pop("verdict"), figures.pop("reasons")
    row.figures.update(size_bytes=_size(path), **figures)
    row.sha256 = _digest(path)
    log(f"  {spec.name}: {check.verdict}" + (f" ({'; '.join(check.reasons)})" if check.reasons else "")
        + _change_text(check, spec, reference) + _footprint_text(check.footprint)
        + (f"; {check.latency['p50_ms_b1']:.3f} ms p50 at batch 1" if check.latency else "")
        + (f"; {note['summary']}" if note and note.get("summary") else ""))
    return row


def _change_text(check: Check, spec: ArtifactSpec, reference: Reference) -> str:
    """`; accuracy -0.28 points ± 0.54 (95 %, 360 rows)`: how sure a verified quantized artifact's metric is (a
    failed one's reason says it already)."""
    if check.reasons or not spec.quantized or check.metric_change_ci is None:
        return ""
    method = check.output_metrics[reference.metric_output]["interval"]
    change = confidence.Change(check.metric_change, *check.metric_change_ci, check.metric_rows, method)
    return f"; {reference.metric_name} {confidence.interval_text(change, reference.metric_name)}"


def _footprint_text(footprint: dict | None) -> str:
    if not footprint:
        return ""
    macs = f", {footprint['macs']:,} MACs" if footprint.get("macs") is not None else ""
    return (f"; {kb(footprint['ram_bytes'])} KB {footprint['ram_label']}, "
            f"{kb(footprint['flash_bytes'])} KB flash{macs}")


def _size_ratios(rows: list[ArtifactRow]) -> None:
    fp32_tflite = next((r["size_bytes"] for r in rows if r.artifact == formats.SIZE_BASELINE and "size_bytes" in r),
                       None)
    for r in rows:
        if fp32_tflite and "size_bytes" in r:
            r.figures["size_vs_tflite_fp32"] = round(r["size_bytes"] / fp32_tflite, 3)


def _write_layouts(chosen: list[Target], rows: list[ArtifactRow], out: Path, name: str) -> list[dict]:
    """Model-server directories (TF Serving, Triton) from the verified artifact each one needs."""
    verified = {r.format: Path(r.path) for r in rows if r.verified and r.quantization == "none"}
    written = []
    for target in chosen:
        for layout in target.layouts:
            fmt = formats.for_layout(layout)
            needed = fmt.name
            if needed not in verified:
                written.append({"layout": layout, "target": target.name, "written": False,
                                "reason": f"{needed} artifact was not verified"})
                continue
            where = _layouts.write(layout, verified[needed], fmt, out, name)
            written.append({"layout": layout, "target": target.name, "written": True, "path": str(where)})
    return written


def _record(report: ExportReport, run, model_path: Path, out: Path) -> None:
    """The export's manifest (verdicts and hashes), and its entry in the run's manifest."""
    artifacts = {r.artifact: {"path": r.filename, "verdict": r.verdict, "sha256": r.sha256}
                 for r in report.artifacts}
    files.write_json(out / runs.MANIFEST_FILE, {"source_sha256": files.sha256(model_path),
                                                "calibration": report.calibration,
                                                "report": report.path.name, "artifacts": artifacts})
    if run is not None:
        manifest = run.manifest
        manifest.setdefault("exports", {})[str(os.path.relpath(out, run.path))] = artifacts
        files.write_json(run.manifest_path, manifest)


def _resolve_source(source: Path):
    if source.is_dir():
        run = runs.Run.open(source)
        return run, run.model_path
    if not source.exists():
        raise KerakitError(f"{str(source)!r} does not exist. Expected a run directory or a .keras (or legacy .h5) file.")
    return (runs.Run(source.parent) if runs.is_run(source.parent) else None), source


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _digest(path: Path) -> str:
    return files.tree_sha256(path) if path.is_dir() else files.sha256(path)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    lines = [line for line in text.splitlines() if "error" in line.lower() or "not supported" in line.lower()]
    return (lines[0] if lines else text.splitlines()[0] if text else type(e).__name__)[:300]
