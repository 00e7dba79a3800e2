"""`kerakit tune`: keras-tuner over a recipe's own `build_model(hp, data)`.

    result = kerakit.tune("digits_cnn", tuner="hyperband", max_epochs=9)
    result.best_hparams, result.run.metrics["accuracy"]

The search space is whatever `build_model` asks `hp` for; `key=value`
overrides fix a config value or a hyperparameter for the whole search.
Rerunning the same command on the same `out` resumes: finished trials are
kept, and a trial that was interrupted continues from its last finished epoch
(each trial has its own BackupAndRestore). A different search (recipe, tuner,
search space, or overrides) in the same directory is refused unless
`overwrite=True`.

OUT is a `kerakit.runs.Search` (its docstring shows the layout): keras-tuner's
project in OUT/tuner, the trials table and chart, best_hparams.json (for
`kerakit train --hparams`), and the best retrained as a normal run in OUT/best.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kerakit import metrics, runs
from kerakit.errors import KerakitError
from kerakit.recipe import Recipe, load_recipe

# --tuner names and the keras-tuner classes they run (adding a tuner is one entry here).
TUNERS = {"random": "RandomSearch", "grid": "GridSearch", "bayesian": "BayesianOptimization", "hyperband": "Hyperband"}
RECYCLE_AFTER = 10  # trials per worker process
FAMILY_HP = "arch"  # the hyperparameter that picks a model family (see recipes/digits_select.py)
RECYCLE_EXIT = 75  # EX_TEMPFAIL: "start me again", not a failure
EPOCHS_FILE = "epochs_run.json"  # in each keras-tuner trial folder
FOLDS_FILE = "cv_folds.json"  # in each keras-tuner trial folder, with --cv: the objective of each finished fold


@dataclass
class TuneResult:
    path: Path
    best_hparams: dict
    trials: list[dict]
    run: runs.Run | None

    def __repr__(self) -> str:
        return f"TuneResult({str(self.path)!r}, best={self.best_hparams})"


@dataclass
class _Plan:
    """One search's request, checked before TensorFlow starts."""

    recipe: Recipe
    config: dict
    hp_overrides: dict
    out: runs.Search
    tuner: str
    max_trials: int
    max_epochs: int | None
    objective: str
    direction: str
    cv: int = 0  # folds per trial (0: the recipe's train/val split)


def tune(
    recipe: "str | os.PathLike | Recipe",
    out: "str | os.PathLike | None" = None,
    *,
    tuner: str = "random",
    max_trials: int = 10,
    max_epochs: int | None = None,
    executions_per_trial: int = 1,
    objective: str | None = None,
    seed: int | None = None,
    retrain: bool = True,
    overwrite: bool = False,
    data_dir: str | None = None,
    strategy: str | None = None,
    workers: int = 0,
    role: str | None = None,
    oracle: str | None = None,
    recycle_after: int = RECYCLE_AFTER,
    cv: int = 0,
    verbose: "int | str" = "auto",
    log: Callable[[str], None] = print,
    **overrides: Any,
) -> TuneResult:
    """Search `recipe`'s hyperparameters with keras-tuner; retrain the best as a normal run.

    objective: what picks the best trial (default: the recipe's validation
    metric, e.g. val_accuracy); its direction comes from `kerakit.metrics`.

    workers=N runs keras-tuner's chief/worker mode on this machine: a chief
    (the oracle, on 127.0.0.1) and N worker processes that train trials, with
    the cores split between them; a worker that dies is restarted and its
    trial resumes from its last epoch. role="chief"|"worker" with
    oracle="HOST:PORT" joins a search spread over machines instead.

    TensorFlow keeps ~10 MB per model a process has built and fitted, even
    after clear_session, so a worker exits after `recycle_after` trials and
    the launcher starts a fresh one in its place (0: never).

    cv=K scores each trial by K-fold cross-validation (`kerakit.folds`, on the
    recipe's train and val splits together): the objective is the mean of the
    folds' best held-out values, so each trial costs K fits.
    """
    if cv and (workers or role):
        raise KerakitError("--cv runs in one process; do not combine it with --workers or --role.")
    if workers:
        return _launch(recipe, out, workers, dict(
            tuner=tuner, max_trials=max_trials, max_epochs=max_epochs, executions_per_trial=executions_per_trial,
            objective=objective, retrain=retrain, overwrite=overwrite, data_dir=data_dir, strategy=strategy,
            recycle_after=recycle_after), overrides, log)
    if role is not None:
        _join(role, oracle)
    plan = _check_request(recipe, out, tuner, max_trials, max_epochs, executions_per_trial, objective, overrides)
    if cv:
        from kerakit.folds import check_folds

        if tuner == "hyperband":  # its trials continue from a parent trial's weights: one per fold does not exist
            raise KerakitError("--cv works with --tuner random, grid or bayesian, not hyperband.")
        plan.cv = check_folds(cv)
    # The chief (or a search on one machine) is the directory's one writer; workers only train trials.
    with runs.writer(plan.out.path, "kerakit tune") if role != "worker" else contextlib.nullcontext():
        return _search(plan, dict(executions_per_trial=executions_per_trial, seed=seed, retrain=retrain,
                                  overwrite=overwrite, data_dir=data_dir, strategy=strategy, role=role,
                                  recycle_after=recycle_after, verbose=verbose), overrides, log)


