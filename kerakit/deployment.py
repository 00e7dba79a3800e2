"""A run's `deployment.json`: per batch size, the fastest verified artifact on this machine.

    choice = deployment.choose(run, batch=32)   # {"artifact": "model.openvino", "options": {...}, ...}
    path, options = deployment.artifact(run, batch=1)

`kerakit bench RUN` measures every verified artifact of the run under every
runtime setting its format offers and writes the winners here (`write`),
with the machine they were measured on and the figures they beat.
`kerakit serve RUN` and `kerakit.runtime.load(RUN)` read it. Only artifacts
the export report calls verified, whose files still match the report's
SHA-256, are ever candidates; a format timed on a host that is not its
device (`Format.timing_note`, e.g. TFLite Micro) is not a candidate either.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path

from kerakit import files, formats, runs
from kerakit.errors import KerakitError

FIX = "rerun `kerakit bench RUN` to measure it again"


def candidates(run: runs.Run) -> dict[str, Path]:
    """The run's still-verified exported artifacts that may be deployed here, by file name."""
    from kerakit.export.report import ExportReport

    report = ExportReport.find(run.export_dir)
    if report is None:
        return {}
    found = {}
    for row in report.still_verified():
        path = report.directory / row.filename
        if formats.get(row.format).timing_note:  # timed here, deployed elsewhere
            continue
        found[path.name] = path
    return found


def machine(cores: int) -> dict:
    """What the choice was measured on (`cores`: those the process may use); another machine benches again."""
    return {"cpu": cpu_model(), "cores": cores, "machine": platform.machine(), "host": platform.node()}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write(run: runs.Run, batches: dict[int, dict], rule: dict, cores: int) -> Path:
    """Record the choice per batch size: {batch: {artifact, setting, options, p50_ms, precision, beat}}."""
    return files.write_json(run.deployment, {
        "machine": machine(cores), "stop_rule": rule,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "batches": {str(b): choice for b, choice in sorted(batches.items())},
    })


def read(run: runs.Run) -> dict:
    if not run.deployment.exists():
        raise KerakitError(f"Run {str(run.path)!r} has no {run.deployment.name}: run `kerakit bench {run.path}` "
                           "to pick the fastest verified artifact on this machine, or pass an artifact path.")
    return files.load_json(run.deployment, FIX, ("batches", "machine"))


def choose(run: runs.Run, batch: int | None = None) -> dict:
    """The choice for `batch`: that of the largest benched batch size <= batch (the smallest one if none is)."""
    table = {int(b): c for b, c in read(run)["batches"].items()}
    if not table:
        raise KerakitError(f"{run.deployment} names no artifact; {FIX}.")
    below = [b for b in table if batch is not None and b <= batch]
    choice = table[max(below) if below else min(table)]
    path = run.export_dir / choice["artifact"]
    if choice["artifact"] not in candidates(run):
        raise KerakitError(f"{run.deployment} names {choice['artifact']!r}, which is no longer a verified "
                           f"artifact of the run (missing, changed or failed verification); {FIX}.")
    return {**choice, "path": str(path)}


def by_batch(run: runs.Run) -> list[list]:
    """[[batch, path, options, format], ...] for each benched batch size above the smallest whose choice differs
    from the one below it: where a server switches artifact or settings as its batches grow."""
    table = {int(b): c for b, c in read(run)["batches"].items()}
    switches, previous = [], None
    for batch in sorted(table):
        choice = choose(run, batch)
        key = (choice["artifact"], json.dumps(choice.get("options", {}), sort_keys=True))
        if previous is not None and key != previous:
            switches.append([batch, choice["path"], dict(choice.get("options", {})), choice["format"]])
        previous = key
    return switches


def artifact(run: "runs.Run | str | os.PathLike", batch: int | None = None) -> tuple[Path, dict]:
    """(path, runtime options) of the deployment choice for `batch`."""
    run = run if isinstance(run, runs.Run) else runs.Run(Path(run))
    choice = choose(run, batch)
    return Path(choice["path"]), dict(choice.get("options", {}))
