"""Keras callbacks that kerakit adds to every training run."""

from __future__ import annotations

import math
from pathlib import Path

import keras

from kerakit import files

BEST_CHECKPOINT = "best.keras"
BEST_STATE = "best.json"


def ensure_space(directory: Path, model) -> None:
    """Refuse a save that cannot fit, before HDF5 starts it: HDF5 crashes the process (SIGSEGV)
    on a full disk mid-write, where an OSError can still be reported and resumed from."""
    import errno
    import shutil

    variables = [*model.weights, *(model.optimizer.variables if model.optimizer is not None else [])]
    needed = 2 * sum(_nbytes(v) for v in variables) + (1 << 20)  # the file, and its replacement
    directory.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(directory).free < needed:
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))


def _nbytes(variable) -> int:
    """A variable's size from its shape and dtype: called twice an epoch, it must not copy the weights out
    (`.numpy()` did, for every variable of model and optimizer)."""
    import numpy as np

    try:
        itemsize = np.dtype(variable.dtype).itemsize
    except TypeError:  # a dtype numpy does not name (bfloat16): measured on a copy
        return int(variable.numpy().nbytes)
    return math.prod(variable.shape) * itemsize


class BestCheckpoint(keras.callbacks.Callback):
    """Save the best model so far, atomically, and remember its score across resumes.

    Keras's ModelCheckpoint forgets its best score when a run resumes (so a
    worse epoch could overwrite a better checkpoint) and writes in place; this
    one keeps `best.json` beside the checkpoint and renames into place.
    """

    def __init__(self, directory: Path, monitor: str, mode: str):
        super().__init__()
        self.directory, self.monitor, self.mode = Path(directory), monitor, mode
        self.path = self.directory / BEST_CHECKPOINT
        state_path = self.directory / BEST_STATE
        state = files.read_json(state_path) if state_path.exists() and self.path.exists() else {}
        self.best = state.get("best")
        self.best_epoch = state.get("epoch")

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(value):
            return
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            ensure_space(self.directory, self.model)
            with files.atomic_path(self.path) as tmp:
                self.model.save(tmp)
            self.best, self.best_epoch = float(value), epoch + 1
            files.write_json(self.directory / BEST_STATE, {"best": self.best, "epoch": self.best_epoch})


FIT_DONE = "fit_done.json"  # in the backup directory: fit returned, the run is not recorded yet
FINE_TUNE = "fine_tune.json"  # in the backup directory: the second phase started, {"from_epoch": N}
WEIGHTS = "latest.weights.h5"
METADATA = "training_metadata.json"
PREVIOUS = ".bkp"  # Keras's suffix for the previous epoch's pair (double_checkpoint)


class Backup(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore, with files that are never torn and a backup that outlives `fit`.

    Keras writes the weights in place and copies the previous pair, so a kill
    or a full disk mid-write leaves a file it cannot read on every later
    resume. Here the new pair is written under temporary names, the current
    pair is renamed to `.bkp`, and the new one renamed into place: at any
    moment one complete pair exists (`restore_point` picks it). With
    `keep=True` the backup stays after `fit`, marked done, so a process killed
    before the run is recorded does not train again; `kerakit train` removes
    it once the manifest is written. `last=False`: a first phase, whose end
    marks nothing done.
    """

    def __init__(self, backup_dir, keep: bool = False, last: bool = True):
        super().__init__(str(backup_dir), double_checkpoint=True, delete_checkpoint=not keep)
        self.directory, self.keep, self.last = Path(backup_dir), keep, last

    def _save_model(self):
        import json
        import os

        ensure_space(self.directory, self.model)
        weights, metadata = self.directory / WEIGHTS, self.directory / METADATA
        new_weights, new_metadata = self.directory / ".next.tmp.weights.h5", self.directory / ".next.tmp.json"
        self.model.save_weights(filepath=str(new_weights), overwrite=True)
        new_metadata.write_text(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))
        if weights.exists() and metadata.exists():
            os.replace(weights, f"{weights}{PREVIOUS}")
            os.replace(metadata, f"{metadata}{PREVIOUS}")
        os.replace(new_weights, weights)
        os.replace(new_metadata, metadata)

    def save_now(self, model, epoch: int) -> None:
        """Back up `model` as it is now, as the state after `epoch` epochs (a phase switch: its new optimizer)."""
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        self.set_model(model)
        self._current_epoch, self._last_batch_seen = epoch, 0
        self._save_model()

    def on_train_end(self, logs=None):
        if not self.last:
            return
        if self.keep:
            files.write_json(self.directory / FIT_DONE, {"epoch": getattr(self, "_current_epoch", None)})
        else:
            super().on_train_end(logs)


def restore_point(backup_dir: Path, log) -> int:
    """The epoch training resumes from: the newest complete, readable backup pair; 0 without one.

    A damaged latest pair falls back to the previous epoch's; with neither,
    the backup is removed and training starts over. Each case says so.
    """
    import shutil

    backup_dir = Path(backup_dir)
    if not backup_dir.exists():
        return 0
    latest = (backup_dir / WEIGHTS, backup_dir / METADATA)
    previous = tuple(Path(f"{p}{PREVIOUS}") for p in latest)
    epoch = _readable(*latest)
    if epoch is not None:
        return epoch
    epoch = _readable(*previous)
    if epoch is not None:
        log(f"{latest[0]} is damaged or incomplete; resuming from the previous epoch's backup (epoch {epoch}).")
        for src, dst in zip(previous, latest):
            files.copy_file(src, dst)
        return epoch
    if any(p.exists() for p in (*latest, *previous)):
        log(f"The training backup in {backup_dir} is damaged; training starts over from epoch 0.")
    shutil.rmtree(backup_dir, ignore_errors=True)
    return 0


def _readable(weights: Path, metadata: Path) -> int | None:
    """The pair's epoch, if the metadata parses and every array of the weights file reads back."""
    import h5py

    try:
        epoch = int(files.read_json(metadata)["epoch"])
        with h5py.File(weights, "r") as f:
            f.visititems(lambda name, item: item[()] if isinstance(item, h5py.Dataset) else None)
        return epoch
    except Exception:  # noqa: BLE001 - any way a torn file fails to read means "not usable"
        return None