def _search(plan: "_Plan", o: dict, overrides: dict, log) -> "TuneResult":
    """Search (resuming what is there), write the trials and the best, retrain it as a run."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from kerakit import distribute
    from kerakit.data import load_data

    role = o["role"]
    dist = distribute.make_strategy(o["strategy"]) if o["strategy"] not in (None, "default") else None
    # Seeded before the data (its shuffle combines the global seed with its own) and again after:
    # preparing a dataset the first time runs seeded TF ops, and the model's initial weights must
    # not depend on whether TFDS had the data on disk already.
    keras.utils.set_random_seed(plan.config["seed"])
    data = load_data(plan.recipe, plan.config, o["data_dir"])
    folds = _fold_data(plan, o["data_dir"])
    keras.utils.set_random_seed(plan.config["seed"])
    fixed = _check_search(plan, data, role, o["overwrite"])
    searcher = _make_searcher(plan, data, fixed, o["executions_per_trial"], o["seed"], dist,
                              o["recycle_after"] if role == "worker" else 0, log, folds)
    verbose = (1 if sys.stdout.isatty() else 0) if o["verbose"] == "auto" else o["verbose"]
    started = time.time()
    _run_search(plan, searcher, data, role, verbose, log)
    if role == "worker":
        log(f"Worker {os.environ['KERASTUNER_TUNER_ID']}: the oracle has no more trials.")
        return TuneResult(plan.out.path, {}, [], None)
    best, trials = _finish(plan, searcher, started, log)
    run = _retrain_best(plan, best, o, verbose, overrides, log) if o["retrain"] else None
    return TuneResult(plan.out.path, best, trials, run)


def _fold_data(plan: "_Plan", data_dir: str | None) -> list:
    """With --cv K: the K folds' data (each fold's train and held-out parts as train and val)."""
    from kerakit.data import load_data
    from kerakit.folds import Fold

    return [load_data(plan.recipe, plan.config, data_dir, fold=Fold(k, plan.cv, plan.config["seed"]))
            for k in range(plan.cv)]


def _retrain_best(plan: "_Plan", best: dict, o: dict, verbose, overrides: dict, log) -> runs.Run:
    """Train the best hyperparameters into OUT/best; replace it when a longer search found a new best."""
    from kerakit.train import train

    previous = runs.Run(plan.out.best_dir)
    replace = False
    if previous.config_path.exists():
        try:
            replace = previous.config.get("hparams_requested") != runs.read_json(plan.out.best_hparams)
        except KerakitError:
            replace = True  # a damaged best/ is trained again
        if replace:
            log(f"{previous.path} holds an earlier best; training the new best {best} in its place.")
    return train(plan.recipe, previous.path, strategy=o["strategy"], data_dir=o["data_dir"],
                 hparams=plan.out.best_hparams, overwrite=replace, verbose=verbose, log=log,
                 **{k: v for k, v in overrides.items() if k in plan.config})


def _check_request(recipe, out, tuner: str, max_trials: int, max_epochs: int | None, executions_per_trial: int,
                   objective: str | None, overrides: dict) -> _Plan:
    """The arguments checked and resolved: recipe, config, directory, objective and its direction."""
    if tuner not in TUNERS:
        raise KerakitError(f"Invalid tuner={tuner!r}. Expected one of {', '.join(TUNERS)}.")
    if max_trials < 1 or executions_per_trial < 1 or (max_epochs is not None and max_epochs < 1):
        raise KerakitError("max_trials, max_epochs and executions_per_trial must be integers >= 1.")
    recipe = load_recipe(recipe)
    config, hp_overrides = recipe.resolve_config(overrides)
    out = Path(out) if out else Path("runs") / f"{recipe.name}-tune-{tuner}"
    runs.ensure_writable_dir(out)
    objective = objective or recipe.monitor
    return _Plan(recipe=recipe, config=config, hp_overrides=hp_overrides, out=runs.Search(out), tuner=tuner,
                 max_trials=max_trials, max_epochs=max_epochs, objective=objective,
                 direction=metrics.direction(objective))


def _check_search(plan: _Plan, data, role: str | None, overwrite: bool) -> dict:
    """Record what this directory searches; refuse a different search in it. Returns the fixed hyperparameters."""
    from kerakit.train import search_space

    space = search_space(plan.recipe, data)
    fixed = plan.recipe.check_hparams(plan.hp_overrides, space) if plan.hp_overrides else {}
    search = {
        "recipe": plan.recipe.name, "tuner": plan.tuner, "objective": plan.objective, "direction": plan.direction,
        "config": plan.config, "fixed_hparams": fixed,
        "space": sorted(({"name": hp.name, "class": type(hp).__name__, **hp.get_config()} for hp in space),
                        key=lambda h: h["name"]),
        "max_epochs": plan.max_epochs if plan.tuner == "hyperband" else None,
    }
    if plan.cv:
        search["cv_folds"] = plan.cv
    out = plan.out
    if role == "worker":
        return fixed  # the chief owns the directory's search record
    if out.search_file.exists() and not overwrite:
        previous = runs.read_json(out.search_file)
        changed = sorted(k for k in search if previous.get(k) != search[k])
        if changed:
            raise KerakitError(
                f"{out.path} holds a different search (changed: {', '.join(changed)}). "
                "Use another --out, or --overwrite to start this one from scratch."
            )
    elif overwrite:
        for target in (out.tuner_dir, out.best_dir, out.search_file, out.best_hparams, out.trials_csv,
                       out.trials_json, out.trials_png):
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    runs.write_json(out.search_file, search)
    return fixed


def _make_searcher(plan: _Plan, data, fixed: dict, executions_per_trial: int, seed: int | None, dist,
                   recycle_after: int, log, folds: list | None = None):
    """The keras-tuner tuner over the recipe's own build_model, resuming the project in OUT/tuner."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    for name, value in fixed.items():
        hp.Fixed(name, value)
    current = {"data": data}  # the data build_model adapts to: a fold's, under --cv
    common = dict(
        hypermodel=lambda trial_hp: plan.recipe.build(trial_hp, current["data"]),
        objective=kt.Objective(plan.objective, direction=plan.direction),
        hyperparameters=hp,
        tune_new_entries=True,
        executions_per_trial=executions_per_trial,
        directory=str(plan.out.path),
        project_name=runs.TUNER_DIR,
        seed=plan.config["seed"] if seed is None else seed,
        distribution_strategy=dist,
        overwrite=False,
    )
    return _make_tuner(plan.tuner, plan.max_trials, plan.max_epochs, common, log, recycle_after=recycle_after,
                       folds=folds, current=current)


