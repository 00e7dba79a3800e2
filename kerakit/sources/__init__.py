"""The user's own files as data: one module per kind behind one entry point.

    report = kerakit.sources.data_report("exports/penguins.csv", label="species")
    report = kerakit.sources.data_report("exports/penguins.csv", label="species,body_mass_g")  # two outputs

A kind is found from the path: `table` (CSV/TSV, Parquet, JSON Lines files), `folder` (one subfolder per
class of images or text files).
Each kind reads its files, infers column types, splits (`splits`) and runs the
data checks (`checks`).
"""

from __future__ import annotations

import os
from pathlib import Path

from kerakit.errors import KerakitError


def data_report(path: "str | os.PathLike", label: "str | list[str] | None" = None, *, sep: str | None = None,
                encoding: str | None = None, decimal: str | None = None, types: dict | None = None,
                seed: int = 0, group: str | None = None, time: str | None = None, task: str | None = None) -> dict:
    """The data report of a path (see `kerakit.sources.checks`); one clear error for a path kerakit cannot read."""
    return _report(Path(path), label, dict(sep=sep, encoding=encoding, decimal=decimal),
                   dict(types=types, seed=seed, group=group, time=time, task=task))[0]


def new_recipe(name: str, path: "str | os.PathLike", label: "str | list[str] | None" = None, task: str | None = None,
               **read_options) -> tuple[dict, str]:
    """(the data report, the text of a recipe for it): what `kerakit new NAME --from PATH` writes.

    The recipe names the data by a path relative to the working directory where the data lies below it
    (a project's data/ folder, in a fresh clone too), else by its absolute path."""
    from kerakit.sources import recipes

    recipes.check_name(name)
    report, frame = _report(Path(path), label, read_options, dict(task=task))
    resolved, here = Path(path).resolve(), Path.cwd().resolve()
    dataset = str(resolved.relative_to(here)) if resolved.is_relative_to(here) else str(resolved)
    return report, recipes.recipe_text(name, dataset, report, frame)


def _report(path: Path, label, read: dict, check: dict) -> tuple[dict, object]:
    """(the data report, a table's text frame or None for a folder): the one place a path's kind is told."""
    from kerakit.sources import checks, table
    from kerakit.sources.folder import scan_folder

    if not path.exists():
        raise KerakitError(f"{str(path)!r} does not exist.")
    if table.is_table(path):
        source = table.read_table(path, **read)
        return checks.table_report(source, label, **check), source.frame
    if path.is_dir():
        return checks.folder_report(scan_folder(path), seed=check.get("seed", 0)), None
    raise KerakitError(f"{str(path)!r} is not a data source kerakit reads: expected a table file "
                       f"({', '.join(sorted(table.SUFFIXES))}) or a folder with one subfolder per class.")
