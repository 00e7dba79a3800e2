"""Keras callbacks that kerakit adds to every training run."""

from __future__ import annotations

import math
from pathlib import Path

import keras

from kerakit import runs

BEST_CHECKPOINT = "best.keras"
BEST_STATE = "best.json"


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
        state = runs.read_json(state_path) if state_path.exists() and self.path.exists() else {}
        self.best = state.get("best")
        self.best_epoch = state.get("epoch")

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(value):
            return
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            with runs.atomic_path(self.path) as tmp:
                self.model.save(tmp)
            self.best, self.best_epoch = float(value), epoch + 1
            runs.write_json(self.directory / BEST_STATE, {"best": self.best, "epoch": self.best_epoch})
