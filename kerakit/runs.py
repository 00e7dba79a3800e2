"""Run-directory layout, manifest and atomic writes.

A run directory is the hand-off between steps (train -> export -> bench ...):

    RUN/
      config.json      resolved config and hyperparameters (written first)
      recipe.py        copy of the recipe file, so the run is self-contained
      model.keras      best model (by validation metric)
      history.csv      one row per epoch
      metrics.json     test-split metrics
      manifest.json    reproducibility record + SHA-256 of artifacts (written last)
      logs/            TensorBoard
      checkpoints/     best checkpoint during training
      backup/          BackupAndRestore state while training is unfinished

Every file is written to a temporary name beside its target and renamed into
place, so a killed process leaves the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from kerakit.errors import KerakitError

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
RECIPE_FILE = "recipe.py"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` on success.

    The temporary name keeps the target's suffix (Keras checks `.keras`).

    >>> with atomic_path("run/model.keras") as tmp:
    ...     model.save(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get ordinary permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; swap it into place on success.

    An existing `path` is moved aside first and removed after the swap, so a
    reader sees the old directory or the new one, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def write_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Rows as CSV, atomically; the columns are every key, in first-seen order."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for row in rows for k in row)), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buf.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays, Paths
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Not JSON serializable: {type(value).__name__}")


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and prove we can write into it, or raise a clear error."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise KerakitError(
            f"Cannot write to output directory {str(path)!r}: {e.strerror or e}. "
            "Pass a writable --out DIR."
        ) from None
    return path


@dataclass
class Run:
    """A finished (or in-progress) run directory.

    >>> run = kerakit.train("digits_cnn", epochs=3)
    >>> run.metrics["accuracy"], run.path
    """

    path: Path

    def __post_init__(self):
        self.path = Path(self.path)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Run":
        path = Path(path)
        if not path.is_dir():
            raise KerakitError(f"Run directory {str(path)!r} does not exist.")
        if not (path / MANIFEST_FILE).exists():
            raise KerakitError(
                f"{str(path)!r} is not a finished kerakit run (no {MANIFEST_FILE}). "
                "Rerun `kerakit train` with the same --out to finish it."
            )
        return cls(path)

    @property
    def is_finished(self) -> bool:
        return (self.path / MANIFEST_FILE).exists()

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def recipe_path(self) -> Path:
        return self.path / RECIPE_FILE

    @property
    def config(self) -> dict:
        return read_json(self.path / CONFIG_FILE)

    @property
    def manifest(self) -> dict:
        return read_json(self.path / MANIFEST_FILE)

    @property
    def metrics(self) -> dict:
        return read_json(self.path / METRICS_FILE)

    def recipe(self):
        """The run's own copy of its recipe, under the recipe's name."""
        from kerakit.recipe import load_recipe

        recipe = load_recipe(self.recipe_path)
        recipe.name = self.config.get("recipe", recipe.name)
        return recipe

    def load_model(self):
        import keras

        return keras.saving.load_model(self.model_path)

    def verify_artifacts(self) -> dict[str, bool]:
        """Re-hash every artifact listed in the manifest; True where it still matches."""
        return {
            name: (self.path / name).exists() and sha256(self.path / name) == digest
            for name, digest in self.manifest["artifacts"].items()
        }

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


def find_run(path: str | os.PathLike) -> Run | None:
    """The run an artifact belongs to (RUN/model.keras, RUN/export/model.onnx, ...), if any."""
    path = Path(path).resolve()
    for parent in [path, *path.parents]:
        if (parent / MANIFEST_FILE).exists() and (parent / CONFIG_FILE).exists():
            return Run(parent)
    return None
