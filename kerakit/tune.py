"""`kerakit tune`: keras-tuner over a recipe's own `build_model(hp, data)`.

    result = kerakit.tune("digits_cnn", tuner="hyperband", max_epochs=9)
    result.best_hparams, result.run.metrics["accuracy"]
    kerakit.tune("digits_cnn", tuner="my_oracles:Annealing")   # your own keras_tuner.Oracle subclass

The search space is whatever `build_model` asks `hp` for; `key=value`
overrides fix a config value or a hyperparameter for the whole search.
Rerunning the same command on the same `out` resumes: finished trials are
kept, and a trial that was interrupted continues from its last finished epoch
(each trial has its own BackupAndRestore). A different search (recipe, tuner,
search space, or overrides) in the same directory is refused unless
`overwrite=True`.

A search is one `TuneRequest`: `kerakit.tune(...)` and `kerakit tune ...`
both fill one, and `--workers` starts its chief and workers from it. Which
tuner runs, and what kerakit adds to each trial, is `kerakit.tuners`.

OUT is a `kerakit.runs.Search` (its docstring shows the layout): keras-tuner's
project in OUT/tuner, the trials table and chart, best_hparams.json (for
`kerakit train --hparams`), and the best retrained as a normal run in OUT/best.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from kerakit import files, metrics, runs, tracking, tuners
from kerakit.distribute import STRATEGIES
from kerakit.errors import KerakitError
from kerakit.recipe import Recipe, load_recipe
from kerakit.tuners import RECYCLE_EXIT, TUNERS

RECYCLE_AFTER = 10  # trials per worker process
FAMILY_HP = "arch"  # the hyperparameter that picks a model family (see recipes/digits_select.py)
ROLES = ("chief", "worker")
MAX_RESTARTS = 3  # per worker


def _option(flag: str, help: str, default: Any = None, **cli: Any):
    """A request field the command line spells `flag` (cli: min=, choices=, type=, metavar=, dir=)."""
    return field(default=default, metadata={"flag": flag, "help": help, **cli})


def _tuners_where(test: Callable[[tuners.TunerKind], bool]) -> str:
    return ", ".join(name for name, kind in TUNERS.items() if test(kind))


@dataclass
class TuneRequest:
    """One search as asked for. `kerakit.tune(...)` and `kerakit tune ...` both fill one, and `--workers`
    starts its chief and workers from it (`argv`): each option is spelled here once, with its flag and help.

        request = TuneRequest("breast_cancer_mlp", {"epochs": "4"}, tuner="bayesian", max_trials=5)
        request.argv()   # -> ['tune', 'breast_cancer_mlp', 'epochs=4', '--tuner', 'bayesian', '--max-trials', '5']
        search(request)   # from kerakit.tune import TuneRequest, search
    """

    recipe: "str | os.PathLike | Recipe"
    overrides: dict = field(default_factory=dict)  # key=value: a config value or hyperparameter fixed for the search
    out: "str | os.PathLike | None" = _option(
        "--out", "Search directory (default runs/RECIPE-tune-TUNER). Rerun to resume.", dir=True)
    tuner: "str | type" = _option(
        "--tuner", f"One of {', '.join(TUNERS)}, or MODULE:CLASS naming a keras_tuner.Oracle subclass "
        "(run by keras_tuner.Tuner).", "random")
    max_trials: int = _option(
        "--max-trials", f"Trials for {_tuners_where(lambda k: k.budget == 'max_trials')} and a custom Oracle.", 10,
        min=1)
    max_epochs: int | None = _option(
        "--max-epochs", f"With --tuner {_tuners_where(lambda k: k.budget == 'max_epochs')}: the most epochs one "
        "trial trains.", min=1)
    executions_per_trial: int = _option("--executions-per-trial", "Fits per trial; its score is their mean.", 1,
                                        min=1)
    objective: str | None = _option(
        "--objective", "What to optimize (default: the recipe's validation metric, e.g. val_accuracy).")
    seed: int | None = _option("--tuner-seed", "Seed of the tuner's choices (default: the recipe's seed).",
                               type=int)
    retrain: bool = _option("--no-retrain", "Do not retrain the best hyperparameters as a run.", True)
    overwrite: bool = _option("--overwrite", "Start over in --out.", False)
    data_dir: str | None = _option("--data-dir", "TFDS data directory.")
    strategy: str = _option("--strategy", "tf.distribute strategy inside each trial.", "default",
                            choices=STRATEGIES)
    workers: int = _option("--workers", "Run a chief and N local worker processes.", 0, min=0)
    role: str | None = _option("--role", "Join a distributed search (with --oracle).", choices=ROLES)
    oracle: str | None = _option(
        "--oracle", "HOST:PORT of the chief's oracle (the chief binds it; 127.0.0.1 unless told otherwise).")
    recycle_after: int = _option(
        "--recycle-after", "A worker process restarts after this many trials, bounding memory (0: never).",
        RECYCLE_AFTER, min=0)
    cv: int = _option(
        "--cv", "Score each trial by K-fold cross-validation (the mean over the folds' held-out parts): each "
        f"trial then costs K fits. 0: the recipe's val split. Not with {_tuners_where(lambda k: not k.cv)}.", 0,
        min=0, metavar="K")
    track: bool = _option(
        "--track", "Log to MLflow: the search as a run, each trial nested in it, the best's training too "
        "($MLFLOW_TRACKING_URI, else ./mlflow.db, MLflow's local default).", False)
    verbose: "int | str" = "auto"  # Keras's fit verbosity ("auto": 1 on a terminal); the API's only

    @classmethod
    def of(cls, recipe, out=None, **options: Any) -> "TuneRequest":
        """A request from keyword arguments: its fields by name, and every other one a key=value override."""
        names = {f.name for f in fields(cls)} - {"recipe", "overrides"}
        return cls(recipe, {k: v for k, v in options.items() if k not in names}, out=out,
                   **{k: v for k, v in options.items() if k in names})

    def argv(self) -> list[str]:
        """This request as `kerakit tune` arguments: each option that differs from its default, by its flag."""
        recipe = self.recipe.path if isinstance(self.recipe, Recipe) else self.recipe
        args = ["tune", str(recipe), *(f"{k}={v}" for k, v in self.overrides.items())]
        for f in fields(self):
            value, flag = getattr(self, f.name), f.metadata.get("flag")
            if flag is None or value is None or value == f.default:
                continue
            args += [flag] if isinstance(f.default, bool) else [flag, tuners.spec(value)]  # spec: an Oracle class
        return args

    def check(self) -> None:
        """Refuse a value out of its field's range, and options that cannot go together (before TensorFlow loads)."""
        for f in fields(self):
            value, low, allowed = getattr(self, f.name), f.metadata.get("min"), f.metadata.get("choices")
            if value is None:
                continue
            if low is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise KerakitError(f"Invalid {f.name}={value!r}. Expected an integer >= {low}.")
            if allowed is not None and value not in allowed:
                raise KerakitError(f"Invalid {f.name}={value!r}. Expected one of {', '.join(allowed)}.")
        if self.role and self.workers:
            raise KerakitError("--workers starts its own chief and workers; do not combine it with --role.")
        if self.role and not self.oracle:
            raise KerakitError("--role needs --oracle HOST:PORT.")
        if self.cv and (self.workers or self.role):
            raise KerakitError("--cv runs in one process; do not combine it with --workers or --role.")


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
    """A request checked and resolved before TensorFlow starts."""

    request: TuneRequest
    recipe: Recipe
    config: dict
    hp_overrides: dict
    out: runs.Search
    kind: tuners.TunerKind
    objective: str
    direction: str


