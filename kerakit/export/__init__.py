"""`kerakit export`: a run (or any `.keras` file) -> verified deployment artifacts.

>>> report = kerakit.export("runs/demo", targets=["server", "edge"])
>>> [(row["artifact"], row["verdict"]) for row in report["artifacts"]]
[('savedmodel', 'verified'), ('onnx', 'verified'), ('tflite-int8', 'verified'), ...]

Every artifact is written atomically, then verified against the Keras model
(`kerakit.export.verify`); figures go to `export_report.json`, verdicts and
SHA-256s to the export's `manifest.json` (and the run's). A failed artifact
makes the report fail; the other formats still go on.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from kerakit import runs
from kerakit.errors import KerakitError
from kerakit.export import targets as _targets
from kerakit.export.targets import ArtifactSpec, Verify

REPORT_FILE = "export_report.json"
NUMERIC_SAMPLES = 256  # per split: held-out (val) and test inputs for the numeric comparison
CALIBRATION_SAMPLES = 300

__all__ = ["export", "load_target", "verify_artifact"]


def load_target(name_or_path):
    return _targets.load_target(name_or_path)


def verify_artifact(*args, **kwargs):
    from kerakit.export.verify import verify_artifact as _verify

    return _verify(*args, **kwargs)


def export(
    source: "str | os.PathLike",
    targets: Iterable[str] = ("server",),
    formats: Iterable[str] = (),
    *,
    out: "str | os.PathLike | None" = None,
    recipe: str | None = None,
    sample: "str | os.PathLike | None" = None,
    data_dir: str | None = None,
    opset: int | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Export `source` for each target (names or TOML paths) and each `--format` name.

    progress(done, total) is called after each artifact is converted and checked.

    source: a run directory or a `.keras` file. A file outside a run needs
    `recipe=` (its data verifies and calibrates) or `sample=` (an .npz of
    inputs by name, plus `label` for the metric); with neither, verification
    uses random inputs of the model's shapes and quantized formats cannot be judged.
    """
    from kerakit.evaluate import load_keras_model

    chosen = [_targets.load_target(t) for t in targets] + [_targets.format_target(f, opset) for f in formats]
    if not chosen:
        raise KerakitError("Nothing to export: pass --target NAME (e.g. server, edge) or --format NAME.")
    source = Path(source)
    run, model_path = _resolve_source(source)
    model = load_keras_model(model_path)
    name = (recipe and Path(recipe).stem) or (run.manifest["recipe"]["name"] if run else model_path.stem)
    out = Path(out) if out else (run.path / "export" if run else model_path.with_name(f"{model_path.stem}_export"))
    runs.ensure_writable_dir(out)

    from kerakit import runtime
    from kerakit.export import formats as fmt
    from kerakit.export import layouts
    from kerakit.export.verify import Check, make_reference
    from kerakit.export.verify import verify_artifact as _verify

    keras_predictor = runtime.KerasPredictor(model_path, model=model)
    inputs = keras_predictor.inputs
    output_names = [s.name for s in keras_predictor.outputs]
    data = _verification_data(run, recipe, sample, data_dir, inputs)
    reference = make_reference(keras_predictor, data["numeric"], task=data["task"], eval_inputs=data["eval_inputs"],
                               eval_labels=data["eval_labels"], class_names=data["class_names"],
                               inputs_from=data["inputs_from"])
    log(f"Verifying against Keras on {data['inputs_from']}.")

    if data["class_names"]:
        runs.write_text(out / "labels.txt", "\n".join(data["class_names"]) + "\n")
    metadata = {"name": name, "description": data["description"], "inputs": [s.to_dict() for s in inputs],
                "outputs": output_names, "labels": data["class_names"], "normalization": data["normalization"]}

    specs: dict[str, tuple[ArtifactSpec, Verify]] = {}
    for target in chosen:
        for spec in target.artifacts:
            specs.setdefault(spec.name, (spec, target.verify))

    rows, paths = [], {}
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=out) as staging:
        staging = Path(staging)
        sources: dict[str, Path] = {}  # float SavedModel / ONNX that other formats convert from
        for key, (spec, tolerances) in specs.items():
            path = out / spec.filename
            row = {"artifact": key, "format": spec.format, "quantization": spec.quantization,
                   "path": str(path), "tolerances": vars(tolerances)}
            started = time.perf_counter()
            try:
                _build(spec, model, inputs, output_names, path, staging, sources, data["calibration"], metadata, fmt)
            except KerakitError:
                raise
            except Exception as e:  # one format failing must not stop the others
                row.update(verdict="failed", reasons=[f"{spec.name} conversion failed: {_first_line(e)}"],
                           export_seconds=round(time.perf_counter() - started, 2))
                rows.append(row)
                log(f"  {key}: conversion failed: {_first_line(e)}")
                if progress:
                    progress(len(rows), len(specs))
                continue
            row["export_seconds"] = round(time.perf_counter() - started, 2)
            try:
                check = _verify(path, reference, spec, tolerances)
            except Exception as e:  # e.g. the runtime cannot load what the converter wrote
                check = Check(reasons=[f"{spec.name} could not run: {_first_line(e)}"])
            row.update(size_bytes=_size(path), **check.to_dict(), sha256=_digest(path))
            rows.append(row)
            paths[key] = path
            log(f"  {key}: {check.verdict}" + (f" ({'; '.join(check.reasons)})" if check.reasons else ""))
            if progress:
                progress(len(rows), len(specs))

    verified = {r["artifact"] for r in rows if r["verdict"] == "verified"}
    layout_rows = []
    for target in chosen:
        for layout in target.layouts:
            needed = "savedmodel" if layout == "tfserving" else "onnx"
            if needed not in verified:
                layout_rows.append({"layout": layout, "target": target.name, "written": False,
                                    "reason": f"{needed} artifact was not verified"})
                continue
            where = (layouts.tfserving(paths[needed], out, name) if layout == "tfserving"
                     else layouts.triton(paths[needed], out, name))
            layout_rows.append({"layout": layout, "target": target.name, "written": True, "path": str(where)})

    fp32_tflite = next((r["size_bytes"] for r in rows if r["artifact"] == "tflite" and "size_bytes" in r), None)
    for r in rows:
        if fp32_tflite and "size_bytes" in r:
            r["size_vs_tflite_fp32"] = round(r["size_bytes"] / fp32_tflite, 3)
    report = {
        "source": str(model_path),
        "run": str(run.path) if run else None,
        "out": str(out),
        "targets": [t.name for t in chosen],
        "inputs_from": data["inputs_from"],
        "keras_metric": {"name": reference.metric_name, "value": reference.metric} if reference.metric is not None else None,
        "artifacts": rows,
        "layouts": layout_rows,
        "passed": all(r["verdict"] == "verified" for r in rows),
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    runs.write_json(out / REPORT_FILE, report)
    manifest = {"source_sha256": runs.sha256(model_path), "report": REPORT_FILE,
                "artifacts": {r["artifact"]: {"path": Path(r["path"]).name, "verdict": r["verdict"],
                                              "sha256": r.get("sha256")} for r in rows}}
    runs.write_json(out / runs.MANIFEST_FILE, manifest)
    if run is not None:
        run_manifest = run.manifest
        exports = run_manifest.setdefault("exports", {})
        exports[str(os.path.relpath(out, run.path))] = manifest["artifacts"]
        runs.write_json(run.path / runs.MANIFEST_FILE, run_manifest)
    return report


def _build(spec, model, inputs, output_names, path, staging, sources, calibration, metadata, fmt) -> None:
    """Write one artifact to `path`; every format converts from the one serving SavedModel made in staging."""
    if "savedmodel" not in sources:
        sources["savedmodel"] = staging / "savedmodel"
        fmt.write_savedmodel(model, inputs, output_names, sources["savedmodel"])
    if spec.format == "savedmodel":
        with runs.atomic_dir(path) as tmp:
            shutil.copytree(sources["savedmodel"], tmp, dirs_exist_ok=True)
    elif spec.format == "tflite":
        data = fmt.tflite_bytes(sources["savedmodel"], spec, inputs, calibration)
        data = fmt.add_tflite_metadata(data, {**metadata, "quantization": spec.quantization})
        with runs.atomic_path(path) as tmp:
            tmp.write_bytes(data)
    elif spec.quantization == "none":
        fmt.write_onnx(sources["savedmodel"], spec.opset, path)
    else:
        key = f"onnx-{spec.opset}"
        if key not in sources:
            sources[key] = staging / f"float-{spec.opset}.onnx"
            fmt.write_onnx(sources["savedmodel"], spec.opset, sources[key])
        fmt.quantize_onnx(sources[key], spec, calibration, path)


def _resolve_source(source: Path):
    if source.is_dir():
        run = runs.Run.open(source)
        return run, run.model_path
    if not source.exists():
        raise KerakitError(f"{str(source)!r} does not exist. Expected a run directory or a .keras file.")
    run = runs.Run(source.parent) if (source.parent / runs.MANIFEST_FILE).exists() and \
        (source.parent / runs.CONFIG_FILE).exists() else None
    return run, source


def _verification_data(run, recipe, sample, data_dir, inputs) -> dict:
    """Held-out inputs, test split with labels, and a calibration sample, from the best source available."""
    if run is not None or recipe is not None:
        from kerakit.data import load_data
        from kerakit.recipe import load_recipe

        loaded = load_recipe(recipe) if recipe is not None else run.recipe()
        config = run.config["config"] if recipe is None else loaded.resolve_config({})[0]
        data = load_data(loaded, config, data_dir)
        val_x, _ = data.arrays("val")
        test_x, test_y = data.arrays("test")
        numeric = {k: np.concatenate([val_x[k][:NUMERIC_SAMPLES], test_x[k][:NUMERIC_SAMPLES]]) for k in val_x}
        _check_names(numeric, inputs, f"recipe {loaded.name!r}")
        return {"numeric": numeric, "eval_inputs": test_x, "eval_labels": test_y, "task": loaded.task,
                "class_names": data.class_names, "calibration": data.representative_sample(CALIBRATION_SAMPLES),
                "description": loaded.description, "normalization": "inside the model (raw inputs)",
                "inputs_from": f"{loaded.name}: {len(next(iter(numeric.values())))} val+test inputs, "
                               f"{len(test_y)} labelled test examples"}
    if sample is not None:
        try:
            with np.load(sample) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as e:
            raise KerakitError(f"Cannot read --sample {str(sample)!r}: {e}. Expected an .npz of arrays by input name.") from None
        labels = arrays.pop("label", None)
        _check_names(arrays, inputs, f"--sample {sample}")
        return {"numeric": arrays, "eval_inputs": arrays if labels is not None else None, "eval_labels": labels,
                "task": ("classification" if labels is not None and labels.dtype.kind in "iu" else
                         "regression" if labels is not None else None),
                "class_names": None, "calibration": arrays, "description": "", "normalization": "unknown",
                "inputs_from": f"--sample {sample}: {len(next(iter(arrays.values())))} inputs"
                               + (" with labels" if labels is not None else " (no labels: no metric)")}
    rng = np.random.default_rng(0)
    arrays = {}
    for s in inputs:
        shape = (NUMERIC_SAMPLES, *s.shape[1:])
        if None in shape:
            raise KerakitError(f"Input {s.name!r} has a dynamic shape {s.shape}: pass --recipe or --sample to verify.")
        arrays[s.name] = (rng.random(shape).astype(s.dtype) if np.dtype(s.dtype).kind == "f"
                          else rng.integers(0, 10, shape).astype(s.dtype))
    return {"numeric": arrays, "eval_inputs": None, "eval_labels": None, "task": None, "class_names": None,
            "calibration": arrays, "description": "", "normalization": "unknown",
            "inputs_from": f"random inputs of the model's shapes ({NUMERIC_SAMPLES}; no --recipe or --sample given)"}


def _check_names(arrays: dict, inputs, where: str) -> None:
    expected = sorted(s.name for s in inputs)
    if sorted(arrays) != expected:
        raise KerakitError(f"Inputs from {where} are named {sorted(arrays)}; the model's inputs are {expected}.")


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _digest(path: Path) -> str:
    if path.is_file():
        return runs.sha256(path)
    import hashlib

    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode())
        h.update(runs.sha256(p).encode())
    return h.hexdigest()


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    lines = [line for line in text.splitlines() if "error" in line.lower() or "not supported" in line.lower()]
    return (lines[0] if lines else text.splitlines()[0] if text else type(e).__name__)[:300]
