"""Experiment tracking in MLflow: opt-in, and never in training's way.

    kerakit train digits_cnn --track                   # or tracking = "mlflow" in the recipe's DEFAULTS
    MLFLOW_TRACKING_URI=http://mlflow:5000 kerakit build digits_cnn --track --register digits

The store is $MLFLOW_TRACKING_URI when it is set, else MLflow's own local default (since MLflow 3.7 a SQLite
database, ./mlflow.db, with artifacts in ./mlruns; an ./mlruns file store that already holds experiments is
kept). The experiment is $MLFLOW_EXPERIMENT_NAME, else the recipe's name.

A directory kerakit writes (a run, a search, a cross-validation) records its MLflow run ids in mlflow.json
(`runs.TRACKING_FILE`), one per role ("train", "build", ...), so a training killed and resumed continues the
same MLflow run instead of starting a second one. Per-epoch metrics go out while training, through MLflow's
own Keras callback (asynchronously: a slow server does not hold an epoch up); the rest is sent from the
files once the step has written them, and what was already logged is not logged twice, so `kerakit track
RUN` (or the next resume) sends only what is missing.

A server that is down or fails is one line, never a failed or stalled training: the server is asked once
(`/health`, 3 s) before anything is logged, and after the first failure nothing more is tried.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from kerakit import files, runs
from kerakit.errors import KerakitError

TRACKING_CHOICES = ("mlflow", "none")
# MLflow's REST client retries 7 times with doubling back-off and waits 120 s per request by default: minutes
# of a finished training spent waiting on a dead server. kerakit's defaults, unless the environment sets them.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
PROBE_TIMEOUT_S = 3.0
# The epochs' metrics MLflow's callback queued are waited for this long at the end; past it (a server that died
# mid-training) they are left to the rerun or `kerakit track RUN`, which send what the store lacks.
FLUSH_WAIT_S = 10.0
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param's value
BATCH = {"params": 100, "metrics": 1000, "tags": 100}  # MLflow's limits per log_batch call


def wanted(track: bool | None, config: dict) -> bool:
    """Whether to track: `track` when given (--track), else the recipe's `tracking` default.

        wanted(None, {"tracking": "mlflow"}), wanted(False, {"tracking": "mlflow"}), wanted(None, {})
        # -> (True, False, False)
    """
    value = config.get("tracking", "none")
    if value not in TRACKING_CHOICES:
        raise KerakitError(f"Invalid tracking={value!r}. Expected one of: {', '.join(TRACKING_CHOICES)}.")
    return bool(track) if track is not None else value == "mlflow"


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else MLflow's local default; a relative local store made absolute, so a resume
    from another working directory finds the same one."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    if "://" not in uri and not uri.startswith(("databricks", "file:")):
        return Path(uri).resolve().as_uri()
    return uri


class Tracker:
    """One MLflow run kerakit logs to. Every call is safe: the first failure is one line naming what was not
    logged and how to send it later, and after it nothing more is tried. A tracker that is off does nothing.

        tracker = Tracker.start(run.path, "train", name="digits", experiment="digits_cnn", log=print)
        tracker.params({"epochs": 3}); tracker.end("FINISHED")
    """

    def __init__(self, log: Callable[[str], None] = print, uri: str | None = None, run_id: str | None = None,
                 resend: str = "", wanted: bool = False):
        self.log, self.uri, self.run_id, self.resend = log, uri, run_id, resend
        self.wanted = wanted  # tracking was asked for (on, or off because the server is down: said once)
        self.experiment = ""
        self.failed: str | None = None

    @property
    def on(self) -> bool:
        return self.run_id is not None and self.failed is None

    @classmethod
    def start(cls, directory: "str | os.PathLike", role: str, *, name: str, experiment: str, log,
              tags: dict | None = None, resend: str = "", create: bool = True) -> "Tracker":
        """Continue the MLflow run that directory/mlflow.json records for `role`, or create one (nested under
        the active MLflow run if any) and record it; `create=False`: only continue one. An unreachable server:
        one line, and a tracker that is off."""
        uri = tracking_uri()
        down = _unreachable(uri)
        if down:
            log(f"MLflow at {uri} is not reachable ({down}): nothing of {name} is logged there; "
                f"{resend or 'rerun with --track'} sends it once it is up.")
            return cls(log, wanted=True)
        tracker = cls(log, uri, resend=resend, wanted=True)
        tracker.experiment = experiment
        if create or _recorded(uri, Path(directory), role):
            tracker.run_id = tracker._call(f"the MLflow run of {name}", _open_run, uri, Path(directory), role, name,
                                           experiment, tags or {}, _active_run_id())
        return tracker

    def child(self, directory: "str | os.PathLike", role: str, name: str, tags: dict | None = None) -> "Tracker":
        """A run nested in this one (recorded in directory/mlflow.json as `role`; continued when it is), on the
        same store, asking the server nothing more: off where this one is."""
        child = Tracker(self.log, self.uri if self.on else None, resend=self.resend, wanted=self.wanted)
        child.experiment = self.experiment
        if self.on:
            child.run_id = child._call(f"the MLflow run of {name}", _open_run, self.uri, Path(directory), role, name,
                                       self.experiment, tags or {}, self.run_id)
        return child

    def for_children(self) -> dict:
        """train()'s `track` for a run nested in this one: on where this is on; off where it was asked for but
        is off (the line was said once, here); else the recipe's default."""
        return {"track": self.on} if self.wanted else {}

    def _call(self, what: str, fn, *args, **kwargs):
        """fn(*args) if tracking is on; on failure, the one line, and off from now on."""
        if self.uri is None or self.failed is not None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # a tracking failure must never fail the step it tracks
            self.failed = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
            self.log(f"MLflow at {self.uri}: {what} not logged, nor anything after it ({self.failed}); "
                     f"{self.resend or 'rerun with --track'} sends what is missing.")
            return None

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    # What a step logs.
    def params(self, values: dict, what: str = "the parameters") -> None:
        self._call(what, _log_params, self.client(), self.run_id, values) if self.on else None

    def tags(self, values: dict, what: str = "the tags") -> None:
        self._call(what, _log_batch, self.client(), self.run_id, "tags", values) if self.on else None

    def metrics(self, values: dict, step: int = 0, what: str = "the metrics", wait: bool = True) -> None:
        """`wait=False`: queued, as MLflow's Keras callback does (a slow server does not hold an epoch up)."""
        self._call(what, _log_batch, self.client(), self.run_id, "metrics", values, step, wait) if self.on else None

    def history(self, rows: list[dict], what: str = "the per-epoch metrics") -> None:
        """Rows of history.csv (one per epoch): every value not yet logged at its epoch."""
        self._call(what, _log_history, self.client(), self.run_id, rows) if self.on else None

    def artifacts(self, paths: list, artifact_path: str | None = None, what: str = "the artifacts") -> None:
        """Files and directories, each under `artifact_path` by its own name; missing ones are skipped."""
        self._call(what, _log_artifacts, self.client(), self.run_id, paths, artifact_path) if self.on else None

    def end(self, status: str = "FINISHED") -> None:
        self._call("the run's end", lambda: self.client().set_terminated(self.run_id, status)) if self.on else None

    @contextlib.contextmanager
    def active(self) -> Iterator["Tracker"]:
        """The run as MLflow's active run while the block runs (what MLflow's Keras callback logs to), ended
        FINISHED, FAILED (an exception) or KILLED (Ctrl-C) when it leaves."""
        import mlflow

        with _environment("MLFLOW_TRACKING_URI", self.uri if self.on else None):
            started = self._call("the active run", lambda: mlflow.start_run(
                run_id=self.run_id, nested=mlflow.active_run() is not None)) if self.on else None
            status = "FAILED"
            try:
                yield self
                status = "FINISHED"
            except KeyboardInterrupt:
                status = "KILLED"
                raise
            finally:
                if started is not None:
                    _flush(self, FLUSH_WAIT_S)
                    with contextlib.suppress(Exception):  # a failure was said already; end_run pops the run first
                        mlflow.end_run(status)

    def keras_callbacks(self) -> list:
        """MLflow's own Keras callback, logging each epoch's metrics while the run is active."""
        if not self.on:
            return []
        from mlflow.keras import MlflowCallback

        class EpochMetrics(MlflowCallback):
            # Its on_test_end logs validation figures at step 0 after every epoch's validation: the same
            # figures the epoch's logs already hold as val_*, at the right step.
            def on_test_end(self, logs=None):
                pass

        return [EpochMetrics()]


