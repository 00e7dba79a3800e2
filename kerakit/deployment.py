"""A run's `deployment.json`: per batch size, the fastest verified artifact on this machine.

    choice = deployment.choose(run, batch=32)   # {"artifact": "model.openvino", "options": {...}, ...}
    path, options = deployment.artifact(run, batch=1)

`kerakit bench RUN` measures every verified artifact of the run under every
runtime setting its format offers and writes the winners here (`write`),
with the machine they were measured on and the figures they beat.
`kerakit serve RUN` and `kerakit.runtime.load(RUN)` read it through `plan`,
which compares the recorded machine (`kerakit.cpu`: model, ISA flags, cores)
with theirs and, where it differs, says so in one line and re-benches within a
bound (`measure_here`) or picks by `rule`, after judging each quantized file again here from the rows its
export stored (`reverify`: an int8 file's answers may depend on the CPU). A run never benched is served
by the rule (`unbenched`). A pick is `decide`d honestly: the
fastest only where its interval excludes the runner-up's, else the simpler.
Only artifacts the export report calls verified, whose files still match the
report's SHA-256, are ever candidates; a format timed on a host that is not its
device (`Format.timing_note`, e.g. TFLite Micro) is not a candidate either.

    table = deployment.plan(run, rebench=True)  # {batch: choice} for this machine
    deployment.choose(run, 1, table)
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from kerakit import cpu, files, formats, runs
from kerakit.errors import KerakitError
from kerakit.measure import StopRule, measure

FIX = "rerun `kerakit bench RUN` to measure it again"


def _verified_rows(run: runs.Run, refused=()) -> dict[str, tuple[Path, formats.Format, str]]:
    """{file name: (path, format, quantization)} of the run's still-verified artifacts that may be deployed here
    (`refused`: those that failed their re-verification on this machine, `reverify`, are not)."""
    from kerakit.export.report import ExportReport

    report = ExportReport.find(run.export_dir)
    return {} if report is None else {row.filename: (report.directory / row.filename, formats.get(row.format),
                                                     row.quantization) for row in _deployable(report, refused)}


def _deployable(report, refused=()) -> list:
    """The report's still-verified rows (each file checked against its SHA-256) that may be deployed here: not a
    format timed on a host that is not its device, nor one `refused` on this machine."""
    return [row for row in report.still_verified()
            if not formats.get(row.format).timing_note and row.filename not in refused]


def candidates(run: runs.Run) -> dict[str, Path]:
    """The run's still-verified exported artifacts that may be deployed here, by file name."""
    return {name: path for name, (path, _, _) in _verified_rows(run).items()}


def machine(cores: int) -> dict:
    """What the choice was measured on (`cores`: those the process may use): the CPU's name, the ISA flags
    that pick kernels (`kerakit.cpu.FLAGS`), the architecture. A reader on another machine says so (`plan`)."""
    here = cpu.describe()
    return {"cpu": here["model"], "flags": here["flags"], "cores": cores, "machine": here["arch"],
            "host": platform.node()}


def write(run: runs.Run, batches: dict[int, dict], rule: dict, cores: int) -> Path:
    """Record the choice per batch size: {batch: {artifact, setting, options, p50_ms, precision, beat}}."""
    return files.write_json(run.deployment, {
        "machine": machine(cores), "stop_rule": rule,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "batches": {str(b): choice for b, choice in sorted(batches.items())},
    })


def read(run: runs.Run) -> dict:
    if not run.deployment.exists():
        raise KerakitError(f"Run {str(run.path)!r} has no {run.deployment.name}: run `kerakit bench {run.path}` "
                           "to pick the fastest verified artifact on this machine, or pass an artifact path.")
    return files.load_json(run.deployment, FIX, ("batches", "machine"))


def choose(run: runs.Run, batch: int | None = None, table: "dict[int, dict] | None" = None) -> dict:
    """The choice for `batch`: that of the largest benched batch size <= batch (the smallest one if none is).

    table: the choices to choose from (`plan`'s, for this machine); by default the recorded ones, as they are."""
    table = table if table is not None else recorded(run)
    below = [b for b in table if batch is not None and b <= batch]
    choice = table[max(below) if below else min(table)]
    path = run.export_dir / choice["artifact"]
    if choice["artifact"] not in candidates(run):
        raise KerakitError(f"{run.deployment} names {choice['artifact']!r}, which is no longer a verified "
                           f"artifact of the run (missing, changed or failed verification); {FIX}.")
    return {**choice, "path": str(path)}


