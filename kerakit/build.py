"""`kerakit build`: the whole job in one call — train (or tune, then train the best),
export and verify for each target, bench every artifact, write the report.

    from kerakit.build import build
    result = build("digits_cnn", targets=["server", "edge"], out="runs/demo")
    result["report"]["html"], result["steps"]["export"]["status"]

OUT is the run directory (default runs/RECIPE); with `tune=`, the search lives
in OUT/search and its best hyperparameters are trained into OUT. Rerunning on
the same OUT resumes: a finished step whose inputs have not changed is
skipped (training resumes from its last epoch; the search from its last
trial; export and bench are redone only when OUT/build.json says their inputs
changed), so only the report is always rewritten.

An artifact that fails verification fails the build, as it fails `kerakit
export`: every step still runs and the report shows the failure, then build
raises `BuildFailed` (a KerakitError carrying the result it would have returned).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from kerakit import runs
from kerakit.errors import KerakitError

BENCH_BATCHES = (1, 32)
BENCH_THREADS = (1, 2)


@contextmanager
def _bar(label: str, log: Callable[[str], None]) -> Iterator[tuple[Callable[[str], None], Callable[[int, int], None]]]:
    """A progress bar for a long step, drawn only on a terminal; log lines print above it.

    (Training and tuning draw their own: Keras's epoch bars.)
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console()
    with Progress(TextColumn("   {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(label, total=None)
        say = (lambda m: bar.console.print(m, markup=False, highlight=False, soft_wrap=True)) if log is print else log
        yield say, lambda done, total: bar.update(task, completed=done, total=total)


class BuildFailed(KerakitError):
    """Every step ran, but some artifact failed verification; `result` is what `build` returns otherwise."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


@dataclass
class _Steps:
    """The numbered step lines build prints, and each step's status and seconds."""

    total: int
    log: Callable[[str], None]
    done: dict[str, dict] = field(default_factory=dict)
    started: int = 0

    def start(self, name: str, detail: str) -> float:
        self.started += 1
        self.log(f"── [{self.started}/{self.total}] {name}: {detail}")
        return time.perf_counter()

    def finish(self, name: str, start: float, status: str) -> None:
        self.done[name] = {"status": status, "seconds": round(time.perf_counter() - start, 1)}
        self.log(f"   {name}: {status} in {self.done[name]['seconds']} s")


def build(
    recipe: str,
    targets: Iterable[str] = ("server", "edge"),
    out: "str | os.PathLike | None" = None,
    *,
    tune: str | None = None,
    max_trials: int = 10,
    max_epochs: int | None = None,
    bench_runs: int = 100,
    data_dir: str | None = None,
    log: Callable[[str], None] = print,
    **overrides: Any,
) -> dict:
    """Train (after a `tune` search, if given), export for `targets`, bench, report: all into `out`.

    Returns the run path, each step's status and seconds, the report's paths
    and flags, and the deployment table.
    """
    from kerakit.recipe import load_recipe

    loaded = load_recipe(recipe)
    run = runs.Run(Path(out) if out else Path("runs") / loaded.name)
    targets = _check_targets(targets)
    with runs.writer(run.path, "kerakit build"):
        return _build(loaded, run, targets, tune, max_trials, max_epochs, bench_runs, data_dir, log, overrides)


def _build(loaded, run: runs.Run, targets: list[str], tune, max_trials, max_epochs, bench_runs, data_dir, log,
           overrides: dict) -> dict:
    steps = _Steps(total=4 + bool(tune), log=log)
    hparams = None
    if tune:
        hparams = _tune_step(steps, loaded, run, tune, max_trials, max_epochs, data_dir, log, overrides)
    run = _train_step(steps, loaded, run, hparams, data_dir, log, overrides)
    # What export and bench were last run on, so a rerun redoes only what changed.
    state = (runs.load_json(run.build_state, "delete it; the next build exports and benches again")
             if run.build_state.exists() else {})
    exported = _export_step(steps, run, state, targets, data_dir, log)
    _bench_step(steps, run, state, bench_runs, data_dir, log)
    written = _report_step(steps, run, data_dir, log)
    result = {"run": str(run.path), "steps": steps.done, "report": written, "deployment": written["deployment"]}
    if exported.failed:
        try:
            exported.raise_for_failures()
        except KerakitError as e:
            raise BuildFailed(f"{e} The report shows them: {written['html']}", result) from None
    return result


def _check_targets(targets: Iterable[str]) -> list[str]:
    targets = [t.strip() for t in targets if t.strip()]
    if not targets:
        raise KerakitError("No export target: pass --target, e.g. server,edge.")
    return targets


def _tune_step(steps: _Steps, recipe, run: runs.Run, tuner: str, max_trials: int, max_epochs: int | None,
               data_dir: str | None, log, overrides: dict) -> Path:
    """Search into RUN/search; returns its best_hparams.json for the training step."""
    from kerakit.tune import tune as run_search

    search = runs.Search(run.search_dir)
    start = steps.start("tune", f"{tuner}, {max_trials} trials -> {search.path}")
    result = run_search(recipe, search.path, tuner=tuner, max_trials=max_trials, max_epochs=max_epochs,
                        retrain=False, data_dir=data_dir, log=log, **overrides)
    steps.finish("tune", start, f"best {result.best_hparams}")
    return search.best_hparams


def _train_step(steps: _Steps, recipe, run: runs.Run, hparams: Path | None, data_dir: str | None, log,
                overrides: dict) -> runs.Run:
    from kerakit.train import train

    start = steps.start("train", f"{recipe.name} -> {run.path}")
    finished_before = run.is_finished
    run = train(recipe, run.path, hparams=hparams, data_dir=data_dir, log=log, **overrides)
    steps.finish("train", start, "already done" if finished_before
                 else f"{run.metrics.get(recipe.metric, '')} {recipe.metric} on test")
    return run


def _export_step(steps: _Steps, run: runs.Run, state: dict, targets: list[str], data_dir: str | None, log):
    """Export and verify for every target, unless the same model was exported for the same targets.

    Returns the `ExportReport` (the one on disk when the step is already done).
    """
    from kerakit.export import ExportReport, export

    key = {"targets": targets, "model_sha256": run.manifest["artifacts"].get(runs.MODEL_FILE)}
    start = steps.start("export", f"targets {', '.join(targets)} -> {run.export_dir}")
    if state.get("export") == key and run.export_report.exists():
        previous = ExportReport.read(run.export_dir)
        stale = _stale_artifacts(previous, run.export_dir)
        if not stale:
            steps.finish("export", start, "already done")
            return previous
        log(f"   export: {'; '.join(stale)}: exporting again")
    state.pop("bench", None)  # new artifacts: their timings are stale
    with _bar("export", log) as (say, advance):
        report = export(run.path, targets=targets, data_dir=data_dir, log=say, progress=advance)
    state["export"] = key
    runs.write_json(run.build_state, state)
    steps.finish("export", start, f"{len(report.artifacts) - len(report.failed)} of {len(report.artifacts)} "
                                  "artifacts verified")
    return report


def _stale_artifacts(report, export_dir: Path) -> list[str]:
    """Why an earlier export cannot be reused: a failed artifact, or one missing or changed on disk."""
    stale = []
    for row in report.artifacts:
        path = export_dir / Path(row["path"]).name  # where it is now, if the run was copied or moved
        if row["verdict"] != "verified":
            stale.append(f"{row['artifact']} failed last time")
        elif not path.exists():
            stale.append(f"{path.name} missing")
        elif not runs.intact(path, row.get("sha256")):
            stale.append(f"{path.name} changed since it was verified")
    return stale


def _bench_step(steps: _Steps, run: runs.Run, state: dict, bench_runs: int, data_dir: str | None, log) -> None:
    """Bench every artifact of the run, unless they were benched with the same settings since the export."""
    from kerakit.bench import bench as run_bench

    start = steps.start("bench", f"every artifact at batch {', '.join(map(str, BENCH_BATCHES))}")
    key = {"batches": list(BENCH_BATCHES), "threads": list(BENCH_THREADS), "runs": bench_runs}
    if state.get("bench") == key and _readable(run.bench_result):
        steps.finish("bench", start, "already done")
        return
    with _bar("bench", log) as (say, advance):
        run_bench([run.path], batches=BENCH_BATCHES, threads=BENCH_THREADS, runs_=bench_runs,
                  warmup=max(5, bench_runs // 10), data_dir=data_dir, log=say, progress=advance)
    state["bench"] = key
    runs.write_json(run.build_state, state)
    steps.finish("bench", start, str(run.bench_result))


def _readable(path: Path) -> bool:
    try:
        return isinstance(runs.read_json(path).get("rows"), list)
    except (OSError, ValueError, AttributeError):
        return False


def _report_step(steps: _Steps, run: runs.Run, data_dir: str | None, log) -> dict:
    from kerakit.report import report as write_report

    start = steps.start("report", f"{run.report_dir}")
    written = write_report(run.path, data_dir=data_dir, log=log)
    steps.finish("report", start, f"{len(written['flags'])} flag(s)")
    return written
