"""The typed result of an export, written as `export_report.json` beside the artifacts.

    report = ExportReport.read("runs/demo/export")
    report.passed, report.failed          # False, ['onnx-int8']
    row = report.row("onnx")              # ArtifactRow: verdict, reasons, figures, options, path, sha256
    [r.artifact for r in report.still_verified()]   # verified, and each file still has that SHA-256
    report.raise_for_failures()           # VerificationFailed: 1 of 5 artifacts failed verification (onnx-int8); ...

This module is the one reader of `export_report.json` and the one judge of whether an artifact is still
verified: build, deployment (so bench and serve) and the report ask it, rather than reading the JSON's keys
or hashing files themselves (tests/test_structure.py holds them to that).
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kerakit import files, runs
from kerakit.errors import KerakitError, VerificationFailed

VERIFIED = "verified"
FAILED = "failed"


class NotAReport(KerakitError):
    """An `export_report.json` that cannot be read as a report (torn, hand-edited, garbage): `why`. Exporting
    again rewrites it, and `build` does that itself."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path} is not an export report ({why}); export again: `kerakit export` (or a rerun of "
                         "`kerakit build`) rewrites it.")
        self.path, self.why = path, why


def now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


@dataclass(eq=False)
class ArtifactRow(Mapping):
    """One artifact of an export: what it is, its verdict and why, its figures, and the file it was judged on.

        row = report.row("tflite-int8")
        row.verdict, row.reasons, row.figures["metric_change"], row.options   # 'verified', [], -0.0028, {'io': ...}
        row.still_verified("runs/demo/export")   # False once model_int8.tflite's bytes change

    Written as one flat JSON object (the fields, then the figures beside them), and readable like it:
    `row["metric"]` is `row.figures["metric"]`, `row["verdict"]` is `row.verdict`.
    """

    artifact: str               # `tflite-int8`: the --format name
    format: str                 # the registered format: tflite, onnx, ...
    quantization: str           # none | float16 | dynamic | int8
    path: str                   # where export wrote it; readers look for its name beside the report
    verdict: str = FAILED       # verified | failed
    reasons: list[str] = field(default_factory=list)  # why it failed, one line each
    options: dict = field(default_factory=dict)       # the format's options as applied (opset, io, batch, ...)
    sha256: str | None = None   # of the file (a directory: files.tree_sha256) as verified; None if none was written
    figures: dict = field(default_factory=dict)       # size_bytes, max_abs_error, metric, metric_change, footprint...

    @property
    def verified(self) -> bool:
        """Whether export verified it (see `still_verified` for whether its file is still the one verified)."""
        return self.verdict == VERIFIED

    @property
    def filename(self) -> str:
        return Path(self.path).name

    def why_not_verified(self, export_dir: "str | os.PathLike") -> str | None:
        """Why this artifact may not be used now, or None while it is still verified: export verified it and
        its file, found by name in `export_dir` (so a copied or moved run is checked where it is now), still
        has the SHA-256 it was verified with."""
        if not self.verified:
            return f"{self.artifact} failed verification"
        where = Path(export_dir) / self.filename
        if not where.exists():
            return f"{where.name} missing"
        if not files.intact(where, self.sha256):
            return f"{where.name} changed since it was verified"
        return None

    def still_verified(self, export_dir: "str | os.PathLike") -> bool:
        return self.why_not_verified(export_dir) is None

    def to_dict(self) -> dict:
        """The row as written: its fields, then its figures, in one object."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "figures"}
        return {**own, **self.figures}

    @classmethod
    def from_dict(cls, raw: dict) -> "ArtifactRow":
        """A written row. Rows written before options were recorded read with `options={}` (not known)."""
        if not isinstance(raw, dict):
            raise ValueError(f"an artifact row is a {type(raw).__name__}, not an object")
        missing = [k for k in ("artifact", "format", "quantization", "path", "verdict") if k not in raw]
        if missing:
            raise ValueError(f"an artifact row lacks {', '.join(missing)}")
        own = {f.name for f in fields(cls)} - {"figures"}
        return cls(**{k: v for k, v in raw.items() if k in own},
                   figures={k: v for k, v in raw.items() if k not in own})

    # Read like the JSON row it is written as.
    def __getitem__(self, key: str) -> Any:
        return getattr(self, key) if key in _OWN else self.figures[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(_OWN) + len(self.figures)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArtifactRow) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


_OWN = frozenset(f.name for f in fields(ArtifactRow)) - {"figures"}


@dataclass
class ExportReport:
    source: str
    out: str
    targets: list[str]
    inputs_from: str
    artifacts: list[ArtifactRow]        # one per artifact (dicts as written are read into rows)
    layouts: list[dict] = field(default_factory=list)
    keras_metric: dict | None = None    # {"name": "accuracy", "value": 0.98}
    run: str | None = None
    created: str = field(default_factory=now)
    # A mixed-precision model: the float32 copy every format converts from, judged against the model as trained
    # (policies, max_abs_error, metric change, argmax agreement, tolerance and why, summary; export.verify).
    precision: dict | None = None
    # What the int8 artifacts were calibrated on: rows, their SHA-256, and which rows ("300 rows drawn with
    # seed 42 from ..."): with the source model and the targets, what makes an export give the same files.
    calibration: dict | None = None
    # The rows the quantized artifacts were judged on, kept to judge them again on another machine
    # (`kerakit.export.rows`): file, sha256, bytes, rows kept and judged, the bound, the exporting CPU.
    verification_rows: dict | None = None
    read_from: Path | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.artifacts, list):
            raise ValueError(f"artifacts is a {type(self.artifacts).__name__}, not a list")
        self.artifacts = [r if isinstance(r, ArtifactRow) else ArtifactRow.from_dict(r) for r in self.artifacts]

    @property
    def failed(self) -> list[str]:
        """Names of the artifacts that were not verified (conversion failed, or a check did)."""
        return [r.artifact for r in self.artifacts if not r.verified]

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def directory(self) -> Path:
        """Where the report and its artifacts are now: where it was read from, else where export wrote it."""
        return self.read_from or Path(self.out)

    @property
    def path(self) -> Path:
        return self.directory / runs.EXPORT_REPORT_FILE

    def row(self, artifact: str) -> ArtifactRow:
        return next(r for r in self.artifacts if r.artifact == artifact)

    def still_verified(self) -> list[ArtifactRow]:
        """The rows that may be used: verified, and their files in `directory` unchanged since."""
        return [r for r in self.artifacts if r.still_verified(self.directory)]

    def verification_rows_file(self) -> tuple[Path | None, str | None]:
        """(path, None) of the stored verification rows while they still have the SHA-256 the report recorded;
        (None, why) where none were stored, or they are missing or changed since."""
        record = self.verification_rows
        if not record:
            return None, (f"{self.path} records no verification rows (exported before kerakit kept them, or with "
                          "no quantized artifact): export again to keep them")
        path = self.directory / record["file"]
        if not path.exists():
            return None, f"{path} is missing: export again"
        if not files.intact(path, record["sha256"]):
            return None, f"{path} changed since the export (SHA-256): export again"
        return path, None

    def why_not_verified(self) -> dict[str, str]:
        """{artifact: why it may not be used} for every row that is not still verified."""
        found = {r.artifact: r.why_not_verified(self.directory) for r in self.artifacts}
        return {name: why for name, why in found.items() if why is not None}

    def raise_for_failures(self) -> None:
        """A failed check is a failed call: raise naming every failed artifact and where the figures are."""
        if self.failed:
            raise VerificationFailed(
                f"{len(self.failed)} of {len(self.artifacts)} artifacts failed verification "
                f"({', '.join(self.failed)}); figures in {self.path}.", self)

    def to_dict(self) -> dict:
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        return {**own, "artifacts": [r.to_dict() for r in self.artifacts], "passed": self.passed}

    def write(self, out: "str | os.PathLike") -> Path:
        return files.write_json(Path(out) / runs.EXPORT_REPORT_FILE, self.to_dict())

    @classmethod
    def read(cls, out: "str | os.PathLike") -> "ExportReport":
        """The report in an export directory; one clear error when it is missing or not a report."""
        path = Path(out) / runs.EXPORT_REPORT_FILE
        try:
            raw = files.read_json(path)
            raw.pop("passed", None)
            report = cls(**raw)
        except FileNotFoundError:
            raise KerakitError(f"{path} does not exist: run `kerakit export` first.") from None
        except (ValueError, TypeError, AttributeError) as e:
            raise NotAReport(path, str(e)[:100]) from None
        report.read_from = Path(out)
        return report

    @classmethod
    def find(cls, out: "str | os.PathLike") -> "ExportReport | None":
        """The report in `out`, or None where nothing was exported (a corrupt one still raises)."""
        return cls.read(out) if (Path(out) / runs.EXPORT_REPORT_FILE).exists() else None


def why_not_verified(path: "str | os.PathLike") -> str | None:
    """Why the exported file `path` (RUN/export/model_int8.tflite, a file in an export's --out) may not be
    served, judged by the export report beside it as `serve RUN` judges the run's artifacts: it failed
    verification, or it changed since (SHA-256). None while it is still verified, and where no report beside
    it names it (not an export's file, or one an earlier export there wrote): nothing is known against it.

        why_not_verified("runs/demo/export/model_int8.tflite")
        # 'model_int8.tflite changed since it was verified (runs/demo/export/export_report.json)'
    """
    path = Path(path)
    report = ExportReport.find(path.parent)
    if report is None:
        return None
    row = next((r for r in report.artifacts if r.filename == path.name), None)
    why = row.why_not_verified(report.directory) if row is not None else None
    return why and f"{why} ({report.path})"