def _run_search(plan: _Plan, searcher, data, role: str | None, verbose, log) -> None:
    """Run (or resume) every trial; a chief waits here until the workers have run them all."""
    import keras

    done_before = sum(t.status == "COMPLETED" for t in getattr(searcher.oracle, "trials", {}).values())
    if done_before:
        log(f"Resuming the search in {plan.out.path}: {done_before} trial(s) already done.")
    callbacks = [keras.callbacks.EarlyStopping(plan.objective, mode=plan.direction, patience=plan.config["patience"]),
                 keras.callbacks.TerminateOnNaN()]
    epochs = plan.max_epochs if plan.tuner == "hyperband" else plan.config["epochs"]
    if role == "chief":
        log(f"Oracle serving on {os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}; "
            "waiting for workers to finish every trial.")
    searcher.search(data.train, validation_data=data.val, epochs=epochs, callbacks=callbacks,
                    verbose=verbose, shuffle=False)


def _finish(plan: _Plan, searcher, started: float, log) -> tuple[dict, list[dict]]:
    """Write the trials table and chart and the best hyperparameters; return (best, trials)."""
    objective, direction = plan.objective, plan.direction
    trials = trials_table(searcher, objective)
    if not any(t["status"] == "COMPLETED" and t["score"] is not None for t in trials):
        raise KerakitError(f"No trial of the search in {plan.out.path} finished with a {objective} score.")
    best = dict(searcher.get_best_hyperparameters(1)[0].values)
    best = {k: v for k, v in best.items() if not k.startswith("tuner/")}
    _write_trials(plan.out, trials, objective, direction)
    runs.write_json(plan.out.best_hparams, best)
    log(f"Search done in {time.time() - started:.0f} s: {len(trials)} trials; best {objective}="
        f"{max_or_min(trials, direction):.4f} with {best}")
    return best, trials


