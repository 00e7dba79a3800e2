"""The run-directory layout, manifest, atomic writes: the one place a run file is named.

A run directory is the hand-off between steps (train -> export -> bench ...).
Every other module asks a `Run` for its paths instead of spelling file names:

    RUN/
      config.json        resolved config and hyperparameters (written first)
      recipe.py          copy of the recipe file, so the run is self-contained
      model.keras        best model (by the recipe's validation metric)
      history.csv        one row per epoch
      metrics.json       test-split metrics
      data_profile.json  training-split summary that `kerakit drift` compares against
      manifest.json      reproducibility record + SHA-256 of artifacts (written last:
                         a run is finished once it exists)
      logs/              TensorBoard
      checkpoints/       best checkpoint while training (removed once finished)
      backup/            BackupAndRestore state while training is unfinished
      export/            `kerakit export`: one file (or SavedModel folder) per artifact,
                         labels.txt, export_report.json, manifest.json of the export,
                         runtime.json (ONNX settings `kerakit bench` found best),
                         tfserving/ and triton/ layouts
      bench/             `kerakit bench`: bench.json, bench.png
      deployment.json    `kerakit bench`: per batch size, the fastest verified artifact on this
                         machine and its runtime settings (what `serve RUN`, `runtime.load(RUN)` use)
      report/            `kerakit report`: model_card.md, index.html, figures
      requests.jsonl     `kerakit serve` request log (when serving this run's model)
      build.json         what `kerakit build` last exported and benched (skips them on a rerun)
      search/            `kerakit build --tune`: the search, laid out as a `Search`
      cv/                `kerakit cv ... --out RUN/cv`: a `CrossValidation`, shown in the report

A search directory (`kerakit tune --out OUT`, or RUN/search):

    OUT/
      tuner/             keras-tuner's project (oracle state, one folder per trial)
      search.json        what this directory is searching (checked on resume)
      trials.json, trials.csv, trials.png
      best_hparams.json  the best trial's hyperparameters (kerakit train --hparams ...)
      best/              the best hyperparameters retrained as a normal run
      distributed/       chief and worker logs of `--workers N`

A cross-validation directory (`kerakit cv RECIPE --folds K --out OUT`):

    OUT/
      fold-1/ ... fold-K/  one run per fold, laid out as a `Run` (each resumes like `kerakit train`)
      folds.csv            one row per finished fold
      cv.json              the request, then (written last: finished once it has `mean`) the per-fold
                           table and the mean and standard deviation of the recipe's metric

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

# A run directory.
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
RECIPE_FILE = "recipe.py"
BACKUP_DIR = "backup"
CHECKPOINT_DIR = "checkpoints"
LOGS_DIR = "logs"
EXPORT_DIR = "export"
BENCH_DIR = "bench"
REPORT_DIR = "report"
SEARCH_DIR = "search"
DATA_PROFILE_FILE = "data_profile.json"
REQUEST_LOG_FILE = "requests.jsonl"
BUILD_STATE_FILE = "build.json"
DEPLOYMENT_FILE = "deployment.json"

# Files that also live in directories that are not a run (`--out` of export, bench, ...).
EXPORT_REPORT_FILE = "export_report.json"
LABELS_FILE = "labels.txt"
RUNTIME_SETTINGS_FILE = "runtime.json"  # per artifact directory: the ONNX settings `kerakit bench` found best
BENCH_RESULT_FILE = "bench.json"
BENCH_CHART_FILE = "bench.png"
REPORT_MARKDOWN_FILE = "model_card.md"
REPORT_HTML_FILE = "index.html"

# A search directory.
TUNER_DIR = "tuner"
SEARCH_FILE = "search.json"
TRIALS_JSON_FILE = "trials.json"
TRIALS_CSV_FILE = "trials.csv"
TRIALS_PNG_FILE = "trials.png"
BEST_HPARAMS_FILE = "best_hparams.json"
BEST_DIR = "best"
DISTRIBUTED_DIR = "distributed"

# A cross-validation directory.
CV_DIR = "cv"
CV_FILE = "cv.json"
FOLDS_CSV_FILE = "folds.csv"
FOLD_DIR = "fold-{index}"  # 1-based


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` on success.

    The temporary name keeps the target's suffix (Keras checks `.keras`).

        with atomic_path("run/notes.txt") as tmp:
            _ = tmp.write_text("written in full, or not at all")
        Path("run/notes.txt").read_text()
        # -> 'written in full, or not at all'
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
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the directory gets ordinary permissions
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


def load_json(path: str | os.PathLike, fix: str, keys: tuple[str, ...] = ()) -> dict:
    """A JSON object kerakit wrote, or one line naming the file, what is wrong and `fix` (what to do).

    A file that is torn, hand-edited or replaced by garbage must not become a
    traceback three steps later: `keys` are the entries the caller needs.
    """
    path = Path(path)
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise KerakitError(f"{path} is missing; {fix}.") from None
    except UnicodeDecodeError:
        raise KerakitError(f"{path} is not valid JSON (not UTF-8 text); {fix}.") from None
    except json.JSONDecodeError as e:
        raise KerakitError(f"{path} is not valid JSON (line {e.lineno}); {fix}.") from None
    if not isinstance(data, dict):
        raise KerakitError(f"{path} holds a JSON {type(data).__name__} where an object is expected; {fix}.")
    missing = [k for k in keys if k not in data]
    if missing:
        raise KerakitError(f"{path} lacks {', '.join(map(repr, missing))}; {fix}.")
    return data


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def intact(path: Path, digest: str | None) -> bool:
    """Whether the file at `path` exists with SHA-256 `digest` (a directory: `tree_sha256`)."""
    if digest is None or not path.exists():
        return False
    return (tree_sha256(path) if path.is_dir() else sha256(path)) == digest


def tree_sha256(path: Path) -> str:
    """One SHA-256 over a directory's files: their relative names and contents, in sorted order."""
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode())
        h.update(sha256(p).encode())
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