def recorded(run: runs.Run, book: dict | None = None) -> dict[int, dict]:
    """{batch: choice} as deployment.json records them (`book`: deployment.json, where the caller has read it)."""
    table = {int(b): c for b, c in (book or read(run))["batches"].items()}
    if not table:
        raise KerakitError(f"{run.deployment} names no artifact; {FIX}.")
    return table


def by_batch(run: runs.Run, table: "dict[int, dict] | None" = None) -> list[list]:
    """[[batch, path, options, format], ...] for each benched batch size above the smallest whose choice differs
    from the one below it: where a server switches artifact or settings as its batches grow."""
    table = table if table is not None else recorded(run)
    switches, previous = [], None
    for batch in sorted(table):
        choice = choose(run, batch, table)
        key = (choice["artifact"], json.dumps(choice.get("options", {}), sort_keys=True))
        if previous is not None and key != previous:
            switches.append([batch, choice["path"], dict(choice.get("options", {})), choice["format"]])
        previous = key
    return switches


def artifact(run: "runs.Run | str | os.PathLike", batch: int | None = None) -> tuple[Path, dict]:
    """(path, runtime options) of the deployment choice for `batch`."""
    run = run if isinstance(run, runs.Run) else runs.Run(Path(run))
    choice = choose(run, batch)
    return Path(choice["path"]), dict(choice.get("options", {}))


# --------------------------------------------------------------------------- the machine that reads it

REBENCH_S = 10.0  # `kerakit serve RUN --rebench`'s bound: loading, timing and writing the new choice
# Without a measurement (`rule`, and `decide` between figures it cannot tell apart), in this order:
# - float (float16 and bf16 files included: float arithmetic) before integer: int8's speed depends on the CPU (LiteRT int8/fp32 0.51 at batch 1 on the Xeon with
#   AVX-512 VNNI/AMX, 0.98 on the AVX2 EPYC) and an ONNX int8 file's correctness may too (U8S8 saturation
#   without VNNI);
# - no TensorFlow: a SavedModel batch-1 call took 11-27x ONNX Runtime's on the Xeon;
# - a runtime whose threads do not spin-wait between calls (formats without a "spinning" option) before one
#   that does: ONNX Runtime's pool held the cores a server needs (digits_cnn over REST: 1,690 requests/s
#   spinning, 2,800 not; serve/models.py), and at batch 1 its call took 2.0-2.4x verified LiteRT's on the Xeon;
# - then the registry's preference, and the format's own variant order (float, float16, ..., int8).
# Which formats these are is the formats' to say: no name of one is written here.
INTEGER = ("int8", "dynamic")  # quantizations whose kernels do integer arithmetic

def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def plan(run: runs.Run, rebench: "float | bool | None" = None, say: Callable[[str], None] = _say) -> dict[int, dict]:
    """The choices to use on this machine, {batch: choice}: deployment.json's picks where it was measured here.

    Measured on another machine (other ISA flags or architecture, or fewer cores than its picks use), or on an
    unknown one (written before kerakit recorded flags), its picks are not used: `say` gets one line naming
    what differs, then `rebench` (seconds, True = REBENCH_S) times the verified artifacts here and writes
    a new deployment.json, else `rule` chooses without measuring. Before either, each quantized artifact is
    judged again here from the rows its export stored (`reverify`): one that fails is no candidate here, and one
    line each says so with its figure. Another CPU name alone, with the same flags and cores enough, keeps the
    picks (the runtimes choose their kernels by these flags), and says so. A run never benched: `unbenched`.
    """
    if not run.deployment.exists():
        return unbenched(run, rebench, say)
    book = read(run)
    table = recorded(run, book)
    why = differences(book["machine"], cpu.describe(), table)
    if why is None:
        return table
    if why.startswith("CPU "):
        say(f"{run.deployment}: {why}: using its picks (the runtimes choose kernels by these flags)")
        return table
    refused, checked = reverify(run)  # before a re-bench or the rule may pick a quantized file
    return _here(run, sorted(table), rebench, f"{run.deployment}: {why}{checked}", refused, say)


def unbenched(run: runs.Run, rebench: "float | bool | None" = None,
              say: Callable[[str], None] = _say) -> dict[int, dict]:
    """A run never benched (no deployment.json): its quantized files judged again here first (where it was
    exported need not be where it serves), then `rebench` measures batch 1 here (and writes deployment.json),
    else the rule chooses; in one line."""
    refused, checked = reverify(run)
    head = f"{run.path}: no {run.deployment.name} (never benched){checked}"
    return _here(run, [1], rebench, head, refused, say, "nothing measured, so the rule")


