"""`kerakit bench`: latency and throughput of artifacts side by side, through the runtime API.

    from kerakit.bench import bench
    result = bench(["runs/demo"], batches=[1, 32], threads=[1, 2])
    result["deployment"]["1"]["artifact"]   # the fastest verified artifact at batch 1: what `serve` runs

For every (batch size, thread count) the artifacts are timed in interleaved
blocks of ten calls, in a random order per round, so machine noise hits them
alike, until each figure's p50 is known within `precision` (95 % bootstrap
over blocks), its time budget is spent, or it made `runs_` calls
(`kerakit.measure`); every figure says the precision it reached. Keras and
SavedModel run on TensorFlow's thread pools and are timed in a pass of their
own, after the others (`_in_passes`). Each call is
timed with `time.perf_counter_ns` around `Predictor.run` on inputs validated
once beforehand, i.e. what a bare runtime loop costs. Inputs come from the
run's test split when the artifacts belong to a run, otherwise random data of
the right specs; the result says which.

The sweep: every runtime setting a format offers (ONNX: optimization level x
threads; OpenVINO: performance hint x threads; LiteRT: threads). For a run
directory it covers every verified artifact of the run at every batch size,
prunes settings that cannot win, and writes the pick per batch size to the
run's deployment.json (`kerakit.deployment.decide`: the fastest where its
interval excludes the runner-up's, else the simpler setting, saying it could
not decide), with this machine's CPU (`kerakit.cpu`); each swept file's best setting
over all batch sizes becomes its own default (runtime.json beside it).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from kerakit import cpu, deployment, files, formats, runs, runtime
from kerakit.errors import KerakitError
from kerakit.measure import StopRule, Timed, measure

BLOCK = 10  # consecutive calls per artifact within a round (time_interleaved)


def expand(paths: Iterable["str | os.PathLike"]) -> list[tuple[Path, formats.Format]]:
    """Artifacts to bench, each with its format (found here, once, and carried from here on): files and
    SavedModels as given; a run directory means its model and every export."""
    found: list[tuple[Path, formats.Format]] = []
    for path in map(Path, paths):
        if path.is_dir() and runs.is_run(path):
            run = runs.Run(path)
            found.append((run.model_path, formats.for_path(run.model_path)))
            if run.export_dir.is_dir():
                found += [(p, fmt) for p in sorted(run.export_dir.iterdir()) if (fmt := formats.match(p)) is not None]
        else:
            found.append((path, formats.for_path(path)))  # a clear error for anything else
    if not found:
        raise KerakitError("Nothing to bench: pass artifact paths or a run directory.")
    return found


def _inputs(artifacts: list[Path], specs: list[runtime.Spec], data_dir: str | None, n: int,
            input_shapes: dict | None = None) -> tuple[dict, str]:
    owners = {None if r is None else r.path for r in map(runs.find_run, artifacts)}
    run = runs.find_run(artifacts[0]) if len(owners) == 1 and None not in owners else None
    if run is not None:
        from kerakit.data import load_data

        recipe = run.recipe()
        x, _ = load_data(recipe, run.config["config"], data_dir).arrays("test")
        reps = -(-n // len(next(iter(x.values()))))
        return {k: np.concatenate([v] * reps)[:n] for k, v in x.items()}, f"test split of {recipe.name} ({run.path})"
    arrays = runtime.example_inputs(specs, input_shapes, n, seed=0)
    shapes = ", ".join(f"{k}={'x'.join(map(str, v.shape[1:]))}" for k, v in arrays.items())
    return arrays, f"random data of the models' input specs ({shapes}; artifacts are not from one run)"


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _open(path: Path, fmt: formats.Format, threads: int) -> runtime.Predictor:
    """Open `path` with `threads` where its format takes a thread count.

    TensorFlow's thread pools are process-wide, set once at start: Keras and
    SavedModel run with what the process has.
    """
    return runtime.load(path, format=fmt, **_threads(fmt, threads))


def _threads(fmt: formats.Format, threads: int) -> dict:
    """The thread option of a format that takes one; {} for one that has no thread setting (bench times it once)."""
    return fmt.thread_options(threads) if fmt.takes_threads else {}


def _stats(samples: "list[int] | Timed", batch: int) -> dict:
    timed = samples if isinstance(samples, Timed) else Timed(samples_ns=list(samples))
    return timed.stats(batch)


def time_interleaved(calls: dict[str, Callable[[], object]], runs_: int, warmup: int,
                     block: int = 1) -> dict[str, list[int]]:
    """Time each callable `runs_` times: `block` calls of each in turn, in a fresh random order each round.

    The order matters: a call right after a TensorFlow one ran up to 25 % slower
    (TF's thread pools keep spinning), so a fixed order would bias whoever follows it.
    Blocks let a multi-threaded session run with its own threads warm instead
    of fighting the spinning threads of the session before it.
    """
    import random

    order = list(calls)
    shuffle = random.Random(0).shuffle
    for _ in range(warmup):
        for call in calls.values():
            call()
    samples: dict[str, list[int]] = {k: [] for k in calls}
    clock = time.perf_counter_ns
    for _ in range(-(-runs_ // block)):
        shuffle(order)
        for key in order:
            call, times = calls[key], samples[key]
            for _ in range(min(block, runs_ - len(times))):
                start = clock()
                call()
                times.append(clock() - start)
    return samples


def bench(
    artifacts: Iterable["str | os.PathLike"],
    *,
    batches: Iterable[int] = (1, 8, 32),
    threads: Iterable[int] = (1, 2),
    runs_: int = 200,
    warmup: int = 20,
    sweep: bool = True,
    precision: float = 0.03,
    budget_s: float = 1.0,
    data_dir: str | None = None,
    out: "str | os.PathLike | None" = None,
    input_shapes: "dict[str, tuple] | None" = None,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Benchmark artifacts side by side; write bench.json and bench.png to `out`.

    runs_: the most timed calls per figure; precision / budget_s: stop a figure
    sooner once its p50 is known within +-precision (95 %), or after budget_s
    seconds of timing. sweep: also compare each artifact's runtime settings
    where its format has some; for a run directory, write its deployment.json.
    progress(done, total) is called after each (threads, batch) round.
    input_shapes: the sizes of dimensions a model leaves open, for random
    inputs ({"image": (1, 64, 64, 3)}); a run's models take its test split instead.
    """
    found = expand(artifacts)
    paths = [path for path, _ in found]
    batches, threads = sorted(set(int(b) for b in batches)), sorted(set(int(t) for t in threads))
    if not batches or min(batches) < 1 or not threads or min(threads) < 1:
        raise KerakitError(f"Invalid --batch {batches} or --threads {threads}: expected positive integers.")
    if not 0 < precision < 1 or budget_s <= 0:
        raise KerakitError(f"Invalid precision={precision} or budget={budget_s}: expected 0 < precision < 1 "
                           "(0.03 = +-3 %) and a positive number of seconds.")
    runtime.check_threads(max(threads))
    run = runs.find_run(paths[0])
    out = Path(out) if out else (run.bench_dir if run else Path("bench-results"))
    files.ensure_writable_dir(out)
    swept = [(path, fmt) for path, fmt in found if sweep and fmt.settings]
    deploy = next((runs.Run(Path(a)) for a in artifacts if sweep and runs.is_run(a)), None)
    rule = StopRule(precision=precision, budget_s=budget_s, max_calls=runs_)
    with contextlib.ExitStack() as locks:  # bench.json's directory, and where swept settings are saved
        for directory in {runs.owner(out).resolve(), *(runs.owner(p.parent).resolve() for p, _ in swept)}:
            locks.enter_context(files.writer(directory, "kerakit bench"))
        return _bench(found, batches, threads, rule, warmup, swept, deploy, data_dir, out, log, progress, input_shapes)


def _bench(found, batches, threads, rule: StopRule, warmup, swept, deploy, data_dir, out: Path, log, progress,
           input_shapes=None) -> dict:
    started = time.perf_counter()
    paths = [path for path, _ in found]
    names = _labels(paths)
    with runtime.load(paths[0], format=found[0][1]) as first:
        specs = first.inputs
    pool, inputs_from = _inputs(paths, specs, data_dir, max(batches), input_shapes)
    log(f"Inputs: {inputs_from}.")

    swept_result, deployed, measured = {}, None, {}
    if deploy is not None:  # first: its figures stand in for the comparison's wherever the settings are the same
        swept_result, deployed, measured = sweep_deployment(deploy, found, pool, batches, threads, rule, warmup, log)
    rows, memory = _compare(dict(zip(names, found)), pool, batches, threads, rule, warmup, log, progress, measured)
    result = {
        "artifacts": {name: str(path) for name, path in zip(names, paths)},
        "inputs_from": inputs_from,
        "batches": batches, "threads": threads, "runs": rule.max_calls, "warmup": warmup,
        "stop_rule": vars(rule),
        "machine": cpu.describe(),
        "rows": rows,
        "load_rss_mb": memory,
        "notes": {r["artifact"]: r["note"] for r in rows if r.get("note")},
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    files.write_json(out / runs.BENCH_RESULT_FILE, result)  # the figures are safe before anything else can fail
    if deploy is not None:
        result["sweep"], result["deployment"] = swept_result, deployed
    elif swept:
        result["sweep"] = {name: sweep_settings(path, fmt, pool, batches, threads, rule, warmup, log)
                           for name, (path, fmt) in zip(names, found) if (path, fmt) in swept}
    result["seconds"] = round(time.perf_counter() - started, 1)
    files.write_json(out / runs.BENCH_RESULT_FILE, result)
    chart(result, out / runs.BENCH_CHART_FILE)
    result["out"] = str(out)
    return result


def _setting_key(path: Path, options: dict) -> tuple[str, str]:
    return str(path.resolve()), json.dumps(options, sort_keys=True)


def _compare(artifacts: dict[str, tuple[Path, formats.Format]], pool: dict, batches: list[int], threads: list[int],
             rule: StopRule, warmup: int, log, progress, measured: dict | None = None) -> tuple[list[dict], dict]:
    """Every artifact at every (threads, batch), interleaved; rows of figures and RSS per loaded model.

    measured: {(path, options): {batch: stats}} already taken by the sweep, reused for the same settings.
    """
    rows, memory = [], {}
    rounds, done = len(threads) * len(batches), 0
    for n_threads in threads:
        predictors, reused = {}, {}
        for name, (path, fmt) in artifacts.items():
            if n_threads != threads[0] and not fmt.takes_threads:
                continue  # one pass is all a format without a thread setting has
            options = {**runtime.tuned_options(path), **_threads(fmt, n_threads)}
            reused[name] = (measured or {}).get(_setting_key(path, options))
            if reused[name] is not None and name in memory:
                continue
            before = rss_mb()
            predictors[name] = _open(path, fmt, n_threads)
            memory.setdefault(name, round(rss_mb() - before, 1))
        try:
            for batch in batches:
                # A model converted for a fixed batch (an LSTM's TFLite file: 1) is timed at that batch only.
                known = {n: r[batch] for n, r in reused.items() if r is not None and batch in r}
                timing = {n: p for n, p in predictors.items() if n not in known and p.fixed_batch in (None, batch)}
                feeds = {name: p.validate({k: v[:batch] for k, v in pool.items()}) for name, p in timing.items()}
                timed = _in_passes({name: (lambda p=p, f=feeds[name]: p.run(f)) for name, p in timing.items()},
                                   {n for n in timing if artifacts[n][1].needs_tensorflow}, rule, warmup)
                new = [_row(name, artifacts[name][1], batch, n_threads,
                            timed[name] if name in timed else known[name]) for name in reused
                       if name in timed or name in known]
                rows += new
                if new:  # none when no artifact has a thread setting to compare
                    log(f"  batch {batch}, threads {n_threads}: "
                        + ", ".join(f"{r['artifact']} {r['p50_ms']:.3f} ms{_pm(r)}" for r in new))
                done += 1
                if progress:
                    progress(done, rounds)
        finally:
            for p in predictors.values():
                p.close()
    return rows, memory


def _in_passes(calls: dict, tensorflow: set, rule: StopRule, warmup: int) -> dict:
    """`measure` the calls on TensorFlow (Keras, SavedModel) in a pass of their own, after the others: interleaved
    with ONNX Runtime and XNNPACK sessions, whose threads spin between calls, a SavedModel batch-1 call was timed
    at 7.6-39 ms against 0.45-0.9 ms in its own pass (Xeon, 2 vCPUs)."""
    timed = {}
    for group in ({k: c for k, c in calls.items() if k not in tensorflow},
                  {k: c for k, c in calls.items() if k in tensorflow}):
        if group:
            timed.update(measure(group, rule, warmup))
    return timed


def _pm(stats: dict) -> str:
    return f" +-{stats['precision']:.0%}" if stats.get("precision") is not None else ""


def _row(name: str, fmt: formats.Format, batch: int, threads: int, timed: "Timed | dict") -> dict:
    """One bench row; a format whose timing is not its device's says so (`Format.timing_note`)."""
    stats = timed if isinstance(timed, dict) else _stats(timed, batch)
    row = {"artifact": name, "format": fmt.name, "batch": batch,
           "threads": threads if fmt.takes_threads else fmt.fixed_threads, **stats}
    return {**row, "note": fmt.timing_note} if fmt.timing_note else row


def _sweep_table(configs: dict[tuple[str, str], tuple[Path, formats.Format, dict]], pool: dict, batches: list[int],
                 rule: StopRule, warmup: int) -> dict[int, dict[tuple[str, str], dict]]:
    """{batch: {(artifact, setting): stats}}: every configuration (path, format, options) timed against the
    others, per batch size."""
    predictors = {}
    try:
        for key, (path, fmt, options) in configs.items():
            predictors[key] = fmt.load(path, **options)
        table = {}
        for batch in batches:
            # A model converted for a fixed batch (an LSTM's TFLite file: 1) is timed at that batch only.
            fitting = {k: p for k, p in predictors.items() if p.fixed_batch in (None, batch)}
            feeds = {k: p.validate({n: v[:batch] for n, v in pool.items()}) for k, p in fitting.items()}
            timed = _in_passes({k: (lambda p=p, f=feeds[k]: p.run(f)) for k, p in fitting.items()},
                               {k for k in fitting if configs[k][1].needs_tensorflow}, rule, warmup)
            table[batch] = {k: _stats(v, batch) for k, v in timed.items()}
    finally:
        for p in predictors.values():
            p.close()
    return table


def _best_setting(table: dict, batches: list[int], configs: dict[str, dict]) -> tuple[str, dict, list[str]]:
    """A file's best setting over all batch sizes: p50 relative to each batch's fastest, summed. Where a setting
    on fewer threads cannot be told from it (their intervals overlap at every batch size), that one: the
    simpler setting wins what the measurement cannot decide. Returns it, the scores and the settings it was
    not told apart from."""
    names = list(configs)
    batches = [b for b in batches if all(k in table[b] for k in names)]  # a fixed-batch file: its batch only
    score = {k: sum(table[b][k]["p50_ms"] / min(table[b][j]["p50_ms"] for j in names) for b in batches) for k in names}
    best = min(score, key=score.get)
    tied = [k for k in names if all(deployment.overlap(table[b][k], table[b][best]) for b in batches)]
    pick = min(tied, key=lambda k: (deployment.threads_used(configs[k], 10**6), score[k]))
    return pick, {k: round(v, 4) for k, v in score.items()}, [k for k in tied if k != pick]


def sweep_settings(path: Path, fmt: formats.Format, pool: dict, batches: list[int], threads: list[int],
                   rule: StopRule, warmup: int, log: Callable[[str], None] = print) -> dict:
    """Every runtime setting the format offers, interleaved; the best becomes the file's default."""
    configs = fmt.settings(threads)
    table = _sweep_table({(path.name, k): (path, fmt, o) for k, o in configs.items()}, pool, batches, rule, warmup)
    table = {b: {k[1]: v for k, v in rows.items()} for b, rows in table.items()}
    return _save_best(path, fmt, configs, table, batches, log)


def _save_best(path: Path, fmt: formats.Format, configs: dict, table: dict, batches: list[int], log) -> dict:
    best, score, tied = _best_setting(table, batches, configs)
    runtime.save_tuned_options(path, configs[best], {"score": score[best], "batches": batches, "tied": tied})
    log(f"  {fmt.name} best for {path.name}: {best} (saved as its default in {runs.RUNTIME_SETTINGS_FILE})"
        + (f"; could not tell it from {', '.join(tied)}: the one on fewest threads wins" if tied else ""))
    return {"configs": {k: {str(b): table[b][k] for b in batches if k in table[b]} for k in configs}, "best": best,
            "best_options": configs[best], "score": score, "decided": not tied, "tied": tied}


def sweep_deployment(run: runs.Run, found: list[tuple[Path, formats.Format]], pool: dict, batches: list[int],
                     threads: list[int], rule: StopRule, warmup: int, log) -> tuple[dict, dict, dict]:
    """Every verified artifact of `run` x every setting, per batch size, pruning losers; writes deployment.json.
    `found`: the artifacts `expand` found (the run's among them), with their formats.

    Returns the per-file sweeps, the choice per batch size, and every figure by (path, options).
    """
    known = {path.resolve(): fmt for path, fmt in found}
    candidates = {name: (path, known[path.resolve()]) for name, path in deployment.candidates(run).items()}
    if not candidates:
        log(f"  no verified artifact in {run.export_dir}: no {run.deployment.name} written")
        return {}, {}, {}
    settings = {name: deployment.settings(fmt, threads) for name, (_, fmt) in candidates.items()}
    configs = {(name, k): (*candidates[name], o) for name, c in settings.items() for k, o in c.items()}
    table = _sweep_table(configs, pool, batches, StopRule(**{**vars(rule), "prune": True}), warmup)
    sweep = {name: _save_best(*candidates[name], settings[name],
                              {b: {k[1]: v for k, v in rows.items() if k[0] == name} for b, rows in table.items()},
                              batches, log)
             for name, (_, fmt) in candidates.items() if fmt.settings}
    choices = {b: deployment.decide(table[b], configs) for b in batches}
    deployment.write(run, choices, vars(rule), runtime.cores())
    for b, c in choices.items():
        log(f"  batch {b}: deploy {c['artifact']} ({c['setting']}) {c['p50_ms']:.3f} ms{_pm(c)}"
            + (f"; {c['beat'][0]['artifact']} next, {c['beat'][0]['ratio']:.2f}x its time" if c["beat"] else "")
            + ("" if c["decided"] else f"; could not tell it from {', '.join(c['tied'])}: the simpler setting"))
    measured = {_setting_key(path, options): {b: table[b][key] for b in batches if key in table[b]}
                for key, (path, _, options) in configs.items()}
    return sweep, {str(b): c for b, c in choices.items()}, measured


def chart(result: dict, path: Path) -> Path:
    """p50 latency by batch size, one line per artifact and thread count (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    series: dict[str, list] = {}
    for r in result["rows"]:
        series.setdefault(f"{r['artifact']} (threads {r['threads']})", []).append((r["batch"], r["p50_ms"]))
    for label, points in sorted(series.items()):
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(result["batches"], [str(b) for b in result["batches"]])
    ax.set_xlabel("batch size")
    ax.set_ylabel("p50 latency per call (ms)")
    ax.set_title("Latency by format and batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _labels(paths: list[Path]) -> list[str]:
    labels = []
    for p in paths:
        label = p.name if p.name != "saved_model.pb" else p.parent.name
        labels.append(label if label not in labels else str(p))
    return labels
