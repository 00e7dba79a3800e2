"""The tuners `kerakit tune` runs, and what kerakit adds to each of them, on keras-tuner's own extension points.

    kind = resolve("hyperband")            # an entry of TUNERS
    kind = resolve("my_oracles:Annealing") # any keras_tuner.Oracle subclass, run by keras_tuner.Tuner
    tuner = make_tuner(kind, budget=9, objective=..., hyperparameters=hp, seed=0, recipe=recipe, data=data,
                       directory="runs/search", project_name="tuner")

`TUNERS` is the one place a tuner is told apart from another: each entry
names the keras-tuner class it runs, the argument that bounds its search
(`max_trials`, or Hyperband's `max_epochs`) and whether its trials can be
scored fold by fold. A custom Oracle needs no entry: `--tuner MODULE:CLASS`
runs it on `keras_tuner.Tuner`. `SearchTrials` is mixed in before whichever
keras-tuner class runs, and brings kerakit's behaviour through keras-tuner's
hooks (`run_trial`, `on_epoch_end`, `on_trial_begin`, `on_trial_end`).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from kerakit import files, runs, tracking
from kerakit.errors import KerakitError

EPOCHS_FILE = "epochs_run.json"  # in each keras-tuner trial folder
FOLDS_FILE = "cv_folds.json"  # in each keras-tuner trial folder, with --cv: the objective of each finished fold
RECYCLE_EXIT = 75  # EX_TEMPFAIL: "start me again", not a failure


@dataclass(frozen=True)
class TunerKind:
    """What `--tuner NAME` runs: keras-tuner's class `tuner` (or `keras_tuner.Tuner` over a custom `oracle`)."""

    name: str  # as --tuner spells it and search.json records it
    tuner: str  # the keras_tuner class
    budget: str = "max_trials"  # the argument (of the class, and of the request) that bounds the search
    cv: bool = True  # False: a trial continues from a parent trial's weights, which no fold has
    options: tuple = ()  # further (argument, value) pairs for the class
    oracle: type | None = None  # a custom keras_tuner.Oracle subclass, built with the search's arguments


# --tuner names and what they run (adding a tuner is one entry here).
TUNERS = {kind.name: kind for kind in (
    TunerKind("random", "RandomSearch"),
    TunerKind("grid", "GridSearch"),
    TunerKind("bayesian", "BayesianOptimization"),
    # Its trials continue from a parent trial's checkpoint; its search is bounded by epochs, not trials.
    TunerKind("hyperband", "Hyperband", budget="max_epochs", cv=False, options=(("factor", 3),)),
)}
CUSTOM = "MODULE:CLASS naming a keras_tuner.Oracle subclass (e.g. my_oracles:Annealing)"


def spec(tuner: "str | type") -> str:
    """How --tuner spells `tuner`: a table name, or MODULE:CLASS for an Oracle class."""
    return f"{tuner.__module__}:{tuner.__qualname__}" if isinstance(tuner, type) else str(tuner)


def resolve(tuner: "str | type") -> TunerKind:
    """The entry of TUNERS named `tuner`, or a kind that runs the custom Oracle class it names or is."""
    if isinstance(tuner, str) and tuner in TUNERS:
        return TUNERS[tuner]
    if isinstance(tuner, str) and ":" in tuner:
        oracle = _import(tuner)
    elif isinstance(tuner, type):
        oracle = tuner
    else:
        if not isinstance(tuner, str):
            _refuse_instance(tuner)
        raise KerakitError(f"Invalid tuner={tuner!r}. Expected one of {', '.join(TUNERS)}, or {CUSTOM}.")
    import keras_tuner as kt

    if not issubclass(oracle, kt.Oracle):
        raise KerakitError(f"Invalid tuner={spec(tuner)!r}: {oracle.__qualname__} is not a keras_tuner.Oracle "
                           f"subclass. Expected one of {', '.join(TUNERS)}, or {CUSTOM}.")
    return TunerKind(spec(oracle), "Tuner", oracle=oracle)


