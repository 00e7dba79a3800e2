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
changed: the model, or a target's content as loaded now, not just its name),
so only the report is always rewritten.

An artifact that fails verification fails the build, as it fails `export`:
every step still runs and the report shows the failure, then build raises
`BuildFailed`, a `VerificationFailed` carrying the export's `report` and the
`result` build would have returned.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from kerakit import files, runs, tracking
from kerakit.errors import KerakitError, VerificationFailed

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


class BuildFailed(VerificationFailed):
    """Every step ran, but some artifact failed verification; `result` is what `build` returns otherwise,
    `report` the export's report."""

    def __init__(self, message: str, result: dict, report):
        super().__init__(message, report)
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
    track: bool | None = None,
    register: str | None = None,
    overwrite: bool = False,
    **overrides: Any,
) -> dict:
    """Train (after a `tune` search, if given), export for `targets`, bench, report: all into `out`.

    Returns the run path, each step's status and seconds, the report's paths
    and flags, and the deployment table. track: a parent MLflow run with the
    training nested in it and the steps' figures (`kerakit.tracking`); register:
    each verified artifact a version of that registered model (implies track). overwrite: start over in
    `out` (search and train again) where it holds another request.
    """
    from kerakit.export import resolve_targets
    from kerakit.recipe import load_recipe

    loaded = load_recipe(recipe)
    run = runs.Run(Path(out) if out else Path("runs") / loaded.name)
    targets = resolve_targets(_check_targets(targets))  # a bad or clashing target is refused before training
    _check_tune(tune, max_trials, max_epochs)
    config = loaded.resolve_config(overrides)[0]
    if overwrite:  # train (and tune) start over, as they take it; export and bench follow the new model
        overrides = {**overrides, "overwrite": True}
    with files.writer(run.path, "kerakit build"), \
            tracking.building(run, loaded, config, track, register, log) as tracker:
        return _build(loaded, run, targets, tune, max_trials, max_epochs, bench_runs, data_dir, log, overrides,
                      tracker, register)


def _build(loaded, run: runs.Run, targets: list, tune, max_trials, max_epochs, bench_runs, data_dir, log,
           overrides: dict, tracker=None, register: str | None = None) -> dict:
    steps = _Steps(total=4 + bool(tune), log=log)
    hparams = None
    # Nested in the build's MLflow run; not tracked where the build's tracking is off (said once, by it).
    track = {"track": tracker.on} if tracker is not None and tracker.wanted else {}
    if tune:
        hparams = _tune_step(steps, loaded, run, tune, max_trials, max_epochs, data_dir, log, {**overrides, **track})
    run = _train_step(steps, loaded, run, hparams, data_dir, log, {**overrides, **track})
    # What export and bench were last run on, so a rerun redoes only what changed.
    state = _build_state(run, log)
    exported = _export_step(steps, run, state, targets, data_dir, log)
    _bench_step(steps, run, state, bench_runs, data_dir, log)
    written = _report_step(steps, run, data_dir, log)
    if tracker is not None:
        tracking.send_build(tracker, run, steps.done, register, log)
    result = {"run": str(run.path), "steps": steps.done, "report": written, "deployment": written["deployment"]}
    try:
        exported.raise_for_failures()
    except VerificationFailed as e:
        raise BuildFailed(f"{e} The report shows them: {written['html']}", result, exported) from None
    return result


def _check_tune(tuner: "str | None", max_trials: int, max_epochs: "int | None") -> None:
    """A --tune search's budget, said in build's own options (the search would name `kerakit tune`'s)."""
    from kerakit import tuners

    kind = tuners.TUNERS.get(tuner) if isinstance(tuner, str) else None
    budget = {"max_trials": (max_trials, "--max-trials"), "max_epochs": (max_epochs, "--max-epochs")}
    if kind is not None and budget[kind.budget][0] is None:
        raise KerakitError(f"--tune {kind.name} needs {budget[kind.budget][1]} (the budget that bounds its search).")


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
    finished_before = run.is_finished and not overrides.get("overwrite")  # --overwrite trains it again
    run = train(recipe, run.path, hparams=hparams, data_dir=data_dir, log=log, **overrides)
    steps.finish("train", start, "already done" if finished_before
                 else f"{run.metrics.get(recipe.metric, '')} {recipe.metric} on test")
    return run