def _make_tuner(name: str, max_trials: int, max_epochs: int | None, common: dict, log, recycle_after: int = 0,
                folds: list | None = None, current: dict | None = None):
    import keras
    import keras_tuner as kt

    from kerakit.callbacks import Backup, restore_point

    base = getattr(kt, TUNERS[name])

    class Tuner(base):
        """Adds a BackupAndRestore per trial, so an interrupted trial resumes from its last epoch; with
        folds, fits each fold in turn (finished folds kept across a resume) and reports their mean."""

        def run_trial(self, trial, *args, **kwargs):
            if not folds:
                return self._fit(trial, runs.BACKUP_DIR, *args, **kwargs)
            return _run_folds(self, trial, folds, current, kwargs)

        def _fit(self, trial, backup_name: str, *args, **kwargs):
            backup = os.path.join(self.project_dir, f"trial_{trial.trial_id}", backup_name)
            resumed = restore_point(Path(backup), log)
            if resumed:
                log(f"Trial {trial.trial_id} resumes from epoch {resumed} (interrupted earlier).")
            counter = _EpochCounter(Path(self.project_dir) / f"trial_{trial.trial_id}" / EPOCHS_FILE)
            callbacks = [*kwargs.pop("callbacks", []), counter, Backup(backup)]
            return super().run_trial(trial, *args, callbacks=callbacks, **kwargs)

        def on_trial_begin(self, trial):
            super().on_trial_begin(trial)
            done = sum(t.status == "COMPLETED" for t in getattr(self.oracle, "trials", {}).values())
            best = self.oracle.get_best_trials(1)
            best_text = f"best so far {best[0].score:.4f}" if best and best[0].score is not None else "no score yet"
            total = self.oracle.max_trials if name != "hyperband" else "hyperband budget"
            log(f"Trial {trial.trial_id} ({done + 1} of {total}) starting; {best_text}; "
                f"{ {k: v for k, v in trial.hyperparameters.values.items() if not k.startswith('tuner/')} }")
            self._trial_started = time.time()

        def on_trial_end(self, trial):
            super().on_trial_end(trial)  # reports the trial to the oracle first
            log(f"Trial {trial.trial_id} {trial.status.lower()} in {time.time() - self._trial_started:.1f} s, "
                f"score {trial.score}")
            self._trials_here = getattr(self, "_trials_here", 0) + 1
            if recycle_after and self._trials_here >= recycle_after:
                log(f"Worker recycling after {self._trials_here} trials (frees what TensorFlow keeps per model).")
                sys.stdout.flush()
                os._exit(RECYCLE_EXIT)  # no interpreter teardown: TF's threads can stall a normal exit

    class _EpochCounter(keras.callbacks.Callback):
        """Epochs a trial really trained (early stopping and Hyperband make it vary), kept across resumes."""

        def __init__(self, path: Path):
            super().__init__()
            self.path = path

        def on_epoch_end(self, epoch, logs=None):
            done = runs.read_json(self.path)["epochs"] if self.path.exists() else 0
            runs.write_json(self.path, {"epochs": done + 1})

    kwargs = dict(common)
    if name == "hyperband":
        if max_epochs is None:
            raise KerakitError("--tuner hyperband needs --max-epochs (the most epochs a trial may train).")
        kwargs.update(max_epochs=max_epochs, factor=3)
    else:
        kwargs.update(max_trials=max_trials)
    try:
        return Tuner(**kwargs)
    except RuntimeError as e:  # keras-tuner cannot reload an incompatible project
        raise KerakitError(f"Cannot resume the search: {e}") from e


