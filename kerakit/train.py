"""`kerakit train`: one recipe -> one run directory.

    run = kerakit.train("digits_cnn", epochs=3)
    run.metrics["accuracy"]

Rerunning with the same `out` resumes an interrupted run from its last
finished epoch (BackupAndRestore) and returns a finished one unchanged.
"""

from __future__ import annotations

import csv
import datetime as _dt
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kerakit import distribute, files, runs, tracking
from kerakit.errors import KerakitError
from kerakit.recipe import Recipe, load_recipe

@dataclass
class _Job:
    """One `train` call's request, resolved before TensorFlow starts."""

    recipe: Recipe
    config: dict
    hp_values: dict  # from --hparams, then overrides
    hp_overrides: dict  # overrides that are not config keys: checked once the search space is known
    requested: dict  # what config.json records; a rerun on the same directory must match it
    strategy: str
    run: runs.Run
    fold: Any  # kerakit.folds.Fold: train on one cross-validation fold (None: the recipe's splits)
    work: runs.Run  # where training writes: the run itself, or a private directory on a non-chief worker
    chief: bool
    started: float
    tracker: Any = None  # kerakit.tracking.Tracker: the MLflow run (--track); None or off: not tracked


def train(
    recipe: "str | os.PathLike | Recipe",
    out: "str | os.PathLike | None" = None,
    *,
    strategy: str | None = None,
    data_dir: str | None = None,
    hparams: "dict | str | os.PathLike | None" = None,
    overwrite: bool = False,
    verbose: "int | str" = "auto",
    log: Callable[[str], None] = print,
    fold: Any = None,
    track: bool | None = None,
    **overrides: Any,
) -> runs.Run:
    """Train `recipe` with `overrides` (config keys or hyperparameter names) into `out`.

    hparams: a dict or a JSON file of hyperparameter values (e.g. a tuner's
    best_hparams.json); `overrides` win over it. fold: a `kerakit.folds.Fold`
    (what `kerakit cv` passes): train on that fold's training part, pick the
    best epoch on its held-out part, and record the metric there too. track: log to MLflow
    (`kerakit.tracking`; None: the recipe's `tracking` default); a resume continues the same MLflow run.
    """
    job = _setup(recipe, out, strategy, hparams, overrides, started=time.time(), fold=fold)
    if not job.chief:  # a non-chief worker trains in lockstep into a private directory
        return _train(job, data_dir, verbose, log)
    with files.writer(job.run.path, "kerakit train"):
        finished = _check_previous(job.run, job.requested, overwrite, log)
        if finished is not None:
            if tracking.wanted(track, job.config):  # what a server that was down missed
                tracking.track_run(finished.path, log)
            return finished
        files.write_json(job.run.config_path, job.requested)
        files.copy_file(job.recipe.path, job.run.recipe_path)
        with tracking.training(job.run, job.recipe, job.config, track, log) as job.tracker:
            return _train(job, data_dir, verbose, log)


def _train(job: "_Job", data_dir: str | None, verbose, log) -> runs.Run:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from kerakit.data import load_data

    dist = distribute.make_strategy(job.strategy)  # before other TF work (multi-worker needs it first)
    # Seeded before the data (its shuffle combines the global seed with its own) and again after:
    # preparing a dataset the first time runs seeded TF ops, and the model's initial weights must
    # not depend on whether TFDS had the data on disk already.
    keras.utils.set_random_seed(job.config["seed"])
    data = load_data(job.recipe, job.config, data_dir, fold=job.fold)
    keras.utils.set_random_seed(job.config["seed"])
    model, hp = _build_model(job, data, dist)
    try:
        best, resumed_from = _fit(job, model, data, hp, verbose, log)
    finally:
        if not job.chief:
            shutil.rmtree(job.work.path, ignore_errors=True)
    if not job.chief:
        return job.run
    metrics = _save_model(job, model, best, data, hp)
    _finish_run(job, data, dist, hp, best, resumed_from, data_dir)
    log(f"Run written to {job.run.path}  ({job.recipe.metric}={metrics[job.recipe.metric]:.4f} on test)")
    return job.run


