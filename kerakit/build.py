"""`kerakit build`: the whole job in one call — train (or tune, then train the best),
export and verify for each target, bench every artifact, write the report.

>>> result = kerakit.build.build("digits_cnn", targets=["server", "edge"], out="runs/demo")
>>> result["report"]["html"], result["steps"]

OUT is the run directory (default runs/RECIPE); with `tune=`, the search lives
in OUT/search and its best hyperparameters are trained into OUT. Rerunning on
the same OUT resumes: a finished step whose inputs have not changed is
skipped (training resumes from its last epoch; the search from its last
trial), so only the report is always rewritten.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from kerakit import runs
from kerakit.errors import KerakitError

BENCH_BATCHES = (1, 32)
BENCH_THREADS = (1, 2)
STATE_FILE = "build.json"


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
    from kerakit.recipe import load_recipe

    loaded = load_recipe(recipe)
    out = Path(out) if out else Path("runs") / loaded.name
    targets = [t.strip() for t in targets if t.strip()]
    if not targets:
        raise KerakitError("No export target: pass --target, e.g. server,edge.")
    steps: dict[str, dict] = {}
    total = 4 + bool(tune)
    number = iter(range(1, total + 1))

    def step(name: str, detail: str) -> float:
        log(f"── [{next(number)}/{total}] {name}: {detail}")
        return time.perf_counter()

    def finish(name: str, start: float, status: str) -> None:
        steps[name] = {"status": status, "seconds": round(time.perf_counter() - start, 1)}
        log(f"   {name}: {status} in {steps[name]['seconds']} s")

    hparams = None
    if tune:
        from kerakit.tune import BEST_FILE
        from kerakit.tune import tune as run_search

        start = step("tune", f"{tune}, {max_trials} trials -> {out / 'search'}")
        search = run_search(loaded, out / "search", tuner=tune, max_trials=max_trials, max_epochs=max_epochs,
                            retrain=False, data_dir=data_dir, log=log, **overrides)
        hparams = out / "search" / BEST_FILE
        finish("tune", start, f"best {search.best_hparams}")

    from kerakit.train import train

    start = step("train", f"{loaded.name} -> {out}")
    finished_before = (out / runs.MANIFEST_FILE).exists()
    run = train(loaded, out, hparams=hparams, data_dir=data_dir, log=log, **overrides)
    finish("train", start, "already done" if finished_before else f"{run.metrics.get(loaded.metric, '')} {loaded.metric} on test")

    from kerakit.export import export

    # What export and bench were last run on, so a rerun redoes only what changed.
    state_file = run.path / STATE_FILE
    state = runs.read_json(state_file) if state_file.exists() else {}
    export_key = {"targets": targets, "model_sha256": run.manifest["artifacts"].get(runs.MODEL_FILE)}
    start = step("export", f"targets {', '.join(targets)} -> {run.path / 'export'}")
    if state.get("export") == export_key and (run.path / "export" / "export_report.json").exists():
        finish("export", start, "already done")
    else:
        state.pop("bench", None)
        with _bar("export", log) as (say, advance):
            report = export(run.path, targets=targets, data_dir=data_dir, log=say, progress=advance)
        state["export"] = export_key
        runs.write_json(state_file, state)
        verified = sum(a["verdict"] == "verified" for a in report["artifacts"])
        finish("export", start, f"{verified} of {len(report['artifacts'])} artifacts verified")

    from kerakit.bench import RESULT_FILE
    from kerakit.bench import bench as run_bench

    start = step("bench", f"every artifact at batch {', '.join(map(str, BENCH_BATCHES))}")
    bench_key = {"batches": list(BENCH_BATCHES), "threads": list(BENCH_THREADS), "runs": bench_runs}
    if state.get("bench") == bench_key and (run.path / "bench" / RESULT_FILE).exists():
        finish("bench", start, "already done")
    else:
        with _bar("bench", log) as (say, advance):
            run_bench([run.path], batches=BENCH_BATCHES, threads=BENCH_THREADS, runs_=bench_runs,
                      warmup=max(5, bench_runs // 10), data_dir=data_dir, log=say, progress=advance)
        state["bench"] = bench_key
        runs.write_json(state_file, state)
        finish("bench", start, str(run.path / "bench" / RESULT_FILE))

    from kerakit.report import report as write_report

    start = step("report", f"{run.path / 'report'}")
    written = write_report(run.path, data_dir=data_dir, log=log)
    finish("report", start, f"{len(written['flags'])} flag(s)")
    return {"run": str(run.path), "steps": steps, "report": written, "deployment": written["deployment"]}
