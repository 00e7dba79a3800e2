"""What to serve, and the loaded models: metadata, input checks, inference with dynamic batching.

    entries = resolve("runs/demo")                   # or resolve(model_dir="export/triton")
    model = Model(entries[0], ServeOptions(max_batch=32))
    outputs = await model.infer(model.check({"image": x}, max_elements=10**6))

Nothing here knows a protocol: the protocol modules turn requests into
checked inputs and outputs into responses.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kerakit import formats, runs, runtime
from kerakit.dtypes import NUMPY_TO_V2
from kerakit.errors import KerakitError

# Rows per runtime call: a larger batch runs in slices. ONNX Runtime's memory arena keeps
# its peak for the life of the session (a 15,000-row digits batch left ~420 MB behind;
# 256-row slices, ~13 MB), and the throughput of a slice is already that of a big batch.
RUN_ROWS = 256
# A call expected to take less than this runs on the event loop itself: about what handing a call
# to the inference thread costs the loop here (executor, wake-up, and the GIL handed back and
# forth). digits_cnn (0.08 ms a call) over REST at concurrency 16 served 1,018 requests/s through
# the thread and 1,817 inline. A longer call would hold up every other request.
INLINE_BELOW_S = 0.0003
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
VERSION = "1"


class BadRequest(Exception):
    """A client error: answered with `status` and `{"error": message}`."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class ServeOptions:
    max_body_bytes: int = 4 * 1024 * 1024
    max_elements: int = 1_000_000  # numbers in one request, all inputs together
    max_batch: int = 1             # > 1 turns dynamic batching on
    max_batch_rows: int = 1024     # rows one request may carry (Triton's max_batch_size in /config)
    batch_wait_ms: float = 1.0
    threads: int | None = None     # runtime threads (ONNX/LiteRT); None = the model's tuned default
    log_path: str | None = None
    log_inputs: bool = False
    grpc_address: str | None = None  # "host:port" of the KServe v2 gRPC service; None: no gRPC
    input_shapes: dict = field(default_factory=dict)  # {input: shape} for warming up a dynamic model
    max_queue: int = 256             # inference requests queued or running at once (503/UNAVAILABLE above)
    max_concurrent_rpcs: int = 1024  # gRPC calls in flight (RESOURCE_EXHAUSTED above)
    max_connections: int | None = None  # open connections per listener (HTTP, gRPC); None: no cap
    header_timeout_s: float = 10.0   # a request's headers (a gRPC connection's handshake) arrive within this
    body_timeout_s: float = 10.0     # longest wait between two reads of a request body


@dataclass
class ModelEntry:
    """One model to serve. `format` is its registered format's name: found from `path` here when the
    caller does not know it (a file a user hands in), and carried from here on (to worker processes too)."""

    name: str
    path: str
    version: str = VERSION
    options: dict = field(default_factory=dict)  # runtime settings (a run's deployment choice)
    by_batch: list = field(default_factory=list)  # [[rows, path, options, format], ...]: choices from `rows` rows up
    format: str | None = None
    # Whether the settings `kerakit bench` saved beside the file (runtime.json) apply beneath `options`: not for a
    # run's choice, whose options are whole for this machine (runtime.load(RUN) applies none either; on another
    # machine they are the old machine's).
    tuned: bool = True

    def __post_init__(self):
        if self.format is None:
            self.format = formats.for_path(self.path).name


# --------------------------------------------------------------------------- what to serve

def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name or ""):
        raise KerakitError(f"Invalid model name {name!r}: use letters, digits, '_', '-', '.' "
                           "(at most 128, not starting with '.' or '-').")
    return name


def resolve(source: "str | os.PathLike | None" = None, name: str | None = None,
            model_dir: "str | os.PathLike | None" = None, rebench: "bool | float" = False) -> list[ModelEntry]:
    """The models to serve: one artifact or run, and/or every model of a repository directory.

    A run directory serves its deployment choice for batch 1 (`RUN/deployment.json`, written by
    `kerakit bench RUN`: the fastest verified artifact on this machine, with its settings); measured
    on another machine, one line on stderr says what differs and `rebench` (True, or seconds)
    measures here first, else a rule chooses (`kerakit.deployment.plan`). A run never benched
    is served by the same rule, saying so in one line (`kerakit.deployment.unbenched`).
    A model directory is a Triton/TF Serving layout, NAME/VERSION/{model.onnx,
    model.tflite, saved_model.pb, ...}; the highest numeric version is served.
    """
    entries: list[ModelEntry] = []
    if source is not None:
        entries.append(_source_entry(Path(source), name, rebench))
    elif name is not None:
        raise KerakitError("--name names the model given as ARTIFACT_OR_RUN; with --model-dir, names are directory names.")
    if model_dir is not None:
        entries += discover(model_dir)
    if not entries:
        raise KerakitError("Nothing to serve: pass an artifact or run directory, or --model-dir DIR.")
    seen = set()
    for e in entries:
        if e.name in seen:
            raise KerakitError(f"Two models are named {e.name!r}; rename one (--name).")
        seen.add(e.name)
    return entries