def _here(run: runs.Run, batches: list[int], rebench, head: str, refused: dict[str, str], say: Callable[[str], None],
          lead: str = "not its picks but the rule") -> dict[int, dict]:
    """The choices for this machine after `head` (what is known, in words): re-benched here within `rebench`
    seconds, else (or where that fails) the rule's; one line, then one per file `refused` here."""
    table = None
    if rebench:
        seconds = REBENCH_S if rebench is True else float(rebench)
        try:
            table, spent = measure_here(run, batches, seconds, refused)
        except KerakitError as e:
            head = f"{head}; re-bench failed ({e})"
        else:
            picks = ", ".join(f"batch {b}: {c['artifact']} ({c['setting']})" for b, c in sorted(table.items()))
            say(f"{head}; re-benched here in {spent:.1f} s (bound {seconds:g} s): {picks}")
    if table is None:
        table = rule(run, batches, refused)
        say(f"{head}; {_rule_line(table[min(batches)], lead)}")
    _say_refused(run, refused, say)
    return table


def _rule_line(pick: dict, lead: str) -> str:
    return (f"{lead}: {pick['artifact']} ({pick['setting']}) at every batch size (verified, "
            f"float before int8, no TensorFlow, no spin-waiting threads, 1 thread on <= 2 cores); "
            f"`kerakit serve RUN --rebench`, runtime.load(RUN, rebench=True) or `kerakit bench RUN` measures here")


def reverify(run: runs.Run) -> tuple[dict[str, str], str]:
    """Judge the run's still-verified quantized artifacts again on this machine, in their own runtimes, from the
    rows their export stored (`kerakit.export.rows`; no TensorFlow): ({file: why refused here}, a clause naming
    those that passed, with their figures). Cached per machine, so a second load judges nothing again."""
    from kerakit.export.report import ExportReport
    from kerakit.export.rows import reverify as judged_here

    report = ExportReport.find(run.export_dir)
    quantized = [] if report is None else [r for r in _deployable(report) if r.quantization != "none"]
    if not quantized:
        return {}, ""
    found = judged_here(report, quantized)
    refused = {n: r.figure for n, r in found.items() if not r.verified}
    passed = [f"{n} ({r.figure})" for n, r in found.items() if r.verified]
    cached = " (cached)" if found and all(r.cached for r in found.values()) else ""
    return refused, (f"; re-verified here from the export's stored rows{cached}: {', '.join(passed)}" if passed
                     else "")


def _say_refused(run: runs.Run, refused: dict[str, str], say: Callable[[str], None]) -> None:
    for name, why in refused.items():
        say(f"{run.export_dir / name}: refused on this machine, not a candidate here: it fails its re-verification "
            f"from the export's stored rows ({why})")


def differences(then: dict, here: dict, table: dict[int, dict]) -> str | None:
    """What differs between the machine `then` (deployment.json's) and `here` (`cpu.describe()`), in a phrase,
    or None. A phrase starting "CPU " names another model with the same flags and cores enough: not a reason
    to doubt the picks."""
    if "flags" not in then:
        return (f"measured on an unknown machine (CPU {then.get('cpu', '?')!r}, no ISA flags recorded: "
                "benched before kerakit recorded them)")
    found = []
    if then.get("machine") not in (None, here["arch"]):
        found.append(f"architecture {then['machine']} there, {here['arch']} here")
    lost = [f for f in then["flags"] if f not in here["flags"]]
    gained = [f for f in here["flags"] if f not in then["flags"]]
    if lost or gained:
        found.append("ISA flags " + ", ".join([f"-{f}" for f in lost] + [f"+{f}" for f in gained]) + " here")
    used = max(threads_used(c.get("options", {}), int(then.get("cores") or 1)) for c in table.values())
    if here["cores"] < used:
        found.append(f"{here['cores']} core(s) here, its picks use {used}")
    if found:
        return f"measured on another machine ({then.get('cpu', '?')}: {'; '.join(found)})"
    if then.get("cpu") != here["model"]:
        return f"CPU {then.get('cpu')!r} there, {here['model']!r} here, with the same ISA flags and cores enough"
    return None


def threads_used(options: dict, cores: int) -> int:
    """The threads a setting runs on: its explicit count; the runtime's own choice (0, None) or TF's pools: `cores`."""
    threads = options.get("threads")
    return threads if isinstance(threads, int) and threads > 0 else cores