def _import(text: str) -> type:
    import importlib

    module, _, name = text.partition(":")
    try:
        found = importlib.import_module(module)
    except ImportError as e:
        raise KerakitError(f"Cannot import {module!r} for --tuner {text}: {e}. Pass a module on the Python path "
                           "(e.g. my_package.oracles; set PYTHONPATH for a loose file).") from None
    oracle = getattr(found, name, None)
    if not isinstance(oracle, type):
        raise KerakitError(f"Invalid tuner={text!r}: module {module} has no class {name!r}. Expected {CUSTOM}.")
    return oracle


def _refuse_instance(tuner) -> None:
    import keras_tuner as kt

    if isinstance(tuner, kt.Oracle):  # an instance could not be rebuilt on resume or sent to a worker
        raise KerakitError(f"Invalid tuner={type(tuner).__qualname__} instance: pass the Oracle's class "
                           f"({spec(type(tuner))}); kerakit builds it with the search's objective, max_trials, "
                           "fixed hyperparameters and seed.")


def make_tuner(kind: TunerKind, *, budget: int, objective, hyperparameters, seed: int, **kwargs):
    """`kind`'s keras-tuner tuner with `SearchTrials` mixed in; `kwargs` go to SearchTrials and keras_tuner.Tuner.

    keras-tuner's own classes build their oracle from the search's arguments;
    a custom Oracle class is built from the same ones, as
    `Class(objective=, max_trials=, hyperparameters=, tune_new_entries=True, seed=)`.
    """
    import keras_tuner as kt

    search = dict(objective=objective, hyperparameters=hyperparameters, tune_new_entries=True, seed=seed,
                  **{kind.budget: budget}, **dict(kind.options))
    tuner_class = _with_trials(getattr(kt, kind.tuner))
    try:
        if kind.oracle is None:
            return tuner_class(**search, **kwargs)
        try:
            oracle = kind.oracle(**search)
        except TypeError as e:
            raise KerakitError(f"Cannot build --tuner {kind.name} as {kind.oracle.__qualname__}(objective=, "
                               f"max_trials=, hyperparameters=, tune_new_entries=, seed=): {e}") from e
        return tuner_class(oracle=oracle, **kwargs)
    except RuntimeError as e:  # keras-tuner cannot reload an incompatible project
        raise KerakitError(f"Cannot resume the search: {e}") from e


@cache
def _with_trials(base: type) -> type:
    return type(base.__name__, (SearchTrials, base), {"__module__": __name__, "__qualname__": base.__name__})


def trial_dir(project_dir: "str | os.PathLike", trial_id: str) -> Path:
    """keras-tuner's folder of one trial (where kerakit keeps its backups, epoch count and folds too)."""
    return Path(project_dir) / f"trial_{trial_id}"


