"""The run, search and cross-validation directory layouts: the one place a run file is named.

A run directory is the hand-off between steps (train -> export -> bench ...).
Every other module asks a `Run` (a `Search`, a `CrossValidation`) for its
paths instead of spelling file names. Each layout below is its table: one
line per file, `attribute = In(name, what it holds)`, read on a directory as
its full path (`Run("runs/demo").model_path`). Nothing else declares a name;
the module constants (`MODEL_FILE`, ...) are read from these tables.

    RUN/                 `kerakit train` (`Run`), then export, bench, report, serve, build add theirs
    OUT/                 `kerakit tune --out OUT`, or RUN/search (`Search`)
    OUT/                 `kerakit cv RECIPE --folds K --out OUT`, or RUN/cv (`CrossValidation`)

How files are written (atomically, under one writer per directory) is
`kerakit.files`, and only there: `files.write_json`, not `runs.write_json`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kerakit import files
from kerakit.errors import KerakitError

# Files of a step's own directory: RUN/export, RUN/bench and RUN/report, or any --out of export, bench or report.
EXPORT_REPORT_FILE = "export_report.json"
LABELS_FILE = "labels.txt"
RUNTIME_SETTINGS_FILE = "runtime.json"  # per artifact directory: the ONNX settings `kerakit bench` found best
BENCH_RESULT_FILE = "bench.json"
BENCH_CHART_FILE = "bench.png"
REPORT_MARKDOWN_FILE = "model_card.md"
REPORT_HTML_FILE = "index.html"
# In a run, a search and a cross-validation directory alike: the MLflow run id of each role (`kerakit.tracking`).
TRACKING_FILE = "mlflow.json"


class In:
    """One line of a layout: a path inside the directory (`parts` joined) and what it holds.

    On the layout class it is itself (`Run.model_path.name`); on a directory, the full path:

        Run("runs/demo").export_report
        # -> PosixPath('runs/demo/export/export_report.json')
    """

    def __init__(self, *parts: "str | In", what: str):
        # An entry inside another (`In(export_dir, EXPORT_REPORT_FILE, ...)`) takes that entry's path.
        self.parts = tuple(p for part in parts for p in (part.parts if isinstance(part, In) else (part,)))
        self.what = what

    @property
    def name(self) -> str:
        """The file's own name (its last part)."""
        return self.parts[-1]

    def __repr__(self) -> str:
        return f"In({'/'.join(self.parts)!r})"

    def __get__(self, directory, layout=None) -> "Path | In":
        return self if directory is None else directory.path.joinpath(*self.parts)