@contextlib.contextmanager
def _environment(key: str, value: str | None) -> Iterator[None]:
    """os.environ[key] = value while the block runs (None: unchanged). MLflow's fluent API (what its Keras
    callback calls) reads the store from $MLFLOW_TRACKING_URI; mlflow.set_tracking_uri would outlast the run
    and hide MLflow's default from the next one."""
    before = os.environ.get(key)
    if value is not None:
        os.environ[key] = value
    try:
        yield
    finally:
        if value is not None and before is None:
            os.environ.pop(key, None)
        elif value is not None:
            os.environ[key] = before


def _flush(tracker: Tracker, wait_s: float) -> None:
    """MLflow's queue of asynchronously logged metrics, flushed for at most `wait_s` seconds."""
    import threading

    import mlflow

    done = threading.Event()

    def flush():
        try:
            mlflow.flush_async_logging()
        except Exception as e:  # noqa: BLE001  (said below, as every tracking failure is)
            tracker._call("the per-epoch metrics", _raise, e)
        finally:
            done.set()

    threading.Thread(target=flush, daemon=True, name="kerakit-mlflow-flush").start()
    if not done.wait(wait_s):
        tracker._call("the per-epoch metrics", _raise, TimeoutError(f"still queued after {wait_s:g} s"))


def _raise(error: Exception):
    raise error


