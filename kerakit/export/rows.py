"""The rows an export judged its quantized artifacts on, kept beside export_report.json, and that judgement made
again from them on another machine, in the artifact's own runtime: no TensorFlow, no Keras.

    record = store(out, reference)               # at export: verification_rows.npz; the report keeps `record`
    found = reverify(report, [report.row("onnx-int8")])  # {"model_int8.onnx": Reverified(verified, figure, cached)}

An int8 file's answers can depend on the CPU (an int8 ONNX without `reduce_range` saturates on x86 without VNNI),
so `kerakit.deployment` asks this before a re-bench or its rule may pick one on a machine other than the one
it was benched on. The file holds the held-out inputs, Keras's outputs on them and the labels, as plain arrays
(text as UTF-8 bytes and offsets: nothing is unpickled), written deterministically (fixed zip dates, sorted
names) and atomically. Its size is bounded (`MAX_LABELLED_ROWS`, `MAX_BYTES`); the judgement is the export's
(`kerakit.export.judge`: numbers, then the task metric's change within the target's limit on a 95 % interval).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerakit import cpu, files, formats
from kerakit.errors import KerakitError
from kerakit.export.confidence import Change, interval_text
from kerakit.export.judge import Check, Reference, judge, score_keras
from kerakit.export.targets import Verify

ROWS_FILE = "verification_rows.npz"
# The labelled rows kept, at most: the first of the test split the export judged on. An int8 file's metric
# change is paired, so its interval narrows with the rows where it and Keras disagree: at 2,000 rows with 1 % of
# them changed (the zoo's int8 files disagree with Keras on 0.3-1.7 %) it is +- 0.44 points, inside the default
# 1-point limit; digits' 360 test rows are kept whole. Fewer rows than that may leave a file undecided on
# another machine: it is then refused there with how many rows would decide, never passed unjudged.
MAX_LABELLED_ROWS = 2000
# And the bytes of every array together, before compression: 64 MiB keeps 2,000 rows of a 64x64x3 image model
# (float pixels that are whole 0-255 values are stored as uint8, exactly) and ~100 of a 224x224x3 one.
MAX_BYTES = 64 * 2**20
_DATE = (1980, 1, 1, 0, 0, 0)  # the zip's timestamps: the same rows give the same bytes


def store(out: Path, reference: Reference) -> dict:
    """Write `reference`'s held-out rows (numeric inputs and Keras's outputs on them; labelled inputs, labels and
    Keras's outputs) to out/ROWS_FILE within the bounds; the record the export report keeps."""
    labelled = 0 if reference.eval_inputs is None else len(next(iter(reference.eval_inputs.values())))
    numeric_row = _row_bytes({**reference.numeric_inputs, **reference.numeric_outputs})
    eval_row = _row_bytes({**(reference.eval_inputs or {}), **reference.eval_outputs,
                           **({"labels": reference.eval_labels} if reference.eval_labels is not None else {}),
                           **reference.other_labels})
    wanted = reference.size * numeric_row + min(labelled, MAX_LABELLED_ROWS) * eval_row
    share = min(1.0, MAX_BYTES / max(wanted, 1))
    keep_numeric = reference.size if share == 1.0 else max(1, int(reference.size * share))
    keep_labelled = min(labelled, MAX_LABELLED_ROWS) if share == 1.0 else int(min(labelled, MAX_LABELLED_ROWS) * share)
    # Whole: the rows as the export held them, so `Reference.rows(samples)` picks the same ones here and there.
    order = np.arange(reference.size) if share == 1.0 else reference.rows(keep_numeric)
    arrays = {**_named("numeric/in", {k: v[order] for k, v in reference.numeric_inputs.items()}),
              **_named("numeric/keras", {k: v[order] for k, v in reference.numeric_outputs.items()})}
    if keep_labelled:
        arrays.update(_named("eval/in", {k: v[:keep_labelled] for k, v in reference.eval_inputs.items()}))
        arrays.update(_named("eval/keras", {k: v[:keep_labelled] for k, v in reference.eval_outputs.items()}))
        arrays.update(_named("eval/labels", {k: v[:keep_labelled] for k, v in reference.other_labels.items()}))
        if reference.eval_labels is not None:
            arrays["eval/label"] = reference.eval_labels[:keep_labelled]
    split_at = None if reference.split_at is None else int(sum(order < reference.split_at))
    meta = {"task": reference.task, "metric": reference.metric_name, "metric_output": reference.metric_output,
            "class_names": reference.class_names, "split_at": split_at, "inputs_from": reference.inputs_from}
    path = _write(out / ROWS_FILE, arrays, meta)
    return {"file": ROWS_FILE, "sha256": files.sha256(path), "bytes": path.stat().st_size,
            "numeric_rows": int(keep_numeric), "labelled_rows": int(keep_labelled),
            "labelled_rows_judged": int(labelled), "bound": f"at most {MAX_LABELLED_ROWS:,} labelled rows and "
            f"{MAX_BYTES // 2**20} MiB of arrays", "machine": {k: v for k, v in cpu.describe().items() if k != "cores"}}