def _setup(recipe, out, strategy, hparams, overrides: dict, started: float, fold=None) -> _Job:
    """Resolve the recipe, config, hyperparameters and directories; nothing is written yet."""
    recipe = load_recipe(recipe)
    config, hp_overrides = recipe.resolve_config(overrides)
    strategy_name = distribute.check_name(strategy)
    hp_values = {**_load_hparams(hparams), **hp_overrides}
    out = Path(out) if out else Path("runs") / f"{recipe.name}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    chief = distribute.is_chief(strategy_name)
    # Non-chief workers train in lockstep but keep their files out of the run.
    workdir = out if chief else Path(tempfile.mkdtemp(prefix="kerakit-worker-"))
    files.ensure_writable_dir(workdir)
    requested = {"config": config, "hparams_requested": hp_values, "recipe": recipe.name}
    if fold is not None:
        requested["fold"] = fold.to_dict(recipe.task)
    return _Job(recipe=recipe, config=config, hp_values=hp_values, hp_overrides=hp_overrides, requested=requested,
                strategy=strategy_name, run=runs.Run(out), fold=fold, work=runs.Run(workdir), chief=chief,
                started=started)


def _build_model(job: _Job, data, dist):
    """The recipe's model with every requested hyperparameter fixed, built once in the strategy's scope.

    Overrides are checked and typed as `build_model` declares them (`_requested_hparams`), so the model is not
    built a second time just to learn the search space first (1.1 s of a 20 s image run). Only an override that
    build never declares takes that way: `search_space`, the defaults' build, then names it (or fixes it)."""
    import keras

    hp = _requested_hparams(job.recipe, job.hp_values, job.hp_overrides)
    with dist.scope():
        model = job.recipe.build(hp, data)
    if hp.pending:
        keras.utils.set_random_seed(job.config["seed"])  # the initial weights as if this build were the first
        typed = job.recipe.check_hparams(job.hp_overrides, search_space(job.recipe, data))
        hp = _requested_hparams(job.recipe, {**job.hp_values, **typed}, {})
        with dist.scope():
            model = job.recipe.build(hp, data)
    _check_model(job.recipe, model)
    distribute.prepare_fit(dist, model, data.train)
    return model, hp


def _requested_hparams(recipe: Recipe, values: dict, overrides: dict):
    """keras-tuner HyperParameters with `values` fixed, and each of `overrides` (raw `key=value` strings)
    checked against the recipe's declaration of it and fixed when `build_model` declares it: as hp.Fixed
    before the build would (its declaration then reads the fixed value); `.pending`: those never declared."""
    import keras_tuner

    class Requested(keras_tuner.HyperParameters):
        pending: dict = {}  # a copy keras-tuner makes (from_config) has none

        def _register(self, hyperparameter, overwrite=False):
            name = hyperparameter.name
            if name not in self.pending:
                return super()._register(hyperparameter, overwrite)
            typed = recipe.check_hparams({name: self.pending.pop(name)}, [hyperparameter])[name]
            super()._register(keras_tuner.engine.hyperparameters.Fixed(name, typed))  # unscoped, unconditional
            return self._retrieve(hyperparameter)

    hp = Requested()
    for name, value in values.items():
        if name not in overrides:
            hp.Fixed(name, value)
    hp.pending = dict(overrides)
    return hp


