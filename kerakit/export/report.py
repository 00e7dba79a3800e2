"""The typed result of an export, written as `export_report.json` beside the artifacts.

    report = ExportReport.read("runs/demo/export")
    report.passed, report.failed          # False, ['onnx-int8']
    report.raise_for_failures()           # KerakitError: 1 of 5 artifacts failed verification (onnx-int8); ...
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kerakit import runs
from kerakit.errors import KerakitError


def now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


@dataclass
class ExportReport:
    source: str
    out: str
    targets: list[str]
    inputs_from: str
    artifacts: list[dict]               # one row per artifact: verdict, reasons, figures, path, sha256
    layouts: list[dict] = field(default_factory=list)
    keras_metric: dict | None = None    # {"name": "accuracy", "value": 0.98}
    run: str | None = None
    created: str = field(default_factory=now)
    # A mixed-precision model: the float32 copy every format converts from, judged against the model as trained
    # (policies, max_abs_error, metric change, argmax agreement, tolerance and why, summary; export.verify).
    precision: dict | None = None

    @property
    def failed(self) -> list[str]:
        """Names of the artifacts that were not verified (conversion failed, or a check did)."""
        return [r["artifact"] for r in self.artifacts if r["verdict"] != "verified"]

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def path(self) -> Path:
        return Path(self.out) / runs.EXPORT_REPORT_FILE

    def row(self, artifact: str) -> dict:
        return next(r for r in self.artifacts if r["artifact"] == artifact)

    def raise_for_failures(self) -> None:
        """A failed check is a failed command: raise naming every failed artifact and where the figures are."""
        if self.failed:
            raise KerakitError(
                f"{len(self.failed)} of {len(self.artifacts)} artifacts failed verification "
                f"({', '.join(self.failed)}); figures in {self.path}."
            )

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def write(self, out: "str | os.PathLike") -> Path:
        return runs.write_json(Path(out) / runs.EXPORT_REPORT_FILE, self.to_dict())

    @classmethod
    def read(cls, out: "str | os.PathLike") -> "ExportReport":
        """The report in an export directory; one clear error when it is missing or not a report."""
        path = Path(out) / runs.EXPORT_REPORT_FILE
        try:
            raw = runs.read_json(path)
            raw.pop("passed", None)
            return cls(**raw)
        except FileNotFoundError:
            raise KerakitError(f"{path} does not exist: run `kerakit export` first.") from None
        except (ValueError, TypeError, AttributeError) as e:
            raise KerakitError(f"{path} is not an export report ({str(e)[:100]}); delete it and export again.") from None