def _named(prefix: str, arrays: dict) -> dict:
    return {f"{prefix}/{name}": value for name, value in arrays.items()}


def _row_bytes(arrays: dict) -> int:
    """Bytes one row of `arrays` takes as stored (text: its UTF-8 length, on average)."""
    total = 0
    for value in arrays.values():
        value = np.asarray(value)
        rows = max(len(value), 1)
        if value.dtype.kind == "O":
            total += sum(len(str(v).encode()) + 8 for v in value.ravel()) // rows
        else:
            total += _compact(value).nbytes // rows
    return total


def _compact(value: np.ndarray) -> np.ndarray:
    """Float pixels that are whole 0-255 values as uint8 (exactly the same numbers, a quarter of the bytes)."""
    if value.dtype.kind == "f" and value.size and value.min() >= 0 and value.max() <= 255 \
            and np.array_equal(value, np.round(value)):
        return value.astype(np.uint8)
    return value


def _write(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """The arrays as an .npz (one .npy each, no pickles) plus meta.json, each entry dated `_DATE`."""
    meta = {**meta, "dtypes": {}}
    entries = {}
    for name, value in sorted(arrays.items()):
        value = np.asarray(value)
        meta["dtypes"][name] = value.dtype.str if value.dtype.kind != "O" else "text"
        if value.dtype.kind == "O":  # text: UTF-8 bytes, each item's end offset, the shape
            encoded = [str(v).encode() for v in value.ravel()]
            entries[name] = np.frombuffer(b"".join(encoded), np.uint8)
            entries[f"{name}.ends"] = np.cumsum([len(e) for e in encoded], dtype=np.int64)
            entries[f"{name}.shape"] = np.asarray(value.shape, np.int64)
        else:
            entries[name] = _compact(value)
    with files.atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for name, value in entries.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(value), allow_pickle=False)
            archive.writestr(_entry(f"{name}.npy"), buffer.getvalue(), compresslevel=6)
        archive.writestr(_entry("meta.json"), json.dumps(meta, sort_keys=True), compresslevel=6)
    return path


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def read(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and meta `_write` wrote, each array back in the dtype it was judged in."""
    with zipfile.ZipFile(path) as archive:
        meta = json.loads(archive.read("meta.json"))
        raw = {name.removesuffix(".npy"): np.lib.format.read_array(io.BytesIO(archive.read(name)), allow_pickle=False)
               for name in archive.namelist() if name.endswith(".npy")}
    arrays = {}
    for name, dtype in meta["dtypes"].items():
        if dtype == "text":
            data, ends = raw[name].tobytes(), raw[f"{name}.ends"]
            starts = np.concatenate([[0], ends[:-1]]).astype(int)
            items = [data[s:e].decode() for s, e in zip(starts, ends)]
            text = np.empty(len(items), dtype=object)
            text[:] = items
            arrays[name] = text.reshape(tuple(raw[f"{name}.shape"]))
        else:
            arrays[name] = raw[name].astype(np.dtype(dtype))
    return arrays, meta


def reference(path: Path, record: dict) -> Reference:
    """The export's `Reference`, rebuilt from its stored rows: Keras's metric recomputed from Keras's stored outputs."""
    arrays, meta = read(path)

    def part(prefix: str) -> dict:
        return {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + "/")}

    stored, judged = record.get("labelled_rows"), record.get("labelled_rows_judged")
    ref = Reference(numeric_inputs=part("numeric/in"), numeric_outputs=part("numeric/keras"),
                    split_at=meta["split_at"], task=meta["task"], eval_inputs=part("eval/in") or None,
                    eval_labels=arrays.get("eval/label"), class_names=meta["class_names"],
                    other_labels=part("eval/labels"), eval_outputs=part("eval/keras"), inputs_from=meta["inputs_from"],
                    more_rows=lambda rows: _more_rows(stored, judged))
    if ref.eval_inputs is not None and (ref.eval_labels is not None or ref.other_labels):
        score_keras(ref, meta["metric"], meta["metric_output"])
    return ref