def _fit(job: _Job, model, data, hp, verbose, log):
    """model.fit with kerakit's callbacks, resuming from the backup; returns (BestCheckpoint, resumed epoch).
    A recipe with `fine_tune` trains in two phases: `epochs`, then `fine_tune_epochs` after `fine_tune`."""
    from kerakit.callbacks import FINE_TUNE, FIT_DONE, WEIGHTS, Backup, BestCheckpoint, restore_point

    recipe, work = job.recipe, job.work
    resumed_from = restore_point(work.backup_dir, log)
    best = BestCheckpoint(work.checkpoint_dir, recipe.monitor, recipe.metric_direction)
    second = job.config.get("fine_tune_epochs", 0) if recipe.fine_tune is not None else 0
    marker = work.backup_dir / FINE_TUNE
    switched = files.read_json(marker)["from_epoch"] if second and resumed_from and marker.exists() else None
    if switched is not None:  # the backup is of the second phase: its trainable variables, its optimizer
        _start_fine_tuning(model, hp, data, recipe)
    if (work.backup_dir / FIT_DONE).exists() and resumed_from:
        # Killed after fit returned but before the run was recorded: the last epoch's weights are the model.
        log(f"{recipe.name} had finished training ({resumed_from} epochs) before it was interrupted; recording it.")
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(work.backup_dir / WEIGHTS)
        return best, resumed_from
    if resumed_from:
        log(f"Resuming {recipe.name} from epoch {resumed_from} (backup in {work.backup_dir}).")
    if switched is None:
        history = _fit_phase(job, model, data, best, 0, job.config["epochs"], last=not second, verbose=verbose)
        _check_finite_loss(job, history.history.get("loss", []), hp, resumed_from)
        if not second:
            return best, resumed_from
        switched = history.epoch[-1] + 1 if history.epoch else resumed_from
        log(f"Fine-tuning {recipe.name} from epoch {switched} for {second} epoch(s) (recipe's fine_tune).")
        _start_fine_tuning(model, hp, data, recipe)
        # The backup becomes the second phase's (its variables, its fresh optimizer) before the marker says so:
        # a kill in between repeats the switch from the first phase's last epoch.
        Backup(work.backup_dir, keep=job.chief).save_now(model, switched)
        files.write_json(marker, {"from_epoch": switched})
    history = _fit_phase(job, model, data, best, switched, switched + second, last=True, verbose=verbose)
    _check_finite_loss(job, history.history.get("loss", []), hp, resumed_from)
    return best, resumed_from


def _start_fine_tuning(model, hp, data, recipe: Recipe) -> None:
    """The recipe's `fine_tune` (unfreeze, recompile), in the model's distribution strategy."""
    with model.distribute_strategy.scope():
        recipe.fine_tune(model, hp, data)


def _fit_phase(job: _Job, model, data, best, initial_epoch: int, epochs: int, last: bool, verbose):
    """One model.fit from `initial_epoch` (the backup's epoch wins, resuming) to `epochs`."""
    import keras

    from kerakit.callbacks import Backup

    recipe, work = job.recipe, job.work
    callbacks = [
        best,
        keras.callbacks.EarlyStopping(recipe.monitor, mode=recipe.metric_direction, patience=job.config["patience"]),
        keras.callbacks.TensorBoard(str(work.logs_dir)),
        keras.callbacks.CSVLogger(str(work.history_path), append=True),
        keras.callbacks.TerminateOnNaN(),
        *(job.tracker.keras_callbacks() if job.tracker is not None else []),
        # Last: an epoch counts as done for resuming only once its history row
        # and best checkpoint are on disk (a kill in between repeats the epoch).
        Backup(work.backup_dir, keep=job.chief, last=last),
    ]
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    return model.fit(data.train, initial_epoch=initial_epoch, epochs=epochs, callbacks=callbacks, verbose=verbose,
                     shuffle=False, **recipe.weighted_fit(data, job.config, data.val))


def _check_finite_loss(job: _Job, losses: list, hp, resumed_from: int) -> None:
    if not losses or math.isfinite(losses[-1]):
        return
    shutil.rmtree(job.work.backup_dir, ignore_errors=True)  # the backup holds NaN weights: never resume from it
    lr = hp.values.get("learning_rate")
    raise KerakitError(
        f"Training {job.recipe.name} stopped: loss became {losses[-1]} in epoch {len(losses) + resumed_from}"
        + (f" with learning_rate={lr}" if lr is not None else "")
        + ". Lower the learning rate or check the data for NaN/inf values."
    )


