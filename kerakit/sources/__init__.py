"""The user's own files as data: one module per kind behind one entry point.

    report = kerakit.sources.data_report("exports/penguins.csv", label="species")

A kind is found from the path: `table` (CSV/TSV, Parquet, JSON Lines files).
Each kind reads its files, infers column types, splits (`splits`) and runs the
data checks (`checks`).
"""

from __future__ import annotations

import os
from pathlib import Path

from kerakit.errors import KerakitError


def data_report(path: "str | os.PathLike", label: str | None = None, *, sep: str | None = None,
                encoding: str | None = None, decimal: str | None = None, types: dict | None = None,
                seed: int = 0, group: str | None = None, time: str | None = None, task: str | None = None) -> dict:
    """The data report of a path (see `kerakit.sources.checks`); one clear error for a path kerakit cannot read."""
    from kerakit.sources import checks, table

    path = Path(path)
    if not path.exists():
        raise KerakitError(f"{str(path)!r} does not exist.")
    if table.is_table(path):
        return checks.table_report(table.read_table(path, sep=sep, encoding=encoding, decimal=decimal), label,
                                   types=types, seed=seed, group=group, time=time, task=task)
    raise KerakitError(f"{str(path)!r} is not a data source kerakit reads: expected a table file "
                       f"({', '.join(sorted(table.SUFFIXES))}).")