def _more_rows(stored: int, judged: int) -> str:
    """Where more rows would come from, said when the stored ones cannot decide."""
    if stored < judged:
        return (f"{ROWS_FILE} keeps {stored:,} of the {judged:,} labelled rows the export judged on, within its "
                "bound (MAX_LABELLED_ROWS, MAX_BYTES)")
    return f"a larger test split: all {judged:,} labelled rows the export judged on are stored"


@dataclass
class Reverified:
    verified: bool
    figure: str     # "accuracy -0.28 points ± 0.54 (95 %, 360 rows)", or why it failed
    cached: bool = False


def reverify(report, artifacts: list) -> dict[str, Reverified]:
    """Judge each of the export's `artifacts` (its rows the caller found still verified) again on this machine
    from the stored rows, in its own runtime, as the export judged it; results are cached per machine
    (`cache_dir`). Where the stored rows are missing or changed (SHA-256), nothing can be judged here: not verified."""
    rows_path, why = report.verification_rows_file()
    found, ref = {}, None
    for row in artifacts:
        if rows_path is None:
            found[row.filename] = Reverified(False, why)
            continue
        key = _cache_key(row, report.verification_rows["sha256"])
        cached = _cached(key)
        if cached is not None:
            found[row.filename] = Reverified(cached["verified"], cached["figure"], cached=True)
            continue
        ref = ref or reference(rows_path, report.verification_rows)
        found[row.filename] = _judge_here(report.directory / row.filename, row, ref)
        _remember(key, row.filename, found[row.filename])
    return found


def _judge_here(path: Path, row, ref: Reference) -> Reverified:
    """One artifact against the stored rows, by the export's judgement and its target's tolerances."""
    tolerances = Verify(**row.figures.get("tolerances", {}))
    check = Check()
    try:
        with formats.get(row.format).load(path) as predictor:
            rows = ref.rows(tolerances.samples)
            got = _predict(predictor, {k: v[rows] for k, v in ref.numeric_inputs.items()})
            judge(check, got, rows, lambda: _predict(predictor, ref.eval_inputs), ref, row.quantization != "none",
                  tolerances)
    except KerakitError as e:
        check.reasons.append(f"could not run here: {e}")
    if check.reasons:
        return Reverified(False, "; ".join(check.reasons))
    if check.metric_change_ci is None:
        return Reverified(True, f"max |Δ| {check.max_abs_error:.3g} on {check.numeric_examples} rows")
    method = check.output_metrics[ref.metric_output]["interval"]
    change = Change(check.metric_change, *check.metric_change_ci, check.metric_rows, method)
    return Reverified(True, f"{ref.metric_name} {interval_text(change, ref.metric_name)}")


def _predict(predictor, inputs: dict[str, np.ndarray], batch: int = 256) -> dict[str, np.ndarray]:
    """Every row through `predictor`, `batch` at a time (the runtime API's `predict_all` is above this module:
    kerakit.runtime reaches it through kerakit.deployment, so calling it would close an import cycle)."""
    n = len(next(iter(inputs.values())))
    parts = [predictor.predict({k: v[i:i + batch] for k, v in inputs.items()}) for i in range(0, n, batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --------------------------------------------------------------------------- the cache, per machine

def cache_dir() -> Path:
    """Where re-verifications are kept: $KERAKIT_CACHE_DIR, else $XDG_CACHE_HOME/kerakit, else ~/.cache/kerakit.

    On the machine that judged them, not in the run: the run may be read-only where it serves, and travels
    between machines; each entry is keyed by what decides its answer (the file's and the rows' SHA-256, the
    tolerances, this CPU's model, flags and architecture, the runtime's library versions)."""
    if os.environ.get("KERAKIT_CACHE_DIR"):
        return Path(os.environ["KERAKIT_CACHE_DIR"]) / "reverified"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kerakit" / "reverified"


def _cache_key(row, rows_sha256: str) -> str:
    machine = {k: v for k, v in cpu.describe().items() if k != "cores"}
    what = {"artifact": row.sha256, "rows": rows_sha256, "tolerances": row.figures.get("tolerances", {}),
            "machine": machine, "libraries": formats.get(row.format).library_versions()}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _cached(key: str) -> dict | None:
    try:
        found = json.loads((cache_dir() / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and {"verified", "figure"} <= set(found) else None


def _remember(key: str, name: str, result: Reverified) -> None:
    """Kept where the cache can be written; a cache that cannot is only slower (judged again next time)."""
    try:
        files.write_json(cache_dir() / f"{key}.json", {"artifact": name, "verified": result.verified,
                                                       "figure": result.figure, "machine": cpu.label()})
    except OSError:
        pass