def layout(cls: type) -> dict[str, In]:
    """A layout's table: attribute -> `In`, in declaration order.

        {k: "/".join(v.parts) for k, v in layout(Search).items()}["best_hparams"]
        # -> 'best_hparams.json'
    """
    return {k: v for k, v in vars(cls).items() if isinstance(v, In)}


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
    """A run directory, and every path in it. Every file is written to a temporary name beside its target
    and renamed into place (`kerakit.files`), so a killed process leaves the old file or the new one.

    >>> run = Run("runs/demo")              # e.g. kerakit.train("digits_cnn", "runs/demo")
    >>> run.model_path, run.export_dir
    (PosixPath('runs/demo/model.keras'), PosixPath('runs/demo/export'))
    """

    path: Path

    # `kerakit train`: config.json first, manifest.json last (a run is finished once it exists).
    config_path = In("config.json", what="resolved config and hyperparameters")
    recipe_path = In("recipe.py", what="copy of the recipe file, so the run is self-contained")
    model_path = In("model.keras", what="best model (by the recipe's validation metric)")
    history_path = In("history.csv", what="one row per epoch")
    metrics_path = In("metrics.json", what="test-split metrics")
    data_profile = In("data_profile.json", what="training-split summary that `kerakit drift` compares against")
    manifest_path = In("manifest.json", what="reproducibility record + SHA-256 of the files above")
    logs_dir = In("logs", what="TensorBoard")
    checkpoint_dir = In("checkpoints", what="best checkpoint while training (removed once finished)")
    backup_dir = In("backup", what="BackupAndRestore state while training is unfinished")
    # What later steps add.
    export_dir = In("export", what="`kerakit export`: one file (or SavedModel folder) per artifact, labels.txt, "
                                   "export_report.json, the export's manifest.json, runtime.json (ONNX settings "
                                   "`kerakit bench` found best), tfserving/ and triton/ layouts")
    export_report = In(export_dir, EXPORT_REPORT_FILE, what="the export's typed rows (`kerakit.export.report`)")
    bench_dir = In("bench", what="`kerakit bench`: bench.json, bench.png")
    bench_result = In(bench_dir, BENCH_RESULT_FILE, what="`kerakit bench`: every timing row")
    bench_chart = In(bench_dir, BENCH_CHART_FILE, what="`kerakit bench`: the chart")
    deployment = In("deployment.json", what="`kerakit bench`: per batch size, the fastest verified artifact on "
                                            "this machine and its runtime settings (what `serve RUN`, "
                                            "`runtime.load(RUN)` use)")
    report_dir = In("report", what="`kerakit report`: model_card.md, index.html, figures")
    request_log = In("requests.jsonl", what="`kerakit serve` request log (when serving this run's model)")
    build_state = In("build.json", what="what `kerakit build` last exported and benched (skips them on a rerun)")
    search_dir = In("search", what="`kerakit build --tune`: the search, laid out as a `Search`")
    cv_dir = In("cv", what="`kerakit cv ... --out RUN/cv`: a `CrossValidation`, shown in the report")
    tracking = In(TRACKING_FILE, what="`--track`: the MLflow run ids of this run's training and build")

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

    # Contents.
    @property
    def config(self) -> dict:
        return files.load_json(self.config_path, f"delete {self.path} and train again", ("config", "recipe"))

    @property
    def manifest(self) -> dict:
        return files.load_json(self.manifest_path, "delete it and rerun `kerakit train` with the same --out "
                                              "(it trains the run again)", ("artifacts",))

    @property
    def metrics(self) -> dict:
        return files.load_json(self.metrics_path, f"delete {self.manifest_path} and rerun `kerakit train` with the "
                                             "same --out to evaluate the model again")

    def recipe_assignments(self, names: tuple[str, ...]) -> dict:
        """{name: ast.Assign} of the top-level assignments `names` in the run's copy of its recipe (the last of
        each, as Python would bind it; {} where the copy is missing): read, never run, so that `kerakit serve`
        runs no recipe code to learn a FIT or a table's columns."""
        import ast

        if not self.recipe_path.is_file():
            return {}
        tree = ast.parse(self.recipe_path.read_bytes(), str(self.recipe_path))
        return {target.id: node for node in tree.body if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Name) and target.id in names}

    def recipe(self):
        """The run's own copy of its recipe, under the recipe's name."""
        from kerakit.recipe import load_recipe

        recipe = load_recipe(self.recipe_path)
        recipe.name = self.config.get("recipe", recipe.name)
        # A dataset made from the user's files: the files the run trained on, wherever the command runs from.
        trained_on = (files.read_json(self.manifest_path).get("data", {}).get("source", {}).get("source")
                      if recipe.source is not None and self.manifest_path.exists() else None)
        if trained_on and Path(trained_on).exists():
            recipe.dataset = trained_on
        return recipe

    def verify_artifacts(self) -> dict[str, bool]:
        """Re-hash every artifact listed in the manifest; True where it still matches."""
        return {name: files.intact(self.path / name, digest) for name, digest in self.manifest["artifacts"].items()}

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


def owner(path: str | os.PathLike) -> Path:
    """The directory whose writer lock covers `path`: the run it lies in, else `path` itself."""
    run = find_run(path)
    return run.path if run is not None else Path(path)