def rule_threads(cores: int) -> int:
    """The thread count the rule runs on: 1 on <= 2 cores (a second thread spin-waits on a shared vCPU: LiteRT's
    kernels ran 14-73x slower at batch 1 on 2 vCPUs), else half the cores, at most 4, leaving the rest to the server."""
    return 1 if cores <= 2 else min(4, cores // 2)


def _rule_rank(fmt: formats.Format, quantization: str) -> tuple:
    """Where an artifact stands in the order chosen without a measurement (see above); lowest first."""
    order = [v.quantization for v in fmt.variants]
    return (quantization in INTEGER, fmt.needs_tensorflow, "spinning" in fmt.runtime_options, fmt.preference,
            order.index(quantization) if quantization in order else len(order))


def rule(run: runs.Run, batches: list[int], refused=()) -> dict[int, dict]:
    """{batch: choice} chosen without measuring (`_rule_rank`: float, no TensorFlow, no spinning threads, the
    registry's order): the same verified artifact at every batch size, with `rule_threads`. Never an unverified
    file, nor one `refused` on this machine (`reverify`)."""
    found = _verified_rows(run, refused)
    if not found:
        raise KerakitError(f"Run {str(run.path)!r} has no verified artifact to deploy here"
                           f"{' (refused on this machine: ' + ', '.join(refused) + ')' if refused else ''}; "
                           f"export it again (`kerakit export {run.path}`).")

    name = min(found, key=lambda n: (*_rule_rank(found[n][1], found[n][2]), n))
    _, fmt, _ = found[name]
    threads = rule_threads(cpu.cores())
    options = fmt.thread_options(threads) if fmt.takes_threads else {}
    choice = {"artifact": name, "format": fmt.name, "options": options, "by": "rule",
              "setting": f"threads={threads}" if options else fmt.fixed_threads}
    return {b: dict(choice) for b in batches}


def settings(fmt: formats.Format, threads: list[int]) -> dict[str, dict]:
    """The runtime settings to compare for one artifact: its format's, else its thread counts, else one."""
    if fmt.settings:
        return fmt.settings(threads)
    if fmt.takes_threads:
        return {f"threads={t}": fmt.thread_options(t) for t in threads}
    return {fmt.fixed_threads: {}}


def measure_here(run: runs.Run, batches: list[int], seconds: float, refused=()) -> tuple[dict[int, dict], float]:
    """A short re-bench: every verified artifact that runs without TensorFlow (whose start alone takes seconds)
    x its settings on 1 and 2 threads (as many as there are cores), per batch size, on random inputs of the
    model's shapes (speed does not depend on the values), stopped at `seconds` after the start; the honest
    picks (`decide`) are written to deployment.json for this machine; `refused` (failed here, `reverify`) are not
    timed. Returns them and the seconds spent."""
    started = time.perf_counter()
    deadline = started + seconds
    threads = sorted({1, min(2, cpu.cores())})
    found = {n: (p, f) for n, (p, f, _) in _verified_rows(run, refused).items() if not f.needs_tensorflow}
    # Thread counts only: the other settings (ONNX's optimization level, OpenVINO's hint) multiply the configurations
    # by 4-6, which a bound of seconds cannot afford; the file's saved default keeps them.
    configs = {(n, k): (p, f, o) for n, (p, f) in found.items()
               for k, o in (settings(f, threads) if not f.settings else
                            {f"threads={t}": f.thread_options(t) for t in threads}).items()}
    if not configs:
        raise KerakitError("no verified artifact that runs without TensorFlow")
    with files.writer(run.path, "kerakit serve --rebench", has_out=False):  # it writes into the run it serves
        predictors = {}
        try:
            for key, (path, fmt, options) in configs.items():
                predictors[key] = fmt.load(path, **options)
            # Timing stops with a tenth of the bound left: closing the sessions and writing the choice take the rest.
            stop = deadline - 0.1 * seconds
            rows, rule_ = _time_here(predictors, batches, (stop - time.perf_counter()) * 0.8, stop)
        finally:
            for p in predictors.values():
                p.close()
        choices = {b: decide(rows[b], configs) for b in batches if rows[b]}
        write(run, choices, {**vars(rule_), "rebench_s": seconds}, cpu.cores())
    return choices, time.perf_counter() - started


def _time_here(predictors: dict, batches: list[int], seconds: float, deadline: float) -> tuple[dict, StopRule]:
    """{batch: {config: stats}}: each batch size its share of the time left, each configuration its share of
    that as its budget, every measurement stopped at its batch size's share of `deadline`."""
    share = max(seconds, 0.0) / max(1, len(predictors) * len(batches))
    rule_ = StopRule(precision=0.05, budget_s=share, max_calls=200, prune=True)
    table = {}
    for i, batch in enumerate(batches):
        inputs = _random_inputs(next(iter(predictors.values())).inputs, batch)
        fitting = {k: p for k, p in predictors.items() if p.fixed_batch in (None, batch)}
        feeds = {k: p.validate(inputs) for k, p in fitting.items()}
        until = time.perf_counter() + (deadline - time.perf_counter()) / (len(batches) - i)
        timed = measure({k: (lambda p=p, f=feeds[k]: p.run(f)) for k, p in fitting.items()}, rule_, warmup=2,
                        deadline=until)
        table[batch] = {k: t.stats(batch) for k, t in timed.items()}
    return table, rule_


def _random_inputs(specs, batch: int) -> dict[str, np.ndarray]:
    """`batch` rows of random inputs of the model's shapes: a latency does not depend on the values."""
    rng, inputs = np.random.default_rng(0), {}
    for s in specs:
        if any(d is None for d in s.shape[1:]):
            raise KerakitError(f"input {s.name!r} has open dimensions; `kerakit bench RUN --input-shape` sizes it")
        shape = (batch, *s.shape[1:])
        inputs[s.name] = np.full(shape, "", object) if s.dtype == "object" else rng.random(shape).astype(s.dtype)
    return inputs


def decide(rows: dict[tuple[str, str], dict], configs: dict) -> dict:
    """The pick among timed configurations {(artifact, setting): stats}: the fastest, where its p50's 95 %
    interval lies wholly below the runner-up's. Otherwise the measurement cannot tell them apart, and the
    simplest of those whose interval overlaps the fastest's wins: fewest threads, then `_rule_rank`, then the
    faster p50; `decided` is False and `tied` names the others. `beat`: every other artifact's best figure."""
    ranked = sorted(rows.items(), key=lambda kv: kv[1]["p50_ms"])
    tied = [kv for kv in ranked if overlap(kv[1], ranked[0][1])]

    def simplicity(kv):
        (artifact, setting), stats = kv
        _, fmt, options = configs[(artifact, setting)]
        threads = threads_used(options, 10**6) if fmt.takes_threads else 10**6
        return (threads, _rule_rank(fmt, _quantization(artifact, fmt)), stats["p50_ms"])

    (artifact, setting), stats = min(tied, key=simplicity) if len(tied) > 1 else ranked[0]
    others: dict[str, dict] = {}
    for (name, k), r in rows.items():
        if name != artifact and (name not in others or r["p50_ms"] < others[name]["p50_ms"]):
            others[name] = {"artifact": name, "setting": k, "p50_ms": r["p50_ms"], "precision": r["precision"],
                            "stopped": r["stopped"], "ratio": round(r["p50_ms"] / stats["p50_ms"], 3)}
    _, fmt, options = configs[(artifact, setting)]
    return {"artifact": artifact, "format": fmt.name, "setting": setting, "options": options, "p50_ms": stats["p50_ms"],
            "precision": stats["precision"], "stopped": stats["stopped"], "interval_ms": stats.get("interval_ms"),
            "throughput_per_s": stats["throughput_per_s"], "decided": len(tied) == 1,
            "tied": [f"{a} ({k})" for (a, k), _ in tied if (a, k) != (artifact, setting)],
            "beat": sorted(others.values(), key=lambda o: o["p50_ms"])}


def overlap(a: dict, b: dict) -> bool:
    """Whether two figures' p50 intervals overlap: the measurement cannot say which is faster."""
    (a_low, a_high), (b_low, b_high) = _interval(a), _interval(b)
    return a_low <= b_high and b_low <= a_high


def _interval(stats: dict) -> tuple[float, float]:
    """A figure's p50 interval in ms; (0, inf) where too few blocks were timed to know one."""
    interval = stats.get("interval_ms")
    return (float(interval[0]), float(interval[1])) if interval else (0.0, float("inf"))


def _quantization(artifact: str, fmt: formats.Format) -> str:
    """An artifact's quantization from its file name (the format's variants name their files)."""
    return next((v.quantization for v in fmt.variants if v.filename == artifact), "none")