def _build_state(run: runs.Run, log) -> dict:
    """What export and bench were last run on (OUT/build.json); {} where there is none, or it cannot be read:
    then both are done again, saying so, as deleting it by hand would have them."""
    if not run.build_state.exists():
        return {}
    try:
        return files.load_json(run.build_state, "exporting and benching again")
    except KerakitError as e:
        log(f"   {e}")
        return {}


def _previous_export(run: runs.Run, log):
    """The last export's report, or None where there is none or it is not a report (exported again then, as
    `kerakit export` would rewrite it)."""
    from kerakit.export.report import ExportReport, NotAReport

    try:
        return ExportReport.find(run.export_dir)
    except NotAReport as e:
        log(f"   export: {e.path.name} is not an export report ({e.why}): exporting again")
        return None


def _export_step(steps: _Steps, run: runs.Run, state: dict, targets: list, data_dir: str | None, log):
    """Export and verify for every target, unless the same model was exported for targets of the same content
    and every artifact is still verified.

    Returns the `ExportReport` (the one on disk when the step is already done).
    """
    from kerakit.export import VerificationFailed, export

    key = {"targets": [t.name for t in targets], "targets_sha256": [_content_sha256(t) for t in targets],
           "model_sha256": run.manifest["artifacts"].get(runs.MODEL_FILE)}
    start = steps.start("export", f"targets {', '.join(t.name for t in targets)} -> {run.export_dir}")
    previous = _previous_export(run, log) if state.get("export") else None
    if previous is not None and state["export"] == key:
        stale = previous.why_not_verified()
        if not stale:
            steps.finish("export", start, "already done")
            return previous
        log(f"   export: {'; '.join(stale.values())}: exporting again")
    elif previous is not None:
        log(f"   export: {_changed(state['export'], key)} since the last export: exporting again")
    state.pop("bench", None)  # new artifacts: their timings are stale
    with _bar("export", log) as (say, advance):
        try:
            report = export(run.path, targets=targets, data_dir=data_dir, log=say, progress=advance)
        except VerificationFailed as e:  # every step still runs; build raises at the end
            report = e.report
    state["export"] = key
    files.write_json(run.build_state, state)
    steps.finish("export", start, f"{len(report.artifacts) - len(report.failed)} of {len(report.artifacts)} "
                                  "artifacts verified")
    return report


def _content_sha256(target) -> str:
    """What a target asks export for (artifacts with their options as applied, tolerances, budget, layouts),
    so that editing export/edge.toml exports again though its name is the same."""
    from kerakit.export import artifact_options

    content = {"description": target.description, "layouts": list(target.layouts),
               "verify": vars(target.verify), "budget": vars(target.budget),
               "artifacts": [{"format": str(a.format), "quantization": a.quantization, "options": artifact_options(a)}
                             for a in target.artifacts]}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def _changed(before: dict, now: dict) -> str:
    """What differs between the export recorded in build.json and the one asked for now."""
    if before.get("model_sha256") != now["model_sha256"]:
        return "the model changed"
    if before.get("targets") != now["targets"]:
        return f"the targets changed ({', '.join(before.get('targets') or [])} -> {', '.join(now['targets'])})"
    if "targets_sha256" not in before:
        return "build.json does not record what the targets held (an older kerakit wrote it)"
    edited = [name for name, old, new in zip(now["targets"], before["targets_sha256"], now["targets_sha256"])
              if old != new]
    return f"target {', '.join(edited) or ', '.join(now['targets'])} changed"


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
    files.write_json(run.build_state, state)
    steps.finish("bench", start, str(run.bench_result))


def _readable(path: Path) -> bool:
    try:
        return isinstance(files.read_json(path).get("rows"), list)
    except (OSError, ValueError, AttributeError):
        return False


def _report_step(steps: _Steps, run: runs.Run, data_dir: str | None, log) -> dict:
    from kerakit.report import report as write_report

    start = steps.start("report", f"{run.report_dir}")
    written = write_report(run.path, data_dir=data_dir, log=log)
    steps.finish("report", start, f"{len(written['flags'])} flag(s)")
    return written