def _unreachable(uri: str) -> str | None:
    """Why an HTTP tracking server cannot be used now, or None (a local store is always tried)."""
    if not uri.startswith(("http://", "https://")):
        return None
    import urllib.error
    import urllib.request

    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S) as answer:
            return None if answer.status == 200 else f"/health answered {answer.status}"
    except urllib.error.HTTPError as e:
        return f"/health answered {e.code}"
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return str(reason) if not isinstance(reason, TimeoutError) else f"no answer in {PROBE_TIMEOUT_S:g} s"


def _active_run_id() -> str | None:
    import mlflow

    active = mlflow.active_run()
    return active.info.run_id if active is not None else None


def _read_record(directory: Path) -> dict:
    """directory/mlflow.json; {} where there is none, or it is not a JSON object (torn, hand-edited): the runs
    it named are then made again, and a tracking file never fails the step it tracks."""
    try:
        record = files.read_json(directory / runs.TRACKING_FILE)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and isinstance(record.get("runs", {}), dict) else {}


def _recorded(uri: str, directory: Path, role: str) -> bool:
    record = _read_record(directory)
    return record.get("tracking_uri") == uri and bool(record.get("runs", {}).get(role))


def _open_run(uri: str, directory: Path, role: str, name: str, experiment: str, tags: dict,
              parent_id: str | None) -> str:
    """The id of the run directory/mlflow.json records for `role` in this store, still there; else a new run's."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=uri)
    record_path = directory / runs.TRACKING_FILE
    record = _read_record(directory)
    known = record.get("runs", {}).get(role) if record.get("tracking_uri") == uri else None
    if known:
        try:
            if client.get_run(known).info.lifecycle_stage == "active":
                return known
        except MlflowException:
            pass  # deleted from the store: a new run
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    tags = {**tags, **({"mlflow.parentRunId": parent_id} if parent_id else {})}
    run_id = client.create_run(experiment_id, run_name=name, tags={k: str(v) for k, v in tags.items()}).info.run_id
    if record.get("tracking_uri") != uri:  # another store: its run ids are no use here (what a build did is)
        record = {"tracking_uri": uri, "runs": {}, **{k: v for k, v in record.items() if k == "build_done"}}
    record["runs"][role] = run_id
    files.write_json(record_path, record)
    return run_id


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:MAX_PARAM_CHARS]


def _log_params(client, run_id: str, values: dict) -> None:
    """Params not logged yet (MLflow refuses a second, different value; an equal one is no news)."""
    from mlflow.entities import Param

    logged = client.get_run(run_id).data.params
    new = [Param(k, _text(v)) for k, v in values.items() if k not in logged]
    for i in range(0, len(new), BATCH["params"]):
        client.log_batch(run_id, params=new[i:i + BATCH["params"]])


def _log_batch(client, run_id: str, kind: str, values: dict, step: int = 0, wait: bool = True) -> None:
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    if kind == "tags":
        entries = [RunTag(k, _text(v)) for k, v in values.items()]
    else:
        entries = [Metric(k, float(v), now, step) for k, v in values.items() if _number(v)]
    for i in range(0, len(entries), BATCH[kind]):
        client.log_batch(run_id, **{kind: entries[i:i + BATCH[kind]]}, synchronous=wait)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _log_history(client, run_id: str, rows: list[dict]) -> None:
    """Each epoch's values (history.csv: `epoch` 0-based, as Keras and the callback count) not logged yet."""
    from mlflow.entities import Metric

    now, missing = int(time.time() * 1000), []
    keys = [k for k in dict.fromkeys(k for row in rows for k in row) if k != "epoch"]
    for key in keys:
        logged = {m.step for m in client.get_metric_history(run_id, key)}
        for row in rows:
            value = _float(row.get(key))
            if value is not None and int(row["epoch"]) not in logged:
                missing.append(Metric(key, value, now, int(row["epoch"])))
    for i in range(0, len(missing), BATCH["metrics"]):
        client.log_batch(run_id, metrics=missing[i:i + BATCH["metrics"]])