class SearchTrials:
    """kerakit's trials, mixed in before a keras-tuner Tuner class (`class T(SearchTrials, kt.RandomSearch)`).

    - `run_trial` gives each trial its own BackupAndRestore, so an interrupted
      trial resumes from its last finished epoch; with `folds`, it fits each
      fold in turn (a fold finished before an interruption is kept, in
      trial_N/cv_folds.json) and returns their metrics, which keras-tuner
      averages into the trial's score;
    - `on_epoch_end` counts the epochs a trial really trained (early stopping
      and Hyperband make it vary), in trial_N/epochs_run.json, across resumes;
    - `on_trial_begin` and `on_trial_end` log each trial; a worker exits with
      RECYCLE_EXIT after `recycle_after` trials (0: never), since TensorFlow
      keeps ~10 MB per model a process has built, even after clear_session.

    The hypermodel is the recipe's own `build_model(hp, data)`, on `self.data`
    (a fold's, while that fold trains).
    """

    def __init__(self, *, recipe, data, folds: list | None = None, log=print, recycle_after: int = 0, tracker=None,
                 **kwargs):
        self.recipe, self.data, self.folds = recipe, data, folds or []
        self.log, self.recycle_after, self.trials_here = log, recycle_after, 0
        # --track: the search's MLflow run (kerakit.tracking.Tracker); each trial a run nested in it.
        self.tracker, self.trial_tracker, self.fold = tracker, None, None
        super().__init__(hypermodel=self.build_model, **kwargs)

    def build_model(self, hp):
        return self.recipe.build(hp, self.data)

    def run_trial(self, trial, *args, **kwargs):
        if not self.folds:
            return self._fit(trial, runs.BACKUP_DIR, *args, **kwargs)
        return self._fit_folds(trial, kwargs)

    def _fit(self, trial, backup_name: str, *args, **kwargs):
        from kerakit.callbacks import Backup, restore_point

        backup = trial_dir(self.project_dir, trial.trial_id) / backup_name
        resumed = restore_point(backup, self.log)
        if resumed:
            self.log(f"Trial {trial.trial_id} resumes from epoch {resumed} (interrupted earlier).")
        callbacks = [*kwargs.pop("callbacks", []), Backup(backup)]
        # class weights as train uses them (self.data: this fold's, under --cv), validation rows weighed alike
        kwargs.update(self.recipe.weighted_fit(self.data, self.data.config, kwargs.get("validation_data")))
        return super().run_trial(trial, *args, callbacks=callbacks, **kwargs)

    def _fit_folds(self, trial, kwargs: dict) -> list[dict]:
        from keras_tuner.src.engine import tuner_utils

        state = trial_dir(self.project_dir, trial.trial_id) / FOLDS_FILE
        done = files.read_json(state) if state.exists() else {}
        whole = self.data
        try:
            for k, fold in enumerate(self.folds, start=1):
                if str(k) not in done:
                    self.data, self.fold = fold, k  # build_model adapts to this fold's training part
                    histories = self._fit(trial, f"{runs.BACKUP_DIR}-fold{k}", fold.train,
                                          **{**kwargs, "validation_data": fold.val})
                    done[str(k)] = tuner_utils.convert_to_metrics_dict(histories, self.oracle.objective)
                    files.write_json(state, done)
        finally:
            self.data, self.fold = whole, None
        return [done[str(k)] for k in range(1, len(self.folds) + 1)]

    def on_epoch_end(self, trial, model, epoch, logs=None):
        super().on_epoch_end(trial, model, epoch, logs=logs)
        path = trial_dir(self.project_dir, trial.trial_id) / EPOCHS_FILE
        done = files.read_json(path)["epochs"] if path.exists() else 0
        files.write_json(path, {"epochs": done + 1})
        if self.trial_tracker is not None:  # queued: a slow server does not hold the epoch up
            prefix = f"fold_{self.fold}." if self.fold else ""
            self.trial_tracker.metrics({prefix + k: v for k, v in (logs or {}).items()}, step=epoch, wait=False,
                                       what=f"trial {trial.trial_id}'s epoch metrics")

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        done = sum(t.status == "COMPLETED" for t in getattr(self.oracle, "trials", {}).values())
        best = self.oracle.get_best_trials(1)
        best_text = f"best so far {best[0].score:.4f}" if best and best[0].score is not None else "no score yet"
        total = self.oracle.max_trials  # None where the oracle sets its own budget (Hyperband)
        self.log(f"Trial {trial.trial_id} ({done + 1}{f' of {total}' if total else ''}) starting; {best_text}; "
                 f"{ {k: v for k, v in trial.hyperparameters.values.items() if not k.startswith('tuner/')} }")
        self._trial_started = time.time()
        if self.tracker is not None:
            self.trial_tracker = tracking.trial_started(self.tracker, trial_dir(self.project_dir, trial.trial_id),
                                                        trial.trial_id, trial.hyperparameters.values)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)  # reports the trial to the oracle first
        score = trial.score
        if score is None and trial.status == "COMPLETED":  # a worker's trial: the chief's oracle scored it
            score = self.oracle.get_trial(trial.trial_id).score
        if self.trial_tracker is not None:
            tracking.trial_ended(self.trial_tracker, trial.status, score)
            self.trial_tracker = None
        self.log(f"Trial {trial.trial_id} {trial.status.lower()} in {time.time() - self._trial_started:.1f} s, "
                 f"score {score}")
        self.trials_here += 1
        if self.recycle_after and self.trials_here >= self.recycle_after:
            self.log(f"Worker recycling after {self.trials_here} trials (frees what TensorFlow keeps per model).")
            sys.stdout.flush()
            os._exit(RECYCLE_EXIT)  # no interpreter teardown: TF's threads can stall a normal exit