def _save_model(job: _Job, model, best, data, hp) -> dict:
    """Write the best model, the cleaned history, test metrics, the training data's profile (drift's reference)
    and the final config; return the metrics."""
    from kerakit.callbacks import ensure_space
    from kerakit.drift import training_profile
    from kerakit.evaluate import evaluate_model
    from kerakit.formats.keras import KerasPredictor, load_keras_model

    run = job.run
    ensure_space(run.path, model)
    if best.path.exists():  # the best epoch's model, saved whole by BestCheckpoint: copied, not saved again
        files.copy_file(best.path, run.model_path)
    else:  # no epoch had a finite validation score: the last epoch's model
        with files.atomic_path(run.model_path) as tmp:
            model.save(tmp)
    # Reloaded outside the strategy scope: evaluation must not wait on other workers.
    model = load_keras_model(run.model_path, job.recipe.custom_objects)
    _dedupe_history(run.history_path)
    metrics = evaluate_model(model, data, "test")
    if job.fold is not None:  # the fold's figure: the recipe's metric on its held-out part
        held_out = evaluate_model(model, data, "val")
        metrics["held_out"] = {job.recipe.metric: held_out[job.recipe.metric], "examples": held_out["examples"]}
    files.write_json(run.metrics_path, metrics)
    files.write_json(run.data_profile, training_profile(job.recipe, data, KerasPredictor(run.model_path, model=model)))
    files.write_json(run.config_path, {**job.requested, "hparams": dict(hp.values)})
    return metrics


def _finish_run(job: _Job, data, dist, hp, best, resumed_from: int, data_dir: str | None) -> None:
    """Write the manifest last (it marks the run finished) and drop the training-only checkpoint."""
    run, recipe, config = job.run, job.recipe, job.config
    artifacts = [run.model_path, run.config_path, run.history_path, run.metrics_path, run.recipe_path, run.data_profile]
    manifest = {
        "kind": "train",
        "recipe": {"name": recipe.name, "source": str(recipe.path), "task": recipe.task,
                   "dataset": recipe.dataset, "inputs": [i.to_dict() for i in recipe.inputs],
                   "class_names": data.class_names, "metric": recipe.metric,
                   "metric_direction": recipe.metric_direction},
        "config": config,
        "hparams": dict(hp.values),
        "seeds": {"seed": config["seed"], "shuffle_seed": config["seed"]},
        "strategy": {"name": job.strategy, "replicas": dist.num_replicas_in_sync},
        "data": data.fingerprint,
        "data_dir": data_dir,
        "versions": library_versions(),
        "code": code_version(recipe.path),
        "training": {"epochs_run": len(_read_history(run.history_path)),
                     "best_epoch": best.best_epoch, "best_" + recipe.monitor: best.best,
                     "resumed_from_epoch": resumed_from, "fine_tune_from_epoch": _fine_tune_start(run)},
        "started": _dt.datetime.fromtimestamp(job.started).isoformat(timespec="seconds"),
        "wall_seconds": round(time.time() - job.started, 2),
        "artifacts": {path.name: files.sha256(path) for path in artifacts},
    }
    files.write_json(run.manifest_path, manifest)
    # Only now: until the manifest is on disk, a rerun resumes from these instead of training again.
    shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
    shutil.rmtree(run.backup_dir, ignore_errors=True)


def _fine_tune_start(run: runs.Run) -> int | None:
    """The epoch the second phase (the recipe's `fine_tune`) started from; None where it had one phase."""
    from kerakit.callbacks import FINE_TUNE

    marker = run.backup_dir / FINE_TUNE
    return files.read_json(marker)["from_epoch"] if marker.exists() else None


def _load_hparams(hparams) -> dict:
    if hparams is None:
        return {}
    if isinstance(hparams, dict):
        return dict(hparams)
    path = Path(hparams)
    try:
        values = files.read_json(path)
    except (OSError, ValueError) as e:
        raise KerakitError(f"Cannot read --hparams {str(path)!r}: {e}. Expected a JSON object of name: value.") from None
    if not isinstance(values, dict):
        raise KerakitError(f"--hparams {str(path)!r} must hold a JSON object of name: value.")
    return values.get("values", values) if isinstance(values.get("values"), dict) else values