def tune(recipe: "str | os.PathLike | Recipe", out: "str | os.PathLike | None" = None, *,
         log: Callable[[str], None] = print, **options: Any) -> TuneResult:
    """Search `recipe`'s hyperparameters with keras-tuner; retrain the best as a normal run.

    options: any `TuneRequest` field (tuner=, max_trials=, max_epochs=,
    executions_per_trial=, objective=, seed=, retrain=, overwrite=, data_dir=,
    strategy=, workers=, role=, oracle=, recycle_after=, cv=, verbose=); every
    other keyword is a key=value override of the recipe's config or hyperparameters.

    tuner: a name in `kerakit.tuners.TUNERS`, or a `keras_tuner.Oracle`
    subclass (or "module:Class" naming one), which `keras_tuner.Tuner` runs.

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
    return search(TuneRequest.of(recipe, out, **options), log)


def search(request: TuneRequest, log: Callable[[str], None] = print) -> TuneResult:
    """Run `request`: here, as a chief or worker of a distributed search, or as the launcher of --workers."""
    request.check()
    if request.workers:
        return _launch(request, log)
    if request.role is not None:
        _join(request.role, request.oracle)
    plan = _check_request(request)
    # The chief (or a search on one machine) is the directory's one writer; workers only train trials.
    own = request.role != "worker"
    if own and request.overwrite:
        plan.out.tracking.unlink(missing_ok=True)  # a search started over is a new MLflow run
    tracked = tracking.parent_run(plan.out.path, "search", name=f"{plan.out.path.name} search", own=own, log=log,
                                  experiment=plan.recipe.name, config=plan.config, track=request.track or None)
    with files.writer(plan.out.path, "kerakit tune") if own else contextlib.nullcontext(), tracked as tracker:
        return _search(plan, log, tracker)


def _search(plan: _Plan, log, tracker=None) -> TuneResult:
    """Search (resuming what is there), write the trials and the best, retrain it as a run."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from kerakit import distribute
    from kerakit.data import load_data

    request = plan.request
    dist = distribute.make_strategy(request.strategy) if request.strategy not in (None, "default") else None
    # Seeded before the data (its shuffle combines the global seed with its own) and again after:
    # preparing a dataset the first time runs seeded TF ops, and the model's initial weights must
    # not depend on whether TFDS had the data on disk already.
    keras.utils.set_random_seed(plan.config["seed"])
    data = load_data(plan.recipe, plan.config, request.data_dir)
    folds = _fold_data(plan)
    keras.utils.set_random_seed(plan.config["seed"])
    fixed = _check_search(plan, data)
    searcher = _make_searcher(plan, data, fixed, dist, folds, log, tracker)
    verbose = (1 if sys.stdout.isatty() else 0) if request.verbose == "auto" else request.verbose
    started = time.time()
    _run_search(plan, searcher, data, verbose, log)
    if request.role == "worker":
        log(f"Worker {os.environ['KERASTUNER_TUNER_ID']}: the oracle has no more trials.")
        return TuneResult(plan.out.path, {}, [], None)
    best, trials = _finish(plan, searcher, started, log)
    if tracker is not None:
        tracking.send_search(tracker, plan.out, plan.objective, best, trials)
    run = _retrain_best(plan, best, verbose, log, tracker) if request.retrain else None
    return TuneResult(plan.out.path, best, trials, run)


