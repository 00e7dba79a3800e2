"""File-system primitives: atomic writes, JSON that fails in one line, SHA-256, the writer lock.

    with atomic_path("out/model.keras") as tmp:   # written in full under a temporary name, renamed into place
        model.save(tmp)
    write_json("out/metrics.json", {"accuracy": 0.97})
    load_json("out/metrics.json", "delete it and evaluate again", ("accuracy",))
    with writer("out", "kerakit export"):         # one writing kerakit process per directory
        ...

Every file kerakit writes goes through here, so a killed process leaves the
old file or the new one, never half. Nothing here knows a run's layout
(`kerakit.runs`) or any file's name but the lock's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from kerakit.errors import KerakitError


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


def ensure_writable_dir(path: str | os.PathLike, has_out: bool = True) -> Path:
    """Create `path` if needed and prove we can write into it, or raise a clear error.

    has_out: whether the command writing it takes --out (`kerakit report` writes into the run it is given)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        fix = "Pass a writable --out DIR." if has_out else "Make it writable, or copy the run somewhere writable."
        raise KerakitError(f"Cannot write to output directory {str(path)!r}: {e.strerror or e}. {fix}") from None
    return path


LOCK_FILE = ".kerakit.lock"
# Names the atomic writes above and export's staging give their temporaries: what a killed writer leaves.
LEFTOVER_MARKS = (".tmp", ".old", ".staging-", ".write-test-")
_held: dict[Path, list] = {}  # directory -> [lock file descriptor, depth], for re-entrant writers


@contextlib.contextmanager
def writer(path: str | os.PathLike, command: str, has_out: bool = True) -> Iterator[Path]:
    """Hold `path`'s writer lock while the block runs: one writing kerakit process per directory.

    An advisory `fcntl.flock` on DIR/.kerakit.lock, which the OS releases when
    the process dies, so a SIGKILL never leaves a stale lock. A second process
    gets one line naming the holder. Re-entrant within a process (`build`
    holds it while train, export, bench and report take it again). The first
    holder also removes what killed writers left behind (temporary files and
    staging directories), since no other writer can be mid-write.

        with writer("runs/demo", "kerakit export"):
            ...

    has_out: whether `command` takes --out, so that its messages offer another directory only where it does.
    """
    path = ensure_writable_dir(path, has_out)
    key = path.resolve()
    if key in _held:
        _held[key][1] += 1
        try:
            yield path
        finally:
            _held[key][1] -= 1
        return
    fd = _acquire(path, command, has_out)
    _held[key] = [fd, 1]
    try:
        remove_leftovers(path)
        yield path
    finally:
        del _held[key]
        os.close(fd)  # releases the flock


def _acquire(path: Path, command: str, has_out: bool = True) -> int:
    import datetime as _dt
    import fcntl

    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
        os.close(fd)
        instead = ", or use another --out" if has_out else ""
        raise KerakitError(f"{path} is in use by {holder}. Wait for it to finish{instead}.") from None
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