def _source_entry(path: Path, name: str | None, rebench: "bool | float" = False) -> ModelEntry:
    from kerakit import deployment

    options, by_batch, fmt, tuned = {}, [], None, True
    run = runs.Run(path) if path.is_dir() and runs.is_run(path) else None
    if run is not None and (run.deployment.exists() or deployment.candidates(run)):
        # This machine's: the recorded picks, a re-bench's, or the rule's (a run never benched too).
        table = deployment.plan(run, rebench)
        by_batch, choice = deployment.by_batch(run, table), deployment.choose(run, 1, table)
        path, options, fmt, tuned = Path(choice["path"]), dict(choice.get("options", {})), choice["format"], False
    else:
        if run is not None:  # no verified artifact: the float file it has, else one clear line
            path, fmt = _exported_float(run)
        _refuse_unverified(path)  # what deployment.choose checks for a benched run's choice
    if name is None:
        run = runs.find_run(path)
        name = run.config.get("recipe") if run is not None else None
        name = name or (path.stem if path.suffix else path.name)
    return ModelEntry(check_name(name), str(path), options=options, by_batch=by_batch, format=fmt, tuned=tuned)


def _refuse_unverified(path: Path) -> None:
    """An exported artifact, handed in by path or a run's unbenched float choice, is served only while its
    export report still calls it verified, as `serve RUN` serves only such."""
    from kerakit.export.report import why_not_verified

    why = why_not_verified(path)
    if why is not None:
        raise KerakitError(f"Refusing to serve {path}: {why}. Export it again (`kerakit export`), or serve a "
                           "copy of it from outside the export directory to vouch for it yourself.")


def _exported_float(run: runs.Run) -> tuple[Path, str]:
    """A run with no verified artifact: its exported float file of the first format, in the registry's order, that
    has one (served where no export report refuses it), else one line saying none is there."""
    files = [(run.export_dir / f.variant("none").filename, f.name) for f in formats.all_formats()
             if "none" in f.quantizations]
    found = next(((path, fmt) for path, fmt in files if path.exists()), None)
    if found is None:
        raise KerakitError(f"Run {str(run.path)!r} has no exported float model to serve (none of "
                           f"{', '.join(path.name for path, _ in files)} in {run.export_dir}). "
                           f"Run `kerakit export {run.path} --target server` or pass an artifact path.")
    return found


def discover(model_dir: "str | os.PathLike") -> list[ModelEntry]:
    """Every model of a NAME/VERSION/ repository directory, at its highest version that holds one."""
    root = Path(model_dir)
    if not root.is_dir():
        raise KerakitError(f"Model directory {str(root)!r} does not exist.")
    root = root.resolve()
    files = formats.repository_files()
    entries = []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or not NAME_PATTERN.fullmatch(child.name):
            continue
        versions = sorted((v for v in child.iterdir() if v.is_dir() and v.name.isdigit()), key=lambda v: int(v.name))
        for version in reversed(versions):
            found = [version / f for f in files if (version / f).exists()]
            if found:
                fmt = formats.match(version)  # a directory format (saved_model.pb in it), else the preferred file
                model, fmt = (version, fmt) if fmt is not None else (found[0], None)
                if not model.resolve().is_relative_to(root):  # a symlink pointing out of the repository
                    raise KerakitError(f"Model {child.name!r} resolves outside {str(root)!r}; refusing to serve it.")
                entries.append(ModelEntry(child.name, str(model), version.name, format=fmt and fmt.name))
                break
    if not entries:
        raise KerakitError(f"No models in {str(root)!r}: expected NAME/VERSION/model.onnx (or model.tflite, "
                           "model.keras, saved_model.pb), e.g. an export's triton/ or tfserving/ directory.")
    return entries


# --------------------------------------------------------------------------- models at run time

