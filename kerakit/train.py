"""`kerakit train`: one recipe -> one run directory.

>>> run = kerakit.train("digits_cnn", epochs=3)
>>> run.metrics["accuracy"]

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
from pathlib import Path
from typing import Any, Callable

from kerakit import distribute, runs
from kerakit.errors import KerakitError
from kerakit.recipe import Recipe, load_recipe

BACKUP_DIR = "backup"
CHECKPOINT_DIR = "checkpoints"


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
    **overrides: Any,
) -> runs.Run:
    """Train `recipe` with `overrides` (config keys or hyperparameter names) into `out`.

    hparams: a dict or a JSON file of hyperparameter values (e.g. a tuner's
    best_hparams.json); `overrides` win over it.
    """
    started = time.time()
    recipe = load_recipe(recipe)
    config, hp_overrides = recipe.resolve_config(overrides)
    strategy_name = distribute.check_name(strategy)
    hp_values = {**_load_hparams(hparams), **hp_overrides}
    requested = {"config": config, "hparams_requested": hp_values, "recipe": recipe.name}

    out = Path(out) if out else Path("runs") / f"{recipe.name}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    chief = distribute.is_chief(strategy_name)
    # Non-chief workers train in lockstep but keep their files out of the run.
    workdir = out if chief else Path(tempfile.mkdtemp(prefix="kerakit-worker-"))
    runs.ensure_writable_dir(workdir)
    if chief:
        finished = _check_previous(out, requested, overwrite, log)
        if finished is not None:
            return finished
        runs.write_json(out / runs.CONFIG_FILE, requested)
        runs.copy_file(recipe.path, out / runs.RECIPE_FILE)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import keras_tuner

    from kerakit.callbacks import BestCheckpoint
    from kerakit.data import load_data
    from kerakit.evaluate import evaluate_model

    dist = distribute.make_strategy(strategy_name)  # before other TF work (multi-worker needs it first)
    keras.utils.set_random_seed(config["seed"])
    data = load_data(recipe, config, data_dir)

    hp = keras_tuner.HyperParameters()
    if hp_overrides:
        hp_values = {**hp_values, **recipe.check_hparams(hp_overrides, search_space(recipe, data))}
    for name, value in hp_values.items():
        hp.Fixed(name, value)
    with dist.scope():
        model = recipe.build_model(hp, data)
    _check_model(recipe, model)
    distribute.prepare_fit(dist, model, next(iter(data.train)))

    backup = workdir / BACKUP_DIR
    resumed_from = resume_epoch(backup)
    if resumed_from:
        log(f"Resuming {recipe.name} from epoch {resumed_from} (backup in {backup}).")
    direction = recipe.metric_direction
    best = BestCheckpoint(workdir / CHECKPOINT_DIR, recipe.monitor, direction)
    callbacks = [
        best,
        keras.callbacks.EarlyStopping(recipe.monitor, mode=direction, patience=config["patience"]),
        keras.callbacks.TensorBoard(str(workdir / "logs")),
        keras.callbacks.CSVLogger(str(workdir / runs.HISTORY_FILE), append=True),
        keras.callbacks.TerminateOnNaN(),
        # Last: an epoch counts as done for resuming only once its history row
        # and best checkpoint are on disk (a kill in between repeats the epoch).
        keras.callbacks.BackupAndRestore(str(backup), double_checkpoint=True),
    ]
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    try:
        history = model.fit(data.train, validation_data=data.val, epochs=config["epochs"],
                            callbacks=callbacks, verbose=verbose, shuffle=False)
    finally:
        if not chief:
            shutil.rmtree(workdir, ignore_errors=True)
    losses = history.history.get("loss", [])
    if losses and not math.isfinite(losses[-1]):
        shutil.rmtree(backup, ignore_errors=True)  # the backup holds NaN weights: never resume from it
        lr = hp_values.get("learning_rate", hp.values.get("learning_rate"))
        raise KerakitError(
            f"Training {recipe.name} stopped: loss became {losses[-1]} in epoch {len(losses) + resumed_from}"
            + (f" with learning_rate={lr}" if lr is not None else "")
            + ". Lower the learning rate or check the data for NaN/inf values."
        )
    if not chief:
        return runs.Run(out)

    with runs.atomic_path(out / runs.MODEL_FILE) as tmp:
        model.save(tmp)
        if best.path.exists():
            shutil.copyfile(best.path, tmp)
    # Reloaded outside the strategy scope: evaluation must not wait on other workers.
    model = keras.saving.load_model(out / runs.MODEL_FILE)
    _dedupe_history(out / runs.HISTORY_FILE)
    metrics = evaluate_model(model, data, "test")
    runs.write_json(out / runs.METRICS_FILE, metrics)
    runs.write_json(out / runs.CONFIG_FILE, {**requested, "hparams": dict(hp.values)})

    artifacts = [runs.MODEL_FILE, runs.CONFIG_FILE, runs.HISTORY_FILE, runs.METRICS_FILE, runs.RECIPE_FILE]
    manifest = {
        "kind": "train",
        "recipe": {"name": recipe.name, "source": str(recipe.path), "task": recipe.task,
                   "dataset": recipe.dataset, "inputs": [i.to_dict() for i in recipe.inputs],
                   "class_names": data.class_names, "metric": recipe.metric,
                   "metric_direction": recipe.metric_direction},
        "config": config,
        "hparams": dict(hp.values),
        "seeds": {"seed": config["seed"], "shuffle_seed": config["seed"]},
        "strategy": {"name": strategy_name, "replicas": dist.num_replicas_in_sync},
        "data": data.fingerprint,
        "data_dir": data_dir,
        "versions": library_versions(),
        "code": code_version(recipe.path),
        "training": {"epochs_run": len(_read_history(out / runs.HISTORY_FILE)),
                     "best_epoch": best.best_epoch, "best_" + recipe.monitor: best.best,
                     "resumed_from_epoch": resumed_from},
        "started": _dt.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "wall_seconds": round(time.time() - started, 2),
        "artifacts": {name: runs.sha256(out / name) for name in artifacts},
    }
    runs.write_json(out / runs.MANIFEST_FILE, manifest)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    log(f"Run written to {out}  ({recipe.metric}={metrics[recipe.metric]:.4f} on test)")
    return runs.Run(out)


def _load_hparams(hparams) -> dict:
    if hparams is None:
        return {}
    if isinstance(hparams, dict):
        return dict(hparams)
    path = Path(hparams)
    try:
        values = runs.read_json(path)
    except (OSError, ValueError) as e:
        raise KerakitError(f"Cannot read --hparams {str(path)!r}: {e}. Expected a JSON object of name: value.") from None
    if not isinstance(values, dict):
        raise KerakitError(f"--hparams {str(path)!r} must hold a JSON object of name: value.")
    return values.get("values", values) if isinstance(values.get("values"), dict) else values


def _check_previous(out: Path, requested: dict, overwrite: bool, log) -> runs.Run | None:
    """A finished run with the same request is returned; any other mismatch is an error."""
    config_path = out / runs.CONFIG_FILE
    if not config_path.exists():
        return None
    previous = runs.read_json(config_path)
    same = {k: previous.get(k) for k in requested} == requested
    if overwrite:
        for name in (runs.MANIFEST_FILE, runs.MODEL_FILE, runs.METRICS_FILE, runs.HISTORY_FILE, runs.CONFIG_FILE):
            (out / name).unlink(missing_ok=True)
        for name in (BACKUP_DIR, CHECKPOINT_DIR, "logs"):
            shutil.rmtree(out / name, ignore_errors=True)
        return None
    if not same:
        changed = sorted(
            k for k in set(previous.get("config", {})) | set(requested["config"])
            if previous.get("config", {}).get(k) != requested["config"].get(k)
        )
        if previous.get("hparams_requested") != requested["hparams_requested"]:
            changed.append("hparams")
        if previous.get("recipe") != requested["recipe"]:
            changed.append("recipe")
        raise KerakitError(
            f"{out} already holds a run of {previous.get('recipe')!r} with a different request "
            f"(changed: {', '.join(changed)}). Use another --out, or --overwrite to replace it."
        )
    if (out / runs.MANIFEST_FILE).exists():
        log(f"{out} already holds this finished run; nothing to do (use --overwrite to retrain).")
        return runs.Run(out)
    return None


def search_space(recipe: Recipe, data) -> list:
    """The hyperparameters `build_model` declares, found by building it once."""
    import keras
    import keras_tuner

    probe = keras_tuner.HyperParameters()
    recipe.build_model(probe, data)
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


def resume_epoch(backup: Path) -> int:
    meta = backup / "training_metadata.json"
    try:
        return int(runs.read_json(meta)["epoch"]) if meta.exists() else 0
    except (ValueError, KeyError):
        return 0


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
    runs.write_csv(path, [by_epoch[e] for e in sorted(by_epoch)])


def library_versions() -> dict[str, str]:
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("kerakit", "tensorflow", "keras", "keras-tuner", "tensorflow-datasets", "numpy",
                 "scikit-learn", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert"):
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