def _fold_data(plan: _Plan) -> list:
    """With --cv K: the K folds' data (each fold's train and held-out parts as train and val)."""
    from kerakit.data import load_data
    from kerakit.folds import Fold

    k_folds = plan.request.cv
    return [load_data(plan.recipe, plan.config, plan.request.data_dir, fold=Fold(k, k_folds, plan.config["seed"]))
            for k in range(k_folds)]


def _retrain_best(plan: _Plan, best: dict, verbose, log, tracker=None) -> runs.Run:
    """Train the best hyperparameters into OUT/best; replace it when a longer search found a new best."""
    from kerakit.train import train

    previous = runs.Run(plan.out.best_dir)
    replace_best = False
    if previous.config_path.exists():
        try:
            replace_best = previous.config.get("hparams_requested") != files.read_json(plan.out.best_hparams)
        except KerakitError:
            replace_best = True  # a damaged best/ is trained again
        if replace_best:
            log(f"{previous.path} holds an earlier best; training the new best {best} in its place.")
    request = plan.request
    return train(plan.recipe, previous.path, strategy=request.strategy, data_dir=request.data_dir,
                 hparams=plan.out.best_hparams, overwrite=replace_best, verbose=verbose, log=log,
                 **(tracker.for_children() if tracker is not None else {}),
                 **{k: v for k, v in request.overrides.items() if k in plan.config})


def _out_dir(request: TuneRequest, recipe: Recipe, kind: tuners.TunerKind) -> Path:
    return Path(request.out) if request.out else Path("runs") / f"{recipe.name}-tune-{kind.name.rpartition(':')[2]}"