class Model:
    """One loaded model: protocol-free metadata, input checks, inference (optionally batched)."""

    def __init__(self, entry: ModelEntry, options: ServeOptions):
        self.name, self.version, self.path, self.format = entry.name, entry.version, entry.path, entry.format
        fmt = formats.get(entry.format)
        # A runtime whose idle threads would spin-wait between calls is opened without (see below) until its
        # call is timed: a quick model keeps that, and is loaded once.
        probe = _spins(fmt, entry.options)
        self.predictor = _load(self.name, fmt, entry.path, {**entry.options, **({"spinning": False} if probe else {})},
                               options.threads, entry.tuned)
        # A run's deployment may choose another artifact or setting for larger batches: loaded beside it.
        self.routes = [(int(n), _load(self.name, formats.get(f), p, o, options.threads, entry.tuned))
                       for n, p, o, f in sorted(entry.by_batch, key=lambda r: -int(r[0]))]
        self.platform = fmt.triton_platform  # Triton's name, also what v2 metadata reports
        self.inputs = {s.name: s for s in self.predictor.inputs}
        self.outputs = {s.name: s for s in self.predictor.outputs}
        check_servable(self.name, self.predictor)
        self.labels = class_names(entry.path)  # for Triton's classification extension
        self.max_batch = options.max_batch
        self.max_rows = options.max_batch_rows
        self.wait_s = options.batch_wait_ms / 1000
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{self.name}")
        self.lock = threading.Lock()  # one runtime call at a time (a LiteRT interpreter is not thread-safe)
        self.queue: asyncio.Queue | None = None
        self.batch_sizes: list[int] = []  # rows per model call, when batching (for metrics)
        shapes = {k: v for k, v in options.input_shapes.items() if k in self.inputs}
        self.row_s = self._warm_up(shapes, (self.predictor, *(p for _, p in self.routes)))
        if probe and self.row_s >= INLINE_BELOW_S:
            # A quick model's calls run on the event loop's thread: an ONNX Runtime pool thread spinning
            # between them holds the core the loop and the other requests need (digits_cnn over REST at
            # concurrency 16: 1,690 requests/s spinning, 2,800 not). Longer calls spin, which pays inside
            # a call (MobileNetV3-Small at batch 1, 2 threads: 1.24 ms, 2.11 ms not): opened again so.
            self.predictor.close()
            self.predictor = _load(self.name, fmt, entry.path, entry.options, options.threads, entry.tuned)
            self.row_s = self._warm_up(shapes, (self.predictor,))

    def _warm_up(self, shapes: dict, predictors) -> float:
        """Run each predictor once (the first call of every runtime is slow) at a real size, and time the
        batch-1 model's call. A model with open dimensions needs --input-shape: a made-up 1x1 image can break it."""
        try:
            example = runtime.example_inputs(self.predictor.inputs, shapes)
            for predictor in predictors:
                predictor.run(example)
            return _row_seconds(self.predictor, example)
        except KerakitError as e:
            raise KerakitError(f"Cannot serve model {self.name!r}: {e}") from None

    def check(self, batch: dict[str, np.ndarray], max_elements: int,
              missing: frozenset = frozenset()) -> dict[str, np.ndarray]:
        """`batch` validated and cast for this model, or a BadRequest saying what is wrong. NaN is taken in the
        inputs named in `missing`, where it is a missing value (a table model's number columns: serve.tables)."""
        total = sum(int(v.size) for v in batch.values())
        if total > max_elements:
            raise BadRequest(f"Request has {total} numbers; the limit is {max_elements} (--max-elements).", 413)
        try:
            checked = self.predictor.validate(batch)
        except KerakitError as e:
            raise BadRequest(str(e)) from None
        sizes = {len(v) for v in checked.values()}
        if len(sizes) > 1:
            raise BadRequest(f"Inputs have different batch sizes {sorted(sizes)}; all inputs need the same first dimension.")
        if 0 in sizes:
            raise BadRequest("The batch is empty (first dimension 0); send at least one row.")
        if sizes and max(sizes) > self.max_rows:
            raise BadRequest(f"The batch has {max(sizes)} rows; this server takes at most {self.max_rows} "
                             "per request (--max-batch-rows, max_batch_size in /config).", 413)
        for k, v in checked.items():
            if k in missing and np.isinf(v).any():
                raise BadRequest(f"Input {k!r} contains infinity; it takes finite numbers, NaN or null where missing.")
            if v.dtype.kind == "f" and k not in missing and not np.isfinite(v).all():
                raise BadRequest(f"Input {k!r} contains NaN or infinity (after conversion to {v.dtype}); "
                                 "this model takes finite numbers only.")
        return checked

    async def infer(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a checked batch: on the event loop when it is quick (INLINE_BELOW_S, from the batch-1
        call time measured at load), else on the inference thread; with max_batch > 1, merged
        with concurrent requests."""
        loop = asyncio.get_running_loop()
        if self.max_batch <= 1:
            if rows(batch) * self.row_s < INLINE_BELOW_S and self.lock.acquire(blocking=False):
                try:
                    return self._run(batch)
                finally:
                    self.lock.release()
            return await loop.run_in_executor(self.executor, self.run, batch)
        if self.queue is None:
            self.queue = asyncio.Queue()
            self._batcher = loop.create_task(self._batch_loop())
        future = loop.create_future()
        self.queue.put_nowait((batch, future))
        return await future

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        carry = None
        while True:
            first = carry or await self.queue.get()
            carry = None
            items, count = [first], rows(first[0])
            deadline = loop.time() + self.wait_s
            while count < self.max_batch:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), timeout)
                    except asyncio.TimeoutError:
                        break
                if count + rows(item[0]) > self.max_batch or _trailing(item[0]) != _trailing(first[0]):
                    carry = item  # starts the next batch
                    break
                items.append(item)
                count += rows(item[0])
            await self._run_batch(loop, items)

    async def _run_batch(self, loop, items) -> None:
        names = list(items[0][0])
        merged = {k: np.concatenate([b[k] for b, _ in items]) if len(items) > 1 else items[0][0][k] for k in names}
        try:
            out = await loop.run_in_executor(self.executor, self.run, merged)
        except Exception as e:  # noqa: BLE001 - handed to every waiting request
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(e)
            return
        self.batch_sizes.append(rows(merged))
        start = 0
        for batch, fut in items:
            n = rows(batch)
            if not fut.done():  # a client that went away leaves a cancelled future
                fut.set_result({k: v[start:start + n] for k, v in out.items()})
            start += n

    def predictor_for(self, n: int):
        """The predictor for a call of `n` rows: the deployment's choice for the largest batch size <= n."""
        return next((p for rows_from, p in self.routes if n >= rows_from), self.predictor)

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The runtime call, in slices of RUN_ROWS rows (see there) for a larger batch, or of the
        model's fixed batch size (a recurrent model's TFLite file takes one row at a time)."""
        with self.lock:
            return self._run(batch)

    def _run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = rows(batch)
        predictor = self.predictor_for(n)
        step = predictor.fixed_batch or RUN_ROWS
        if n <= step:
            return predictor.run(batch)
        predictor = self.predictor_for(step)
        parts = [predictor.run({k: v[i:i + step] for k, v in batch.items()}) for i in range(0, n, step)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def close(self) -> None:
        self.executor.shutdown(wait=False)
        for predictor in (self.predictor, *(p for _, p in self.routes)):
            predictor.close()


def _load(name: str, fmt: formats.Format, path: str, options: dict, threads: int | None, tuned: bool = True):
    """The model at `path` with its chosen settings; --threads wins (refused for a format without threads).
    tuned: the file's saved settings (runtime.json) beneath them (not for a run's choice: `ModelEntry.tuned`)."""
    return runtime.load(path, format=fmt, tuned=tuned, **{**options, **thread_options(name, fmt, threads)})


def thread_options(name: str, fmt: formats.Format, threads: int | None) -> dict:
    """The runtime options --threads sets for model `name`; one clear error where its format takes no thread count
    (Keras and SavedModel run on TensorFlow's process-wide pools), rather than dropping it."""
    if threads is None:
        return {}
    try:
        return fmt.thread_options(threads)
    except KerakitError as e:
        raise KerakitError(f"Cannot serve model {name!r} with --threads {threads}: {e} Leave --threads out, or "
                           f"serve a format that takes one ({', '.join(formats.with_threads())}).") from None


def check_threads(entries: list[ModelEntry], threads: int | None) -> None:
    """Refuse --threads before anything loads where a model's format takes no thread count."""
    for e in entries:
        thread_options(e.name, formats.get(e.format), threads)


def _spins(fmt: formats.Format, options: dict) -> bool:
    """Whether the runtime's threads would spin-wait between calls (ONNX Runtime's default)."""
    return "spinning" in fmt.runtime_options and options.get("spinning", True)


def _row_seconds(predictor, batch: dict[str, np.ndarray], calls: int = 7) -> float:
    """The median time of a warm call on `batch` (one row), for the inline rule."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        predictor.run(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_servable(name: str, predictor) -> None:
    """Refuse, at start-up, a model with a tensor no protocol here has a datatype for."""
    for kind, specs in (("input", predictor.inputs), ("output", predictor.outputs)):
        for spec in specs:
            if spec.dtype not in NUMPY_TO_V2:
                raise KerakitError(f"Cannot serve model {name!r}: {kind} {spec.name!r} has datatype {spec.dtype}, "
                                   f"which KServe v2 cannot carry; servable: {', '.join(NUMPY_TO_V2.values())}.")


def class_names(path: str) -> list[str] | None:
    """The class names beside a model (labels.txt of its export), for "score:index:label" answers."""
    model = Path(path).resolve()
    run = runs.find_run(model)
    places = [model.parent, model.parent.parent] + ([run.export_dir] if run is not None else [])
    for place in places:
        labels = place / runs.LABELS_FILE
        if labels.is_file():
            return labels.read_text(encoding="utf-8", errors="replace").splitlines()
    return None


def rows(batch: dict[str, np.ndarray]) -> int:
    """The batch size (first dimension) of a dict of arrays."""
    return len(next(iter(batch.values())))


def _trailing(batch: dict) -> tuple:
    return tuple((k, v.shape[1:], v.dtype.str) for k, v in batch.items())