LOCK_FILE = ".kerakit.lock"
# Names the atomic writes above and export's staging give their temporaries: what a killed writer leaves.
LEFTOVER_MARKS = (".tmp", ".old", ".staging-", ".write-test-")
_held: dict[Path, list] = {}  # directory -> [lock file descriptor, depth], for re-entrant writers


@contextlib.contextmanager
def writer(path: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold `path`'s writer lock while the block runs: one writing kerakit process per directory.

    An advisory `fcntl.flock` on DIR/.kerakit.lock, which the OS releases when
    the process dies, so a SIGKILL never leaves a stale lock. A second process
    gets one line naming the holder. Re-entrant within a process (`build`
    holds it while train, export, bench and report take it again). The first
    holder also removes what killed writers left behind (temporary files and
    staging directories), since no other writer can be mid-write.

        with writer("runs/demo", "kerakit export"):
            ...
    """
    path = ensure_writable_dir(path)
    key = path.resolve()
    if key in _held:
        _held[key][1] += 1
        try:
            yield path
        finally:
            _held[key][1] -= 1
        return
    fd = _acquire(path, command)
    _held[key] = [fd, 1]
    try:
        remove_leftovers(path)
        yield path
    finally:
        del _held[key]
        os.close(fd)  # releases the flock


def _acquire(path: Path, command: str) -> int:
    import datetime as _dt
    import fcntl

    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise KerakitError(f"{path} is in use by {holder}. Wait for it to finish, or use another --out.") from None
    since = _dt.datetime.now().strftime("%H:%M:%S")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} ({command}, since {since})\n".encode(), 0)
    return fd


def remove_leftovers(path: Path) -> list[Path]:
    """Delete temporaries that killed writers left in `path` and its direct subdirectories."""
    found = []
    for folder in [path, *(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))]:
        for p in folder.iterdir():
            if p.name.startswith(".") and any(mark in p.name for mark in LEFTOVER_MARKS):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                found.append(p)
    return found


def owner(path: str | os.PathLike) -> Path:
    """The directory whose writer lock covers `path`: the run it lies in, else `path` itself."""
    run = find_run(path)
    return run.path if run is not None else Path(path)


def is_run(path: str | os.PathLike) -> bool:
    """True for a finished run: a directory holding config.json and manifest.json.

    An unfinished run (config.json written, manifest.json not yet) does not
    count: its model may be a half-trained epoch, so nothing downstream reads
    it; `kerakit train` with the same --out finishes it. manifest.json alone
    does not count either: an export directory holds one of its own.

        run = kerakit.train("digits_cnn", "runs/demo", epochs=3)
        is_run(run.path), is_run(run.export_dir), is_run("runs/nowhere")
        # -> (True, False, False)
    """
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / MANIFEST_FILE).is_file()


@dataclass
class Run:
    """A run directory, and every path in it.

    >>> run = Run("runs/demo")              # e.g. kerakit.train("digits_cnn", "runs/demo")
    >>> run.model_path, run.export_dir
    (PosixPath('runs/demo/model.keras'), PosixPath('runs/demo/export'))
    """

    path: Path

    def __post_init__(self):
        self.path = Path(self.path)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Run":
        """The finished run at `path` (see `is_run`), or a KerakitError saying why it is not one."""
        path = Path(path)
        if not path.is_dir():
            raise KerakitError(f"Run directory {str(path)!r} does not exist.")
        if is_run(path):
            return cls(path)
        if (path / CONFIG_FILE).exists():
            raise KerakitError(
                f"{str(path)!r} is not a finished kerakit run (no {MANIFEST_FILE}). "
                "Rerun `kerakit train` with the same --out to finish it."
            )
        raise KerakitError(
            f"{str(path)!r} is not a kerakit run (expected {CONFIG_FILE} and {MANIFEST_FILE} in it). "
            "Pass a directory written by `kerakit train` or `kerakit build`."
        )

    @property
    def is_finished(self) -> bool:
        return is_run(self.path)

    # Files written by `kerakit train`.
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def recipe_path(self) -> Path:
        return self.path / RECIPE_FILE

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def data_profile(self) -> Path:
        return self.path / DATA_PROFILE_FILE

    @property
    def backup_dir(self) -> Path:
        return self.path / BACKUP_DIR

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def logs_dir(self) -> Path:
        return self.path / LOGS_DIR

    # What later steps add.
    @property
    def export_dir(self) -> Path:
        return self.path / EXPORT_DIR

    @property
    def export_report(self) -> Path:
        return self.export_dir / EXPORT_REPORT_FILE

    @property
    def bench_dir(self) -> Path:
        return self.path / BENCH_DIR

    @property
    def bench_result(self) -> Path:
        return self.bench_dir / BENCH_RESULT_FILE

    @property
    def bench_chart(self) -> Path:
        return self.bench_dir / BENCH_CHART_FILE

    @property
    def deployment(self) -> Path:
        return self.path / DEPLOYMENT_FILE

    @property
    def report_dir(self) -> Path:
        return self.path / REPORT_DIR

    @property
    def request_log(self) -> Path:
        return self.path / REQUEST_LOG_FILE

    @property
    def build_state(self) -> Path:
        return self.path / BUILD_STATE_FILE

    @property
    def search_dir(self) -> Path:
        return self.path / SEARCH_DIR

    @property
    def cv_dir(self) -> Path:
        return self.path / CV_DIR

    # Contents.
    @property
    def config(self) -> dict:
        return load_json(self.config_path, f"delete {self.path} and train again", ("config", "recipe"))

    @property
    def manifest(self) -> dict:
        return load_json(self.manifest_path, "delete it and rerun `kerakit train` with the same --out "
                                             "(it trains the run again)", ("artifacts",))

    @property
    def metrics(self) -> dict:
        return load_json(self.metrics_path, f"delete {self.manifest_path} and rerun `kerakit train` with the "
                                            "same --out to evaluate the model again")

    def recipe(self):
        """The run's own copy of its recipe, under the recipe's name."""
        from kerakit.recipe import load_recipe

        recipe = load_recipe(self.recipe_path)
        recipe.name = self.config.get("recipe", recipe.name)
        # A dataset made from the user's files: the files the run trained on, wherever the command runs from.
        trained_on = (read_json(self.manifest_path).get("data", {}).get("source", {}).get("source")
                      if recipe.source is not None and self.manifest_path.exists() else None)
        if trained_on and Path(trained_on).exists():
            recipe.dataset = trained_on
        return recipe

    def verify_artifacts(self) -> dict[str, bool]:
        """Re-hash every artifact listed in the manifest; True where it still matches."""
        return {name: intact(self.path / name, digest) for name, digest in self.manifest["artifacts"].items()}

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


def find_run(path: str | os.PathLike) -> Run | None:
    """The finished run `path` is or lies in (RUN, RUN/model.keras, RUN/export/model.onnx, ...), if any.

        run = kerakit.train("digits_cnn", "runs/demo", epochs=3)
        find_run(run.model_path) == Run(run.path.resolve()), find_run("/tmp")
        # -> (True, None)
    """
    path = Path(path).resolve()
    for parent in [path, *path.parents]:
        if is_run(parent):
            return Run(parent)
    return None


@dataclass
class Search:
    """A search directory written by `kerakit tune` (or RUN/search of `kerakit build --tune`).

        result = kerakit.tune("breast_cancer_mlp", "runs/search", max_trials=2)
        search = Search(result.path)
        read_json(search.best_hparams) == result.best_hparams, Run.open(search.best_dir).is_finished
        # -> (True, True)
    """

    path: Path

    def __post_init__(self):
        self.path = Path(self.path)

    @property
    def tuner_dir(self) -> Path:
        return self.path / TUNER_DIR

    @property
    def search_file(self) -> Path:
        return self.path / SEARCH_FILE

    @property
    def trials_json(self) -> Path:
        return self.path / TRIALS_JSON_FILE

    @property
    def trials_csv(self) -> Path:
        return self.path / TRIALS_CSV_FILE

    @property
    def trials_png(self) -> Path:
        return self.path / TRIALS_PNG_FILE

    @property
    def best_hparams(self) -> Path:
        return self.path / BEST_HPARAMS_FILE

    @property
    def best_dir(self) -> Path:
        return self.path / BEST_DIR

    @property
    def distributed_dir(self) -> Path:
        return self.path / DISTRIBUTED_DIR

    def __repr__(self) -> str:
        return f"Search({str(self.path)!r})"


@dataclass
class CrossValidation:
    """A directory written by `kerakit cv` (or RUN/cv): one run per fold, the table, the summary.

        result = kerakit.cross_validate("breast_cancer_mlp", "runs/cv", folds=3)
        cv = CrossValidation(result["path"])
        cv.summary()["mean"] == result["mean"], Run.open(cv.fold_dir(1)).is_finished
        # -> (True, True)
    """

    path: Path

    def __post_init__(self):
        self.path = Path(self.path)

    @property
    def cv_file(self) -> Path:
        return self.path / CV_FILE

    @property
    def folds_csv(self) -> Path:
        return self.path / FOLDS_CSV_FILE

    def fold_dir(self, index: int) -> Path:
        """The run of fold `index` (1-based)."""
        return self.path / FOLD_DIR.format(index=index)

    def summary(self) -> dict | None:
        """cv.json of a finished cross-validation (it has a `mean`), else None."""
        if not self.cv_file.is_file():
            return None
        data = load_json(self.cv_file, f"delete it and rerun `kerakit cv` with --out {self.path}")
        return data if "mean" in data else None

    def __repr__(self) -> str:
        return f"CrossValidation({str(self.path)!r})"