def _check_request(request: TuneRequest) -> _Plan:
    """The request resolved: its tuner and budget, recipe, config, directory, objective and its direction."""
    kind = tuners.resolve(request.tuner)
    if getattr(request, kind.budget) is None:
        flag = next(f.metadata["flag"] for f in fields(request) if f.name == kind.budget)
        raise KerakitError(f"--tuner {kind.name} needs {flag} (the budget that bounds its search).")
    if request.cv:
        from kerakit.folds import check_folds

        if not kind.cv:
            raise KerakitError(f"--cv works with --tuner {_tuners_where(lambda k: k.cv)} or a custom Oracle, "
                               f"not {kind.name}.")
        check_folds(request.cv)
    recipe = load_recipe(request.recipe)
    config, hp_overrides = recipe.resolve_config(request.overrides)
    out = _out_dir(request, recipe, kind)
    files.ensure_writable_dir(out)
    objective = request.objective or recipe.monitor
    return _Plan(request=request, recipe=recipe, config=config, hp_overrides=hp_overrides, out=runs.Search(out),
                 kind=kind, objective=objective, direction=metrics.direction(objective))


def _check_search(plan: _Plan, data) -> dict:
    """Record what this directory searches; refuse a different search in it. Returns the fixed hyperparameters."""
    import shutil

    from kerakit.train import search_space

    space = search_space(plan.recipe, data)
    fixed = plan.recipe.check_hparams(plan.hp_overrides, space) if plan.hp_overrides else {}
    search = {
        "recipe": plan.recipe.name, "tuner": plan.kind.name, "objective": plan.objective,
        "direction": plan.direction, "config": plan.config, "fixed_hparams": fixed,
        "space": sorted(({"name": hp.name, "class": type(hp).__name__, **hp.get_config()} for hp in space),
                        key=lambda h: h["name"]),
        # A trial count may grow (a longer search continues); an epoch budget cuts Hyperband's brackets.
        "max_epochs": plan.request.max_epochs if plan.kind.budget == "max_epochs" else None,
    }
    if plan.request.cv:
        search["cv_folds"] = plan.request.cv
    out = plan.out
    if plan.request.role == "worker":
        return fixed  # the chief owns the directory's search record
    if out.search_file.exists() and not plan.request.overwrite:
        previous = files.read_json(out.search_file)
        changed = sorted(k for k in search if previous.get(k) != search[k])
        if changed:
            raise KerakitError(
                f"{out.path} holds a different search (changed: {', '.join(changed)}). "
                "Use another --out, or --overwrite to start this one from scratch."
            )
    elif plan.request.overwrite:
        for target in (out.tuner_dir, out.best_dir, out.search_file, out.best_hparams, out.trials_csv,
                       out.trials_json, out.trials_png):
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    files.write_json(out.search_file, search)
    return fixed


def _make_searcher(plan: _Plan, data, fixed: dict, dist, folds: list, log, tracker=None):
    """The keras-tuner tuner over the recipe's own build_model, resuming the project in OUT/tuner."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    for name, value in fixed.items():
        hp.Fixed(name, value)
    request = plan.request
    return tuners.make_tuner(
        plan.kind, budget=getattr(request, plan.kind.budget), hyperparameters=hp,
        objective=kt.Objective(plan.objective, direction=plan.direction),
        seed=plan.config["seed"] if request.seed is None else request.seed,
        recipe=plan.recipe, data=data, folds=folds, log=log, tracker=tracker,
        recycle_after=request.recycle_after if request.role == "worker" else 0,
        executions_per_trial=request.executions_per_trial, distribution_strategy=dist,
        directory=str(plan.out.path), project_name=runs.TUNER_DIR, overwrite=False,
    )


def _run_search(plan: _Plan, searcher, data, verbose, log) -> None:
    """Run (or resume) every trial; a chief waits here until the workers have run them all."""
    import keras

    done_before = sum(t.status == "COMPLETED" for t in getattr(searcher.oracle, "trials", {}).values())
    if done_before:
        log(f"Resuming the search in {plan.out.path}: {done_before} trial(s) already done.")
    callbacks = [keras.callbacks.EarlyStopping(plan.objective, mode=plan.direction, patience=plan.config["patience"]),
                 keras.callbacks.TerminateOnNaN()]
    if plan.request.role == "chief":
        log(f"Oracle serving on {os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}; "
            "waiting for workers to finish every trial.")
    # Hyperband's own run_trial trains each trial for the epochs its bracket gives it instead.
    searcher.search(data.train, validation_data=data.val, epochs=plan.config["epochs"], callbacks=callbacks,
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
    files.write_json(plan.out.best_hparams, best)
    log(f"Search done in {time.time() - started:.0f} s: {len(trials)} trials; best {objective}="
        f"{max_or_min(trials, direction):.4f} with {best}")
    return best, trials


def _join(role: str, oracle: str | None) -> None:
    """Set keras-tuner's distributed environment for this process."""
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