def _float(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _log_artifacts(client, run_id: str, paths: list, artifact_path: str | None) -> None:
    for path in map(Path, paths):
        if path.is_dir():
            client.log_artifacts(run_id, str(path), f"{artifact_path}/{path.name}" if artifact_path else path.name)
        elif path.is_file():
            client.log_artifact(run_id, str(path), artifact_path)


# --------------------------------------------------------------------------- train

@contextlib.contextmanager
def training(run: runs.Run, recipe, config: dict, track: bool | None, log) -> Iterator[Tracker]:
    """Track the training of `run` while the block trains it: the MLflow run is active (the Keras callback logs
    each epoch), then, once the block has written the run, everything else is sent and the run ends."""
    if not wanted(track, config):
        yield Tracker(log)
        return
    tracker = Tracker.start(run.path, "train", name=run.path.name, experiment=recipe.name, log=log,
                            resend=f"`kerakit track {run.path}`",
                            tags={"kerakit.recipe": recipe.name, "kerakit.run_dir": str(run.path.resolve())})
    tracker.params(config)
    with tracker.active():
        yield tracker
        send_training(tracker, run)  # only once the block has written the run


def send_training(tracker: Tracker, run: runs.Run) -> None:
    """What a finished run holds: its config and hyperparameters as params, each epoch's metrics, the test
    metrics, the tags (recipe, data version, code version, kerakit version) and its files as artifacts."""
    config, manifest = run.config, run.manifest
    tracker.params({**config["config"], **config.get("hparams", {})})
    tracker.tags(run_tags(config, manifest))
    tracker.history(_read_rows(run.history_path))
    tracker.metrics(split_metrics(run.metrics))
    tracker.artifacts([run.config_path, run.manifest_path, run.metrics_path, run.history_path, run.recipe_path,
                       run.data_profile, run.model_path])


def track_run(path: "str | os.PathLike", log=print) -> str | None:
    """`kerakit track RUN`: send a finished run to MLflow, continuing the MLflow runs it records (what a
    server that was down missed); returns the MLflow run id (a build's), or None where nothing could be sent.
    A build's run directory (build.json) is sent as its build's parent run with the training nested in it,
    the steps' figures and, where the build asked, the registered versions; a training (or a build's, from
    inside its live build) as one run."""
    run = runs.Run.open(path)
    recipe, resend = run.config["recipe"], f"`kerakit track {run.path}`"
    tags = {"kerakit.recipe": recipe, "kerakit.run_dir": str(run.path.resolve())}
    if not run.build_state.is_file() or _active_run_id() is not None:
        tracker = Tracker.start(run.path, "train", name=run.path.name, experiment=recipe, log=log, resend=resend,
                                tags=tags)
        send_training(tracker, run)
        tracker.end("FINISHED")
        return tracker.run_id if tracker.on else None
    parent = Tracker.start(run.path, "build", name=f"{run.path.name} build", experiment=recipe, log=log,
                           resend=resend, tags={**tags, "kerakit.step": "build"})
    training = parent.child(run.path, "train", run.path.name, tags=tags)
    send_training(training, run)
    training.end("FINISHED")
    done = _build_record(run.path)
    failed = send_build(parent, run, done.get("steps", {}), done.get("register"), log)
    parent.end("FAILED" if failed else "FINISHED")
    return parent.run_id if parent.on else None


def run_tags(config: dict, manifest: dict) -> dict:
    """Recipe, data version (dataset name and version, and one SHA-256 over its splits' contents), code
    version (MLflow's own git-commit tag) and kerakit's version."""
    data, code = manifest.get("data") or {}, manifest.get("code") or {}
    tags = {"kerakit.recipe": config.get("recipe"), "kerakit.version": manifest.get("versions", {}).get("kerakit"),
            "kerakit.data.dataset": data.get("dataset"), "kerakit.data.version": data.get("version"),
            "kerakit.data.sha256": (hashlib.sha256(json.dumps(data["sha256"], sort_keys=True).encode()).hexdigest()
                                    if data.get("sha256") else None),
            "mlflow.source.git.commit": code.get("git_commit"), "kerakit.code.git_dirty": code.get("git_dirty"),
            "kerakit.task": manifest.get("recipe", {}).get("task")}
    return {k: v for k, v in tags.items() if v is not None}


def split_metrics(metrics: dict) -> dict:
    """The test split's figures as test_<name> (a fold's held-out figures as held_out_<name>)."""
    found = {f"test_{k}": v for k, v in metrics.items() if _number(v)}
    found.update({f"held_out_{k}": v for k, v in (metrics.get("held_out") or {}).items() if _number(v)})
    return found


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- build

@contextlib.contextmanager
def parent_run(directory: "str | os.PathLike", role: str, *, name: str, experiment: str, config: dict,
               track: bool | None, log, own: bool = True, tags: dict | None = None,
               resend: str = "") -> Iterator[Tracker]:
    """The MLflow run of a step that others nest in (a build, a search, a cross-validation), active while the
    block runs, so a training started in it nests in it. `own=False` (a search's worker process): continue the
    run the directory records, if any, without making it active or ending it."""
    if not wanted(track, config):
        yield Tracker(log)
        return
    tracker = Tracker.start(directory, role, name=name, experiment=experiment, log=log, create=own, resend=resend,
                            tags={"kerakit.recipe": experiment, "kerakit.run_dir": str(Path(directory).resolve()),
                                  "kerakit.step": role, **(tags or {})})
    if not own:
        yield tracker
        return
    with tracker.active():
        yield tracker


def building(run: runs.Run, recipe, config: dict, track: bool | None, register: str | None, log):
    """Track a build of `run` as a parent MLflow run while the block builds (the training, and a search, nest
    in it); the block sends the steps' figures (`send_build`). `register` implies tracking."""
    return parent_run(run.path, "build", name=f"{run.path.name} build", experiment=recipe.name, config=config,
                      track=True if register else track, log=log, resend=f"`kerakit track {run.path}`")


def send_build(tracker: Tracker, run: runs.Run, steps: dict, register: str | None = None, log=print) -> bool:
    """A build's figures on its parent run: each step's status and seconds, each artifact's verdict and
    verification figures, the artifact `deployment.json` picked per batch size and its p50; the export report,
    deployment.json and the report as artifacts, and each verified artifact as a model directory (the file and
    an MLmodel holding its signature and figures). `register`: each of those a version of that registered
    model; a failed artifact is never one. The steps and `register` are kept in RUN/mlflow.json where tracking
    was asked for, so `kerakit track RUN` sends them once a server that was down is up.

    Returns whether an artifact failed verification."""
    if tracker.wanted:
        _keep_build_record(run.path, steps, register)
    if not tracker.on:
        return False
    from kerakit.export.report import ExportReport

    report = ExportReport.find(run.export_dir)
    picks = _deployment_picks(run)
    tracker.tags({f"step.{name}": str(done["status"])[:200] for name, done in steps.items()})
    tracker.metrics({f"step.{name}.seconds": done["seconds"] for name, done in steps.items()})
    if report is not None:
        tracker.tags({f"export.{row.artifact}.verdict": row.verdict for row in report.artifacts})
        tracker.metrics({f"export.{row.artifact}.{key}": value for row in report.artifacts
                         for key, value in row.figures.items() if _number(value)})
        tracker.artifacts([report.path], "export")
    tracker.tags({f"deployment.batch_{batch}": f"{pick['artifact']} ({pick.get('setting', '')})"
                  for batch, pick in picks.items()})
    tracker.metrics({f"deployment.batch_{batch}.p50_ms": pick.get("p50_ms") for batch, pick in picks.items()})
    tracker.artifacts([run.deployment, run.report_dir, run.bench_result])
    if report is not None:
        verified = report.still_verified()
        tracker._call("the verified artifacts", _log_models, tracker, report.directory, verified, picks)
        if register:
            tracker._call(f"the model versions of {register!r}", _register, tracker, register, verified, picks,
                          log)
    return report is not None and bool(report.failed)


def _build_record(directory: Path) -> dict:
    """What RUN/mlflow.json keeps of the build (its steps' status and seconds, the name it registers under)."""
    done = _read_record(directory).get("build_done")
    return done if isinstance(done, dict) else {}


def _keep_build_record(directory: Path, steps: dict, register: str | None) -> None:
    record = _read_record(directory)
    record["build_done"] = {"steps": steps, **({"register": register} if register else {})}
    files.write_json(directory / runs.TRACKING_FILE, record)


def _deployment_picks(run: runs.Run) -> dict[int, dict]:
    """{batch size: deployment.json's choice}; {} where the run was not benched."""
    if not run.deployment.is_file():
        return {}
    try:
        return {int(b): c for b, c in files.read_json(run.deployment).get("batches", {}).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def _picked_for(filename: str, picks: dict[int, dict]) -> list[int]:
    return sorted(b for b, pick in picks.items() if pick.get("artifact") == filename)


def _log_models(tracker: Tracker, directory: Path, rows: list, picks: dict[int, dict]) -> None:
    """Each verified artifact under models/ARTIFACT/: its file (or SavedModel folder) and an MLmodel with its
    signature (input and output names, dtypes, shapes, as its runtime reports them) and figures."""
    import shutil
    import tempfile

    client = tracker.client()
    for row in rows:
        with tempfile.TemporaryDirectory(prefix="kerakit-mlflow-") as tmp:
            folder = Path(tmp) / row.artifact
            folder.mkdir()
            source = directory / row.filename
            if source.is_dir():
                shutil.copytree(source, folder / source.name)
            else:
                shutil.copy2(source, folder / source.name)
            _mlmodel(source, row, _picked_for(row.filename, picks)).save(str(folder / "MLmodel"))
            client.log_artifacts(tracker.run_id, str(folder), f"models/{row.artifact}")


def _mlmodel(path: Path, row, batches: list[int]):
    """MLflow's model description of one artifact: no flavor (kerakit's runtime loads it), its signature and
    kerakit's figures as metadata."""
    from mlflow.models import Model

    signature, why = _signature(path, row.format)
    return Model(signature=signature, metadata={"kerakit": {
        "artifact": row.artifact, "file": row.filename, "format": row.format, "quantization": row.quantization,
        "verdict": row.verdict, "sha256": row.sha256, "deployment_batch_sizes": batches,
        "figures": {k: v for k, v in row.figures.items() if _number(v)},
        **({"signature_unavailable": why} if why else {})}})


def _signature(path: Path, format_name: str):
    """(ModelSignature, None) from the artifact's own runtime, or (None, why it could not be read)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from kerakit import formats

    try:
        with formats.get(format_name).load(path) as predictor:
            specs = [[TensorSpec(np.dtype(s.dtype), tuple(-1 if d is None else int(d) for d in s.shape), s.name)
                      for s in side] for side in (predictor.inputs, predictor.outputs)]
    except Exception as e:  # noqa: BLE001  (an artifact whose runtime is not here is still registered)
        return None, f"{type(e).__name__}: {str(e)[:200]}"
    return ModelSignature(inputs=Schema(specs[0]), outputs=Schema(specs[1])), None


def _register(tracker: Tracker, name: str, rows: list, picks: dict[int, dict], log) -> None:
    """One version of registered model `name` per verified artifact of this build run, its source the model
    directory `_log_models` wrote; a version already registered from this run for the same file is kept."""
    from mlflow.exceptions import MlflowException

    client = tracker.client()
    try:
        client.create_registered_model(name, description="Verified artifacts of kerakit builds.")
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    existing = {(v.tags.get("kerakit.artifact"), v.tags.get("kerakit.sha256"))
                for v in client.search_model_versions(f"name = '{name}' and run_id = '{tracker.run_id}'")}
    artifact_uri = client.get_run(tracker.run_id).info.artifact_uri
    for row in rows:
        if (row.artifact, row.sha256) in existing:
            continue
        batches = _picked_for(row.filename, picks)
        tags = {"kerakit.artifact": row.artifact, "kerakit.format": row.format,
                "kerakit.quantization": row.quantization, "kerakit.verdict": row.verdict,
                "kerakit.sha256": row.sha256, "kerakit.deployment_batch_sizes": ",".join(map(str, batches)) or "none",
                **{f"kerakit.{k}": _text(v) for k, v in row.figures.items() if _number(v)}}
        version = client.create_model_version(
            name, f"{artifact_uri}/models/{row.artifact}", tracker.run_id, tags=tags,
            description=f"{row.artifact} ({row.filename}): verified"
                        + (f"; deployment.json's pick at batch {', '.join(map(str, batches))}" if batches else ""))
        log(f"Registered {row.artifact} as {name} version {version.version}.")


# --------------------------------------------------------------------------- tune, cv

def trial_started(search: Tracker, folder: Path, trial_id: str, hparams: dict) -> Tracker:
    """A keras-tuner trial as a run nested in the search's, recorded in its trial folder (a resumed trial
    continues it), with its hyperparameters as params."""
    trial = search.child(folder, "trial", f"trial {trial_id}", tags={"kerakit.trial": trial_id})
    trial.params({k: v for k, v in hparams.items() if not k.startswith("tuner/")})
    return trial


def trial_ended(trial: Tracker, status: str, score: float | None) -> None:
    trial.tags({"kerakit.trial.status": status})
    trial.metrics({"score": score} if _number(score) else {})
    trial.end("FINISHED" if status == "COMPLETED" else "FAILED")


def send_search(tracker: Tracker, search: runs.Search, objective: str, best: dict, trials: list[dict]) -> None:
    """A search's record on its run: the tuner's request as params, the best score and hyperparameters, the
    trials table, chart and best_hparams.json as artifacts."""
    if not tracker.on:
        return
    request = files.read_json(search.search_file) if search.search_file.is_file() else {}
    tracker.params({k: request[k] for k in ("tuner", "objective", "direction", "max_epochs", "cv_folds")
                    if request.get(k) is not None})
    tracker.params(request.get("config", {}), what="the search's config")
    scores = [t["score"] for t in trials if t.get("status") == "COMPLETED" and _number(t.get("score"))]
    if scores:
        tracker.metrics({f"best_{objective}": (max if request.get("direction") != "min" else min)(scores),
                         "trials_completed": len(scores)})
    tracker.tags({"kerakit.best_hparams": best})
    tracker.artifacts([search.search_file, search.trials_json, search.trials_csv, search.trials_png,
                       search.best_hparams])


def send_cv(tracker: Tracker, cv: runs.CrossValidation, summary: dict) -> None:
    """A cross-validation's record on its run: folds and scheme as params, the mean and std of the recipe's
    metric over the folds' held-out parts (and on test), each fold's figure at its fold's step; cv.json and
    folds.csv as artifacts."""
    if not tracker.on:
        return
    metric = summary["metric"]
    tracker.params({"folds": summary["folds"], "scheme": summary["scheme"], **summary["request"]["config"]})
    tracker.metrics({f"held_out_{metric}_mean": summary["mean"], f"held_out_{metric}_std": summary["std"],
                     f"test_{metric}_mean": summary["test_mean"], f"test_{metric}_std": summary["test_std"]})
    for row in summary["rows"]:
        tracker.metrics({f"fold_held_out_{metric}": row[f"held_out_{metric}"]}, step=row["fold"])
    tracker.artifacts([cv.cv_file, cv.folds_csv])