def _check_previous(run: runs.Run, requested: dict, overwrite: bool, log) -> runs.Run | None:
    """A finished, intact run with the same request is returned; a damaged one is retrained; any other
    mismatch is an error."""
    if overwrite:
        _clear(run)
        return None
    if not run.config_path.exists():
        return None
    previous = run.config
    if {k: previous.get(k) for k in requested} != requested:
        raise KerakitError(
            f"{run.path} already holds a run of {previous.get('recipe')!r} with a different request "
            f"(changed: {', '.join(_changed(previous, requested))}). Use another --out, or --overwrite to replace it."
        )
    if not run.manifest_path.exists():
        return None
    damaged = [name for name, ok in run.verify_artifacts().items() if not ok]
    if not damaged:
        log(f"{run.path} already holds this finished run; nothing to do (use --overwrite to retrain).")
        return runs.Run(run.path)
    log(f"{run.path}: {', '.join(damaged)} missing or changed since the run was recorded (SHA-256); training again.")
    _clear(run)
    return None


def _clear(run: runs.Run) -> None:
    for path in (run.manifest_path, run.model_path, run.metrics_path, run.history_path, run.config_path,
                 run.data_profile, run.tracking):  # a run trained over is a new MLflow run
        path.unlink(missing_ok=True)
    for path in (run.backup_dir, run.checkpoint_dir, run.logs_dir):
        shutil.rmtree(path, ignore_errors=True)


def _changed(previous: dict, requested: dict) -> list[str]:
    changed = sorted(k for k in set(previous.get("config", {})) | set(requested["config"])
                     if previous.get("config", {}).get(k) != requested["config"].get(k))
    if previous.get("hparams_requested") != requested["hparams_requested"]:
        changed.append("hparams")
    if previous.get("recipe") != requested["recipe"]:
        changed.append("recipe")
    return changed


def search_space(recipe: Recipe, data) -> list:
    """The hyperparameters `build_model` declares, found by building it once."""
    import keras
    import keras_tuner

    probe = keras_tuner.HyperParameters()
    recipe.build(probe, data)
    keras.backend.clear_session()
    return probe.space


def _check_model(recipe: Recipe, model) -> None:
    import keras

    if not isinstance(model, keras.Model):
        raise KerakitError(f"Recipe {recipe.name}: build_model must return a keras.Model, got {type(model).__name__}.")
    if model.optimizer is None:
        raise KerakitError(f"Recipe {recipe.name}: build_model must return a compiled model (call model.compile).")
    names = [t.name for t in model.inputs]
    expected = [i.name for i in recipe.inputs]
    if sorted(names) != sorted(expected):
        raise KerakitError(
            f"Recipe {recipe.name}: model inputs {names} do not match INPUTS {expected}. "
            "Build inputs with INPUTS[i].keras() so they carry the recipe's names."
        )
    recipe.check_outputs(model)  # a multi-output recipe's OUTPUTS, in the model's order


def _read_history(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _dedupe_history(path: Path) -> None:
    """Keep the last row per epoch: a kill between CSVLogger and the backup repeats one epoch."""
    rows = _read_history(path)
    if not rows:
        return
    by_epoch = {int(r["epoch"]): r for r in rows}
    files.write_csv(path, [by_epoch[e] for e in sorted(by_epoch)])


def library_versions() -> dict[str, str]:
    """The versions training ran on. Each format's libraries are recorded by export, which uses them
    (`Format.libraries`, in each artifact's report row)."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("kerakit", "tensorflow", "keras", "keras-tuner", "tensorflow-datasets", "numpy", "scikit-learn"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def code_version(path: Path) -> dict:
    """The git commit (and whether the tree was dirty) of the repository holding `path`, if any."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", str(Path(path).parent), *args], capture_output=True,
                              text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"git_commit": None}
        dirty = bool(git("status", "--porcelain").stdout.strip())
        return {"git_commit": head.stdout.strip(), "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None}