def _launch(request: TuneRequest, log) -> TuneResult:
    """A chief and `request.workers` worker processes on this machine, each started from the request."""
    import subprocess

    recipe = load_recipe(request.recipe)
    kind = tuners.resolve(request.tuner)  # a bad --tuner is refused here, not in the chief's log
    out = _out_dir(request, recipe, kind)
    search_dir = runs.Search(out)
    logs = files.ensure_writable_dir(search_dir.distributed_dir)
    port = _free_port()
    shared = replace(request, recipe=str(recipe.path), out=str(out), tuner=kind.name, workers=0,
                     oracle=f"127.0.0.1:{port}")
    threads = str(max(1, (os.cpu_count() or 1) // request.workers))
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": threads}

    def start(role: str, index: int | None = None):
        chief = role == "chief"  # the one that retrains the best and may start the directory over
        argv = replace(shared, role=role, retrain=chief and shared.retrain, overwrite=chief and shared.overwrite).argv()
        name = "chief" if chief else f"worker{index}"
        with open(logs / f"{name}.log", "ab") as f:
            return subprocess.Popen([sys.executable, "-m", "kerakit.cli", *argv], stdout=f, stderr=subprocess.STDOUT,
                                    env={**env, "KERASTUNER_TUNER_ID": "chief" if chief else f"tuner{index}"})

    chief = start("chief")
    procs: dict[int, Any] = {}
    try:
        _wait_for_port(port, chief)
        log(f"Chief serving on 127.0.0.1:{port}; starting {request.workers} worker(s) with {threads} thread(s) "
            f"each (logs in {logs}).")
        procs.update({i: start("worker", i) for i in range(request.workers)})
        _supervise(chief, procs, start, logs, log)
    finally:
        _stop(chief, *procs.values())
    trials = files.read_json(search_dir.trials_json)["trials"]
    run = runs.Run(search_dir.best_dir) if runs.is_run(search_dir.best_dir) else None
    result = TuneResult(out, files.read_json(search_dir.best_hparams), trials, run)
    log(f"Distributed search done: {len(trials)} trials by {request.workers} worker(s); best {result.best_hparams}")
    return result


def _supervise(chief, procs: dict, start, logs: Path, log) -> None:
    """Until the chief exits: start a recycled worker again, restart a dead one (at most MAX_RESTARTS times)."""
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


def _stop(*procs) -> None:
    import subprocess

    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def trials_table(searcher, objective: str) -> list[dict]:
    rows = []
    for trial_id, trial in sorted(searcher.oracle.trials.items()):
        hps = trial.hyperparameters
        # Only the hyperparameters this trial's model used: one family's under hp.conditional_scope, not another's.
        active = {hp.name for hp in hps.space if hps.is_active(hp)}
        values = {k: v for k, v in hps.values.items() if not k.startswith("tuner/") and k in active}
        counted = tuners.trial_dir(searcher.project_dir, trial_id) / tuners.EPOCHS_FILE
        rows.append({"trial": trial_id, "status": trial.status, "score": trial.score,
                     "epochs": files.read_json(counted)["epochs"] if counted.exists() else None, **values})
    return rows


def max_or_min(trials: list[dict], direction: str) -> float:
    scores = [t["score"] for t in trials if t["score"] is not None]
    return max(scores) if direction == "max" else min(scores)


def _write_trials(out: runs.Search, trials: list[dict], objective: str, direction: str) -> None:
    files.write_json(out.trials_json, {"objective": objective, "direction": direction, "trials": trials})
    files.write_csv(out.trials_csv, trials)
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
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