@dataclass
class Search:
    """A search directory written by `kerakit tune` (or RUN/search of `kerakit build --tune`).

        result = kerakit.tune("breast_cancer_mlp", "runs/search", max_trials=2)
        search = Search(result.path)
        files.read_json(search.best_hparams) == result.best_hparams, Run.open(search.best_dir).is_finished
        # -> (True, True)
    """

    path: Path

    tuner_dir = In("tuner", what="keras-tuner's project (oracle state, one folder per trial)")
    search_file = In("search.json", what="what this directory is searching (checked on resume)")
    trials_json = In("trials.json", what="every trial: its hyperparameters and score")
    trials_csv = In("trials.csv", what="the same, one row per trial")
    trials_png = In("trials.png", what="the scores, trial by trial")
    best_hparams = In("best_hparams.json", what="the best trial's hyperparameters (kerakit train --hparams ...)")
    best_dir = In("best", what="the best hyperparameters retrained as a normal run")
    distributed_dir = In("distributed", what="chief and worker logs of `--workers N`")
    tracking = In(TRACKING_FILE, what="`--track`: the MLflow run ids of the search and of each trial")

    def __post_init__(self):
        self.path = Path(self.path)

    def __repr__(self) -> str:
        return f"Search({str(self.path)!r})"


FOLD_DIR = "fold-{index}"  # 1-based: CrossValidation.fold_dir(index)


@dataclass
class CrossValidation:
    """A directory written by `kerakit cv` (or RUN/cv): one run per fold (fold-1/ ... fold-K/, each laid out
    as a `Run` and resuming like `kerakit train`), the table, the summary.

        result = kerakit.cross_validate("breast_cancer_mlp", "runs/cv", folds=3)
        cv = CrossValidation(result["path"])
        cv.summary()["mean"] == result["mean"], Run.open(cv.fold_dir(1)).is_finished
        # -> (True, True)
    """

    path: Path

    folds_csv = In("folds.csv", what="one row per finished fold")
    cv_file = In("cv.json", what="the request, then (written last: finished once it has `mean`) the per-fold "
                                 "table and the mean and standard deviation of the recipe's metric")
    tracking = In(TRACKING_FILE, what="`--track`: the MLflow run id of the cross-validation")

    def __post_init__(self):
        self.path = Path(self.path)

    def fold_dir(self, index: int) -> Path:
        """The run of fold `index` (1-based)."""
        return self.path / FOLD_DIR.format(index=index)

    def summary(self) -> dict | None:
        """cv.json of a finished cross-validation (it has a `mean`), else None."""
        if not self.cv_file.is_file():
            return None
        data = files.load_json(self.cv_file, f"delete it and rerun `kerakit cv` with --out {self.path}")
        return data if "mean" in data else None

    def __repr__(self) -> str:
        return f"CrossValidation({str(self.path)!r})"


# The names other modules use where they hold no `Run` (a directory they are about to fill, a glob, a listing):
# read from the tables above, not declared a second time.
MODEL_FILE, CONFIG_FILE, MANIFEST_FILE = Run.model_path.name, Run.config_path.name, Run.manifest_path.name
METRICS_FILE, HISTORY_FILE, RECIPE_FILE = Run.metrics_path.name, Run.history_path.name, Run.recipe_path.name
DATA_PROFILE_FILE, REQUEST_LOG_FILE = Run.data_profile.name, Run.request_log.name
BUILD_STATE_FILE, DEPLOYMENT_FILE = Run.build_state.name, Run.deployment.name
BACKUP_DIR, CHECKPOINT_DIR, LOGS_DIR = Run.backup_dir.name, Run.checkpoint_dir.name, Run.logs_dir.name
EXPORT_DIR, BENCH_DIR, REPORT_DIR = Run.export_dir.name, Run.bench_dir.name, Run.report_dir.name
SEARCH_DIR, CV_DIR = Run.search_dir.name, Run.cv_dir.name
TUNER_DIR, SEARCH_FILE, BEST_HPARAMS_FILE = Search.tuner_dir.name, Search.search_file.name, Search.best_hparams.name
TRIALS_JSON_FILE, TRIALS_CSV_FILE = Search.trials_json.name, Search.trials_csv.name
TRIALS_PNG_FILE, BEST_DIR, DISTRIBUTED_DIR = Search.trials_png.name, Search.best_dir.name, Search.distributed_dir.name
CV_FILE, FOLDS_CSV_FILE = CrossValidation.cv_file.name, CrossValidation.folds_csv.name
