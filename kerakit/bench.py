"""`kerakit bench`: latency and throughput of artifacts side by side, through the runtime API.

    from kerakit.bench import bench
    result = bench(["runs/demo"], batches=[1, 32], threads=[1, 2])
    result["sweep"]["model.onnx"]["best_options"]   # the settings `serve` and `runtime.load` now use

For every (batch size, thread count) the artifacts are timed in interleaved
rounds (ten calls each, in a random order per round), so machine noise hits
them alike. Each call
is timed with `time.perf_counter_ns` around `Predictor.run` on inputs
validated once beforehand, i.e. what a bare runtime loop costs. Inputs come
from the run's test split when the artifacts belong to a run, otherwise random
data of the right specs; the result says which.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from kerakit import formats, runs, runtime
from kerakit.errors import KerakitError

BLOCK = 10  # consecutive calls per artifact within a round


def expand(paths: Iterable["str | os.PathLike"]) -> list[Path]:
    """Artifacts to bench: files/SavedModels as given; a run directory means its model and every export."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir() and runs.is_run(path):
            run = runs.Run(path)
            found.append(run.model_path)
            if run.export_dir.is_dir():
                found += sorted(p for p in run.export_dir.iterdir() if formats.match(p) is not None)
        else:
            formats.for_path(path)  # raises a clear error for anything else
            found.append(path)
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


def _open(path: Path, threads: int) -> runtime.Predictor:
    """Open `path` with `threads` where its format takes a thread count.

    TensorFlow's thread pools are process-wide, set once at start: Keras and
    SavedModel run with what the process has.
    """
    fmt = formats.for_path(path)
    return runtime.load(path, **({"threads": threads} if fmt.takes_threads else {}))


def _stats(samples_ns: list[int], batch: int) -> dict:
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    p50 = round(float(np.percentile(ms, 50)), 4)  # throughput below agrees with the p50 as reported
    return {"p50_ms": p50, "p90_ms": round(float(np.percentile(ms, 90)), 4),
            "p99_ms": round(float(np.percentile(ms, 99)), 4), "mean_ms": round(float(ms.mean()), 4),
            "throughput_per_s": round(batch / (p50 / 1e3), 1), "calls": len(ms)}


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
    data_dir: str | None = None,
    out: "str | os.PathLike | None" = None,
    input_shapes: "dict[str, tuple] | None" = None,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Benchmark artifacts side by side; write bench.json and bench.png to `out`.

    sweep: also compare each artifact's runtime settings where its format has
    some to compare (ONNX: optimization level x threads), and save the fastest
    as that file's default. progress(done, total) is called after each
    (threads, batch) round, for a progress bar. input_shapes: the sizes of
    dimensions a model leaves open, for random inputs ({"image": (1, 64, 64, 3)});
    a run's models take its test split instead.
    """
    paths = expand(artifacts)
    batches, threads = sorted(set(int(b) for b in batches)), sorted(set(int(t) for t in threads))
    if not batches or min(batches) < 1 or not threads or min(threads) < 1:
        raise KerakitError(f"Invalid --batch {batches} or --threads {threads}: expected positive integers.")
    runtime.check_threads(max(threads))
    run = runs.find_run(paths[0])
    out = Path(out) if out else (run.bench_dir if run else Path("bench-results"))
    runs.ensure_writable_dir(out)
    swept = {p for p in paths if sweep and formats.for_path(p).settings}
    with contextlib.ExitStack() as locks:  # bench.json's directory, and where swept settings are saved
        for directory in {runs.owner(out).resolve(), *(runs.owner(p.parent).resolve() for p in swept)}:
            locks.enter_context(runs.writer(directory, "kerakit bench"))
        return _bench(paths, batches, threads, runs_, warmup, swept, data_dir, out, log, progress, input_shapes)


def _bench(paths, batches, threads, runs_, warmup, swept, data_dir, out: Path, log, progress,
           input_shapes=None) -> dict:
    names = _labels(paths)
    with runtime.load(paths[0]) as first:
        specs = first.inputs
    pool, inputs_from = _inputs(paths, specs, data_dir, max(batches), input_shapes)
    log(f"Inputs: {inputs_from}.")

    rows, memory = _compare(dict(zip(names, paths)), pool, batches, threads, runs_, warmup, log, progress)
    result = {
        "artifacts": {name: str(path) for name, path in zip(names, paths)},
        "inputs_from": inputs_from,
        "batches": batches, "threads": threads, "runs": runs_, "warmup": warmup,
        "rows": rows,
        "load_rss_mb": memory,
        "notes": {r["artifact"]: r["note"] for r in rows if r.get("note")},
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    runs.write_json(out / runs.BENCH_RESULT_FILE, result)  # the figures are safe before anything else can fail
    if swept:
        result["sweep"] = {name: sweep_settings(path, pool, batches, threads, runs_, warmup, log)
                           for name, path in zip(names, paths) if path in swept}
        runs.write_json(out / runs.BENCH_RESULT_FILE, result)
    chart(result, out / runs.BENCH_CHART_FILE)
    result["out"] = str(out)
    return result


def _compare(artifacts: dict[str, Path], pool: dict, batches: list[int], threads: list[int], runs_: int,
             warmup: int, log, progress) -> tuple[list[dict], dict]:
    """Every artifact at every (threads, batch), interleaved; rows of figures and RSS per loaded model."""
    rows, memory = [], {}
    rounds, done = len(threads) * len(batches), 0
    for n_threads in threads:
        predictors = {}
        for name, path in artifacts.items():
            if n_threads != threads[0] and not formats.for_path(path).takes_threads:
                continue  # one pass is all a format without a thread setting has
            before = rss_mb()
            predictors[name] = _open(path, n_threads)
            memory.setdefault(name, round(rss_mb() - before, 1))
        try:
            for batch in batches:
                # A model converted for a fixed batch (an LSTM's TFLite file: 1) is timed at that batch only.
                fitting = {n: p for n, p in predictors.items() if p.fixed_batch in (None, batch)}
                feeds = {name: p.validate({k: v[:batch] for k, v in pool.items()}) for name, p in fitting.items()}
                calls = {name: (lambda p=p, f=feeds[name]: p.run(f)) for name, p in fitting.items()}
                samples = time_interleaved(calls, runs_, warmup, block=BLOCK)
                new = [_row(name, p.format, batch, n_threads, samples[name]) for name, p in fitting.items()]
                rows += new
                if new:  # none when no artifact has a thread setting to compare
                    log(f"  batch {batch}, threads {n_threads}: "
                        + ", ".join(f"{r['artifact']} {r['p50_ms']:.3f} ms" for r in new))
                done += 1
                if progress:
                    progress(done, rounds)
        finally:
            for p in predictors.values():
                p.close()
    return rows, memory


def _row(name: str, format_name: str, batch: int, threads: int, samples: list[int]) -> dict:
    """One bench row; a format whose timing is not its device's says so (`Format.timing_note`)."""
    fmt = formats.get(format_name)
    row = {"artifact": name, "format": format_name, "batch": batch,
           "threads": threads if fmt.takes_threads else fmt.fixed_threads, **_stats(samples, batch)}
    return {**row, "note": fmt.timing_note} if fmt.timing_note else row