def _run_folds(tuner, trial, folds: list, current: dict, kwargs: dict) -> list[dict]:
    """Fit `trial` on each fold in turn (a fold finished before an interruption is kept); the folds' metrics,
    which keras-tuner averages into the trial's score."""
    from keras_tuner.src.engine import tuner_utils

    state = Path(tuner.project_dir) / f"trial_{trial.trial_id}" / FOLDS_FILE
    done = runs.read_json(state) if state.exists() else {}
    whole = current["data"]
    try:
        for k, fold in enumerate(folds, start=1):
            if str(k) not in done:
                current["data"] = fold  # build_model adapts to this fold's training part
                histories = tuner._fit(trial, f"{runs.BACKUP_DIR}-fold{k}", fold.train,
                                       **{**kwargs, "validation_data": fold.val})
                done[str(k)] = tuner_utils.convert_to_metrics_dict(histories, tuner.oracle.objective)
                runs.write_json(state, done)
    finally:
        current["data"] = whole
    return [done[str(k)] for k in range(1, len(folds) + 1)]


ROLES = ("chief", "worker")
MAX_RESTARTS = 3  # per worker


def _join(role: str, oracle: str | None) -> None:
    """Set keras-tuner's distributed environment for this process."""
    if role not in ROLES:
        raise KerakitError(f"Invalid role={role!r}. Expected one of {', '.join(ROLES)}.")
    host, sep, port = (oracle or "").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise KerakitError(f"Invalid oracle={oracle!r}. Expected HOST:PORT, e.g. 127.0.0.1:8470.")
    os.environ["KERASTUNER_ORACLE_IP"] = host
    os.environ["KERASTUNER_ORACLE_PORT"] = port
    if role == "chief":
        os.environ["KERASTUNER_TUNER_ID"] = "chief"
    elif not os.environ.get("KERASTUNER_TUNER_ID", "").startswith("tuner"):
        import socket

        # Stable per host: a worker restarted there gets its running trial back from the oracle.
        os.environ["KERASTUNER_TUNER_ID"] = f"tuner-{socket.gethostname()}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, chief, timeout: float = 120) -> None:
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        if chief.poll() is not None:
            raise KerakitError(f"The tuning chief exited with status {chief.returncode} before serving.")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise KerakitError(f"The tuning chief did not open 127.0.0.1:{port} within {timeout:.0f} s.")


def _launch(recipe, out, workers: int, options: dict, overrides: dict, log) -> TuneResult:
    """A chief and `workers` worker processes on this machine; restart workers that die."""
    import subprocess

    recipe = load_recipe(recipe)
    if workers < 1:
        raise KerakitError(f"Invalid workers={workers}. Expected an integer >= 1.")
    out = Path(out) if out else Path("runs") / f"{recipe.name}-tune-{options['tuner']}"
    search = runs.Search(out)
    logs = runs.ensure_writable_dir(search.distributed_dir)
    port = _free_port()
    args = [sys.executable, "-m", "kerakit.cli", "tune", str(recipe.path),
            *(f"{k}={v}" for k, v in overrides.items()), "--tuner", options["tuner"],
            "--max-trials", str(options["max_trials"]), "--executions-per-trial", str(options["executions_per_trial"]),
            "--out", str(out), "--oracle", f"127.0.0.1:{port}", "--recycle-after", str(options["recycle_after"])]
    for flag, value in (("--max-epochs", options["max_epochs"]), ("--objective", options["objective"]),
                        ("--data-dir", options["data_dir"]), ("--strategy", options["strategy"])):
        if value is not None:
            args += [flag, str(value)]
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": threads}

    def start(role: str, index: int | None = None):
        extra = ["--role", role] + (["--no-retrain"] if role == "worker" or not options["retrain"] else []) \
            + (["--overwrite"] if role == "chief" and options["overwrite"] else [])
        name = "chief" if role == "chief" else f"worker{index}"
        with open(logs / f"{name}.log", "ab") as f:
            return subprocess.Popen([*args, *extra], stdout=f, stderr=subprocess.STDOUT,
                                    env={**env, "KERASTUNER_TUNER_ID": "chief" if role == "chief" else f"tuner{index}"})

    chief = start("chief")
    procs: dict[int, Any] = {}
    try:
        _wait_for_port(port, chief)
        log(f"Chief serving on 127.0.0.1:{port}; starting {workers} worker(s) with {threads} thread(s) each "
            f"(logs in {logs}).")
        procs = {i: start("worker", i) for i in range(workers)}
        restarts = dict.fromkeys(procs, 0)
        while chief.poll() is None:
            for i, proc in procs.items():
                code = proc.poll()
                if code == RECYCLE_EXIT and chief.poll() is None:
                    procs[i] = start("worker", i)
                    continue
                if code is not None and code != 0 and chief.poll() is None:
                    if restarts[i] >= MAX_RESTARTS:
                        raise KerakitError(
                            f"Worker tuner{i} died {restarts[i] + 1} times (last status {code}; see "
                            f"{logs}/worker{i}.log). The search is saved: rerun to resume it."
                        )
                    restarts[i] += 1
                    log(f"Worker tuner{i} exited with status {code}; restarting it ({restarts[i]}/{MAX_RESTARTS}): "
                        "its trial resumes from its last finished epoch.")
                    procs[i] = start("worker", i)
            time.sleep(0.5)
        if chief.returncode != 0:
            raise KerakitError(f"The tuning chief exited with status {chief.returncode}; see {logs}/chief.log.")
    finally:
        for proc in [chief, *procs.values()]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [chief, *procs.values()]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    trials = runs.read_json(search.trials_json)["trials"]
    run = runs.Run(search.best_dir) if runs.is_run(search.best_dir) else None
    result = TuneResult(out, runs.read_json(search.best_hparams), trials, run)
    log(f"Distributed search done: {len(trials)} trials by {workers} worker(s); best {result.best_hparams}")
    return result


def trials_table(searcher, objective: str) -> list[dict]:
    rows = []
    for trial_id, trial in sorted(searcher.oracle.trials.items()):
        hps = trial.hyperparameters
        # Only the hyperparameters this trial's model used: one family's under hp.conditional_scope, not another's.
        active = {hp.name for hp in hps.space if hps.is_active(hp)}
        values = {k: v for k, v in hps.values.items() if not k.startswith("tuner/") and k in active}
        counted = Path(searcher.project_dir) / f"trial_{trial_id}" / EPOCHS_FILE
        rows.append({"trial": trial_id, "status": trial.status, "score": trial.score,
                     "epochs": runs.read_json(counted)["epochs"] if counted.exists() else None, **values})
    return rows


def max_or_min(trials: list[dict], direction: str) -> float:
    scores = [t["score"] for t in trials if t["score"] is not None]
    return max(scores) if direction == "max" else min(scores)


def _write_trials(out: runs.Search, trials: list[dict], objective: str, direction: str) -> None:
    runs.write_json(out.trials_json, {"objective": objective, "direction": direction, "trials": trials})
    runs.write_csv(out.trials_csv, trials)
    _plot(out.trials_png, trials, objective, direction)


def _plot(path: Path, trials: list[dict], objective: str, direction: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [(i, t["score"]) for i, t in enumerate(trials) if t["score"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if scored:
        xs, ys = zip(*scored)
        # A recipe choosing between families (hp.Choice("arch", ...)) gets one colour per family.
        families = [trials[i].get(FAMILY_HP) for i in xs]
        for family in dict.fromkeys(families):
            mine = [(x, y) for x, y, f in zip(xs, ys, families) if f == family]
            ax.scatter(*zip(*mine), label=objective if family is None else f"{FAMILY_HP}={family}")
        best, line = None, []
        for y in ys:
            best = y if best is None else (max(best, y) if direction == "max" else min(best, y))
            line.append(best)
        ax.step(xs, line, where="post", color="black", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title(f"{objective} per trial")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with runs.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