def sweep_settings(path: Path, pool: dict, batches: list[int], threads: list[int], runs_: int, warmup: int,
                   log: Callable[[str], None] = print) -> dict:
    """Every runtime setting the format offers, interleaved; the best becomes the file's default."""
    fmt = formats.for_path(path)
    configs = fmt.settings(threads)
    predictors = {key: fmt.load(path, **options) for key, options in configs.items()}
    try:
        table = {}
        for batch in batches:
            feeds = {k: p.validate({n: v[:batch] for n, v in pool.items()}) for k, p in predictors.items()}
            samples = time_interleaved({k: (lambda p=p, f=feeds[k]: p.run(f)) for k, p in predictors.items()},
                                       runs_, warmup, block=BLOCK)
            table[batch] = {k: _stats(v, batch) for k, v in samples.items()}
    finally:
        for p in predictors.values():
            p.close()
    # Best = lowest p50 summed over batch sizes relative to each batch's fastest: fair across batch sizes.
    score = {k: sum(table[b][k]["p50_ms"] / min(r["p50_ms"] for r in table[b].values()) for b in batches)
             for k in configs}
    best = min(score, key=score.get)
    runtime.save_tuned_options(path, configs[best], {"score": round(score[best], 4), "batches": batches})
    log(f"  {fmt.name} best for {path.name}: {best} (saved as its default in {runs.RUNTIME_SETTINGS_FILE})")
    return {"configs": {k: {str(b): table[b][k] for b in batches} for k in configs}, "best": best,
            "best_options": configs[best], "score": {k: round(v, 4) for k, v in score.items()}}


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
    with runs.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _labels(paths: list[Path]) -> list[str]:
    labels = []
    for p in paths:
        label = p.name if p.name != "saved_model.pb" else p.parent.name
        labels.append(label if label not in labels else str(p))
    return labels
