"""`make bench`: benchmarks, written as JSON to bench/results/ (foundation, export, inference, serve, tune, data, int8_call).

`python bench/run.py serve` (or foundation / export / tune) runs one section.

Figures are ratios measured within one run (this machine is shared and noisy):

- input_pipeline: training steps/s through the recipe's real tf.data pipeline
  divided by steps/s on one batch held in memory (the limit). Target >= 0.9.
  The two are measured in alternating rounds so noise hits both alike.
- cli_help: wall time of `kerakit --help` (no TensorFlow import). Target < 0.5 s.
- digits_cnn_default: test accuracy and wall time of `kerakit train digits_cnn`
  with defaults. Targets: >= 0.95 in < 120 s.
- export (export.json): for digits_cnn and the edge-style digits_mobilenet
  (MobileNetV3-Small, 96x96): file size of every format relative to float32
  TFLite (target: tflite-int8 <= 0.27x), accuracy change from Keras, export
  wall time. Every artifact is verified as `kerakit export` does.
- inference (inference.json), same two models, p50 latency in interleaved
  rounds: ONNX Runtime (with the settings `kerakit bench` saved, which serve
  uses) vs `keras.Model.predict` (target >= 20x at batch 1) and vs the
  SavedModel signature; those defaults vs the best ONNX setting of the sweep
  (target <= 1.1x); LiteRT int8 vs float32 (target <= 0.6x); the bench
  harness (`Predictor.run`) vs a bare `session.run` loop (target <= 1.03).
  `python bench/run.py inference` runs it alone (digits_mobilenet trained 2 epochs:
  only its shape matters to latency), and first, under "int8_and_wrapper": int8 / fp32
  latency for LiteRT and ONNX Runtime (1 thread each, the four files interleaved
  in one loop, 3 repeats, median and each repeat) at batch 1 and 32 (goal <= 0.7
  for MobileNetV3), and each format's kerakit Predictor call / the bare runtime
  call at batch 1 (LiteRT set_tensor/invoke/get_tensor, with an int8 file's float
  input quantized and its output dequantized in each call as kerakit's call does,
  and "litert_int8_invoke_only" on pre-quantized input; `session.run`; the
  SavedModel signature; goal <= 1.05). "closing_note" lists them with the goals.
- deployment (deployment.json), same two models, after exporting server, edge
  and x86: the wall time of `kerakit bench RUN` as build runs it (goal <= 90 s
  for digits_mobilenet on a quiet machine) with every figure's precision; the
  deployment it wrote; then interleaved in one process: serve's default (the
  batch-1 choice) / the fastest verified configuration, at batch 1 and 32 (goal
  <= 1.10); OpenVINO f32 and bf16 vs ONNX fp32 (same threads); the fastest
  verified artifact's GFLOP/s at batch 32 (MACs from the ONNX graph) over the
  CPU's peak for its kind of work (goal >= 0.5 for MobileNetV3): int8 over the
  VNNI peak, anything else over the widest FMA unit's (see peaks).
- peaks (peaks.json), `python bench/run.py peaks`: bench/peak_probe.c on every core, the widest unit the
  CPU has per kind: fp32 FMA (AVX-512 or AVX2) and int8 VPDPBUSD (AVX512-VNNI or AVX-VNNI).
- serve (serve.json): `kerakit serve` under load on loopback, for both
  models; see bench/serve_load.py. Server overhead per request (HTTP p50 minus
  bare runtime p50, target < 1 ms), requests/s and p50/p99 at concurrency 16
  with and without dynamic batching (target >= 2x with it), errors (target 0);
  under "limits": REST vs a bare Starlette endpoint on the same uvicorn (goal >= 0.7),
  gRPC vs REST (goal >= 1.5 for digits_mobilenet), RSS after 200 requests of 3.8 MB
  (digits_cnn, goal <= 1.5x before), and a profile of the server's event loop.
- int8_call (int8_call.json), `python bench/run.py int8_call`: kerakit's LiteRT int8 call (`Predictor.run`, 1
  thread) over LiteRT's own SetTensor/Invoke/GetTensor on pre-quantized input of an int8-I/O file ("floor"), at
  batch 1 and 32, interleaved, 3 repeats: the edge target's int8 file (float I/O, quantized inside the graph;
  goal <= 1.05) and the int8-I/O file (kerakit quantizing in numpy). digits_cnn and digits_mobilenet (1 epoch;
  KERAKIT_BENCH_MOBILENET=0 skips it). The load average before and after is recorded beside the figures.
- images (images.json), `python bench/run.py images`: the image recipe `kerakit new` writes against the Keras
  transfer-learning guide's plain code on the same generated photos (train/val/test folders), backbone
  (small_cnn, from scratch), epochs (two phases) and seeds (3, alternating): test accuracy difference
  (goal within 1 point) and wall-time ratio kerakit / plain (goal <= 1.1); see bench/images.py.
- data (data.json): preparing generated CSV tables: rows/s against pandas.read_csv, peak RSS flat in the
  file's size while a large CSV streams, training steps/s from the prepared dataset against the same rows
  in memory; see bench/data_prep.py.
- tables (tables.json), `python bench/run.py tables`: the table recipe `kerakit new` writes against gradient
  boosting (kerakit.baselines) on the same test split of seven tables (generated ones with strings and missing
  values, scikit-learn's bundled ones): accuracy difference (goal >= -1 point) and RMSE ratio (goal <= 1.05) on
  the median table; see bench/tables.py.
- tune (tune.json): peak RSS after trial 20 vs after trial 5 of a random
  search (target <= 1.10x); Hyperband vs random search, best val_accuracy
  against epochs spent (target: within 1 point using <= 0.5x the epochs);
  trials per minute with 1 and 2 local workers.
"""

from __future__ import annotations

import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
KERAKIT = str(Path(sys.executable).parent / "kerakit")


def _timed_fit(model, dataset, steps: int) -> float:
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps / (time.perf_counter() - start)


def input_pipeline(recipe_name: str, rounds: int = 9, mock_examples: int | None = None) -> dict:
    import contextlib

    import keras
    import keras_tuner
    import tensorflow_datasets as tfds

    from kerakit.data import load_data
    from kerakit.recipe import load_recipe

    recipe = load_recipe(recipe_name)
    config, _ = recipe.resolve_config({})
    mock = tfds.testing.mock_data(num_examples=mock_examples) if mock_examples else contextlib.nullcontext()
    with mock:
        data = load_data(recipe, config)
        model = recipe.build_model(keras_tuner.HyperParameters(), data)
        steps = max(int(data.train.cardinality()), 200)  # rounds of >= ~1 s, so timer noise stays small
        real = data.train.repeat()
        # The limit: one batch of the same pipeline, cached in memory and repeated
        # (same element spec, so both run the same traced training step).
        memory = data.train.take(1).cache().repeat()
        _timed_fit(model, real, steps)  # warm-up: tracing and filling the cache
        _timed_fit(model, memory, steps)
        pipeline_sps, memory_sps = [], []
        for _ in range(rounds):
            pipeline_sps.append(_timed_fit(model, real, steps))
            memory_sps.append(_timed_fit(model, memory, steps))
    keras.backend.clear_session()
    p, m = statistics.median(pipeline_sps), statistics.median(memory_sps)
    return {
        "recipe": recipe_name,
        "data": f"tfds.testing.mock_data({mock_examples} examples)" if mock_examples else recipe.dataset,
        "batch_size": config["batch_size"],
        "steps_per_round": steps,
        "rounds": rounds,
        "pipeline_steps_per_s": round(p, 2),
        "in_memory_steps_per_s": round(m, 2),
        "ratio": round(p / m, 3),
        "target": ">= 0.9",
        "meets_target": p / m >= 0.9,
    }


def cli_help(repeats: int = 7) -> dict:
    def wall(cmd):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        return time.perf_counter() - start

    wall([KERAKIT, "--help"])
    help_s = statistics.median(wall([KERAKIT, "--help"]) for _ in range(repeats))
    python_s = statistics.median(wall([sys.executable, "-c", "pass"]) for _ in range(repeats))
    return {
        "median_s": round(help_s, 4),
        "bare_python_median_s": round(python_s, 4),
        "ratio_to_bare_python": round(help_s / python_s, 2),
        "repeats": repeats,
        "target": "< 0.5 s",
        "meets_target": help_s < 0.5,
    }


def digits_default() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([KERAKIT, "train", "digits_cnn", "--out", f"{tmp}/run"], check=True, capture_output=True)
        wall = time.perf_counter() - start
        metrics = json.loads(Path(tmp, "run", "metrics.json").read_text())
        manifest = json.loads(Path(tmp, "run", "manifest.json").read_text())
    return {
        "test_accuracy": round(metrics["accuracy"], 4),
        "wall_s": round(wall, 1),
        "epochs_run": manifest["training"]["epochs_run"],
        "target": "accuracy >= 0.95 in < 120 s",
        "meets_target": metrics["accuracy"] >= 0.95 and wall < 120,
    }


EXPORT_FORMATS = ["tflite", "tflite-dynamic", "onnx-dynamic"]  # beside the server and edge targets


def export_sizes(run_path: Path) -> dict:
    from kerakit.export import VerificationFailed, export
    from kerakit.runs import Run

    run = Run.open(run_path)
    start = time.perf_counter()
    try:  # a failed verdict is a figure here (meets_target says so), not the end of the bench
        report = export(run.path, targets=["server", "edge"], formats=EXPORT_FORMATS, log=lambda m: None)
    except VerificationFailed as e:
        report = e.report
    wall = time.perf_counter() - start
    rows = {
        r["artifact"]: {
            "size_bytes": r.get("size_bytes"),
            "size_vs_tflite_fp32": r.get("size_vs_tflite_fp32"),
            "accuracy": r.get("metric"),
            "accuracy_change_points": None if r.get("metric_change") is None else round(100 * r["metric_change"], 2),
            "max_abs_error": r.get("max_abs_error"),
            "export_seconds": r["export_seconds"],
            "verdict": r["verdict"],
        }
        for r in report.artifacts
    }
    int8 = rows["tflite-int8"]["size_vs_tflite_fp32"]
    return {
        "recipe": run.config["recipe"],
        "config": run.config["config"],
        "keras_accuracy": report.keras_metric["value"],
        "artifacts": rows,
        "export_wall_s": round(wall, 1),
        "target": "tflite-int8 <= 0.27x float32 TFLite; accuracy change >= -1 point",
        "meets_target": int8 <= 0.27 and all(r["verdict"] == "verified" for r in rows.values()),
    }


def _p50s(samples: dict) -> dict:
    return {k: float(statistics.median(v)) / 1e6 for k, v in samples.items()}


def inference(run_path: Path, runs_: int = 200) -> dict:
    """ONNX Runtime against keras predict and the SavedModel, tuned vs best ONNX settings,
    LiteRT int8 vs float32, and the bench harness against a bare session.run loop."""
    import keras

    from kerakit import formats, runtime
    from kerakit.bench import bench as bench_artifacts
    from kerakit.bench import time_interleaved
    from kerakit.data import load_data
    from kerakit.runs import Run

    run = Run.open(run_path)
    export_dir = run.export_dir
    onnx_path = export_dir / "model.onnx"
    sweep = bench_artifacts([onnx_path], batches=[1, 32], threads=[1, 2], runs_=runs_, warmup=20,
                            out=run.bench_dir, log=lambda m: None)["sweep"]["model.onnx"]
    x_test, _ = load_data(run.recipe(), run.config["config"]).arrays("test")

    model = keras.saving.load_model(run.model_path)
    onnx_default = runtime.load(onnx_path)  # the settings the sweep saved: what serve uses
    onnx_best = formats.get("onnx").load(onnx_path, **sweep["best_options"])
    onnx_untuned = formats.get("onnx").load(onnx_path)  # without the saved settings
    savedmodel = runtime.load(export_dir / "savedmodel")
    tflite = {q: runtime.load(export_dir / f"model_{q}.tflite", threads=1) for q in ("fp32", "int8")}
    out = {"recipe": run.config["recipe"], "onnx_serve_options": runtime.tuned_options(onnx_path),
           "onnx_sweep_best": sweep["best"], "batches": {}}
    for batch in (1, 32):
        x = {k: v[:batch] for k, v in x_test.items()}
        feed = onnx_default.validate(x)
        single = next(iter(x.values()))
        p50 = {}
        # Each comparison in its own interleaved rounds: only what it compares shares the machine.
        p50.update(_p50s(time_interleaved({
            "keras_predict": lambda: model.predict(single, batch_size=batch, verbose=0),
            "savedmodel": lambda f=savedmodel.validate(x): savedmodel.run(f),
            "onnx_serve_default": lambda: onnx_default.run(feed),
        }, runs_, warmup=10, block=10)))
        p50.update(_p50s(time_interleaved({
            "onnx_default_again": lambda: onnx_default.run(feed),
            "onnx_best": lambda: onnx_best.run(feed),
            "onnx_untuned": lambda: onnx_untuned.run(feed),
        }, runs_ * 3, warmup=20, block=10)))
        p50.update(_p50s(time_interleaved({
            "onnx_harness": lambda: onnx_default.run(feed),
            "onnx_bare_session_run": lambda s=onnx_default.session: s.run(None, feed),
        }, runs_ * 10, warmup=50)))
        p50.update(_p50s(time_interleaved({
            "tflite_fp32": lambda f=tflite["fp32"].validate(x): tflite["fp32"].run(f),
            "tflite_int8": lambda f=tflite["int8"].validate(x): tflite["int8"].run(f),
        }, runs_ * 3, warmup=20, block=10)))
        out["batches"][str(batch)] = {
            "p50_ms": {k: round(v, 4) for k, v in p50.items()},
            "onnx_speedup_vs_keras_predict": round(p50["keras_predict"] / p50["onnx_serve_default"], 1),
            "onnx_speedup_vs_savedmodel": round(p50["savedmodel"] / p50["onnx_serve_default"], 2),
            "serve_default_vs_best_onnx": round(p50["onnx_default_again"] / p50["onnx_best"], 3),
            "untuned_vs_best_onnx": round(p50["onnx_untuned"] / p50["onnx_best"], 3),
            "harness_vs_bare_session_run": round(p50["onnx_harness"] / p50["onnx_bare_session_run"], 3),
            "tflite_int8_vs_fp32": round(p50["tflite_int8"] / p50["tflite_fp32"], 3),
        }
    for p in (onnx_default, onnx_best, onnx_untuned, savedmodel, *tflite.values()):
        p.close()
    b1 = out["batches"]["1"]
    out["targets"] = {
        "onnx >= 20x keras predict at batch 1": b1["onnx_speedup_vs_keras_predict"] >= 20,
        "serve default within 1.1x of best onnx (batch 1 and 32)":
            all(b["serve_default_vs_best_onnx"] <= 1.1 for b in out["batches"].values()),
        "harness overhead <= 1.03 (batch 1 and 32)":
            all(b["harness_vs_bare_session_run"] <= 1.03 for b in out["batches"].values()),
        "tflite int8 <= 0.6x fp32 latency (batch 1)": b1["tflite_int8_vs_fp32"] <= 0.6,
    }
    return out


# --------------------------------------------------------------------------- deployment (issue 15b)
# Kept apart from inference(): the int8 and wrapper figures of the same section live there.

def graph_macs(onnx_path: Path) -> int:
    """Multiply-accumulates of one row, from the ONNX graph: Conv (per output element, Cin/group x kernel)
    and MatMul/Gemm, with shapes from ONNX shape inference at batch 1."""
    import numpy as np
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(onnx_path))
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    graph = shape_inference.infer_shapes(model).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*graph.value_info, *graph.input, *graph.output]}
    shapes.update({t.name: list(numpy_helper.to_array(t).shape) for t in graph.initializer})
    macs = 0
    for node in graph.node:
        if node.op_type == "Conv":
            w, out = shapes[node.input[1]], shapes[node.output[0]]
            macs += int(np.prod(out)) * int(np.prod(w[1:]))  # w: (Cout, Cin/group, kH, kW)
        elif node.op_type in ("MatMul", "Gemm"):  # rows x K x N; a reshape's output may have no static rows: 1
            a, b = shapes.get(node.input[0], []), shapes[node.input[1]]
            macs += int(np.prod([d or 1 for d in a[:-1]])) * int(b[0]) * int(b[-1])
    return macs


PROBES = {  # peak_probe.c's modes, widest first per kind, and the /proc/cpuinfo flags each needs
    "fp32": (("avx512_fma", {"avx512f"}, 16), ("avx2_fma", {"avx2", "fma"}, 8)),
    "int8": (("avx512_vnni", {"avx512f", "avx512_vnni"}, 64), ("avx_vnni", {"avx_vnni"}, 32)),
}


@functools.cache  # measured once per bench run: every model's figure divides by the same peak
def cpu_peaks() -> dict:
    """The CPU's peaks over the cores this process may use, per kind of work: fp32 (the widest FMA unit the CPU
    has: AVX-512 where present, else AVX2) and int8 (VNNI's VPDPBUSD, 512 or 256 bits; none without VNNI),
    measured by bench/peak_probe.c on every core (best of 3) where a C compiler exists, beside the fp32 figure
    computed from /proc/cpuinfo (cores x FMA pipes x lanes x 2 x nominal clock). AMX is not probed."""
    import shutil

    from kerakit import runtime

    from kerakit import cpu

    flags = cpu.all_flags()
    mhz = float(next(l for l in Path("/proc/cpuinfo").read_text().splitlines()
                     if l.startswith("cpu MHz")).split(":", 1)[1])
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fma_pipes = 2 if "fma" in flags else 1  # x86 cores with FMA have two FMA-capable pipes (Zen 2+, Haswell+)
    cores = runtime.cores()
    computed = {"gflops": round(cores * fma_pipes * lanes * 2 * mhz / 1e3, 1),
                "source": f"computed from /proc/cpuinfo: {cores} cores x {fma_pipes} FMA pipes x {lanes} fp32 lanes x 2 "
                          f"x {mhz:.0f} MHz (the nominal clock: boost makes the true peak higher)"}
    compiler = shutil.which("cc") or shutil.which("gcc")
    peaks = {"fp32": {**computed, "measured": None}, "int8": None}
    if compiler is None:
        return peaks
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "peak_probe"
        subprocess.run([compiler, "-O2", "-pthread", str(Path(__file__).with_name("peak_probe.c")), "-o", str(probe)],
                       check=True)
        for kind, modes in PROBES.items():
            mode, _, width = next(((m, f, w) for m, f, w in modes if f <= flags), (None, None, None))
            if mode is None:
                continue
            measured = max(float(subprocess.run([str(probe), mode, str(cores), "100000000"], capture_output=True,
                                                text=True, check=True).stdout) for _ in range(3))
            what = f"{width}-lane FMA chains" if kind == "fp32" else f"VPDPBUSD chains ({width} uint8 x int8 products)"
            peaks[kind] = {"gflops": measured, "mode": mode, "threads": cores,
                           "source": f"measured by bench/peak_probe.c {mode}: {cores} threads of {what}, best of 3"}
    if peaks["fp32"].get("mode"):
        peaks["fp32"]["computed_from_flags"] = computed
    return peaks


def deployment_figures(run_path: Path, runs_: int = 200, export_first: bool = True) -> dict:
    """`kerakit bench RUN` as build runs it (its time, the deployment it writes), then in one process:
    serve's default vs the fastest verified configuration per batch size, OpenVINO f32/bf16 vs ONNX, and
    the achieved GFLOP/s at batch 32 over the CPU's fp32 peak."""
    from kerakit import deployment, formats, runtime
    from kerakit.bench import bench as bench_artifacts
    from kerakit.bench import time_interleaved
    from kerakit.build import BENCH_BATCHES, BENCH_THREADS
    from kerakit.data import load_data
    from kerakit.export import VerificationFailed, export
    from kerakit.runs import Run

    run = Run.open(run_path)
    if export_first:
        try:
            export(run.path, targets=["server", "edge", "x86"], formats=["tflite"], log=lambda m: None)
        except VerificationFailed:
            pass  # the deployment is chosen among the verified artifacts: a failed one is never a candidate
    start = time.perf_counter()
    result = bench_artifacts([run.path], batches=BENCH_BATCHES, threads=BENCH_THREADS, runs_=100, warmup=10,
                             log=lambda m: None)
    bench_s = time.perf_counter() - start
    x_test, _ = load_data(run.recipe(), run.config["config"]).arrays("test")
    from kerakit.serve import ServeOptions, resolve
    from kerakit.serve.models import Model

    # What `kerakit serve RUN` runs: the batch-1 choice, and the deployment's other choices for larger
    # calls (Model.run routes by rows), with serve's runtime settings.
    serve_default = Model(resolve(run.path)[0], ServeOptions())
    ov = {q: formats.get("openvino").load(run.export_dir / n, threads=max(BENCH_THREADS))
          for q, n in (("f32", "model.openvino"), ("bf16", "model_bf16.openvino"))}
    onnx = formats.get("onnx").load(run.export_dir / "model.onnx", threads=max(BENCH_THREADS))
    litert_fp32 = formats.get("tflite").load(run.export_dir / "model_fp32.tflite", threads=1)
    macs = graph_macs(run.export_dir / "model.onnx")
    peaks = cpu_peaks()
    out = {"recipe": run.config["recipe"], "bench_step_s": round(bench_s, 1), "bench_reported_s": result["seconds"],
           "precision": {f"{r['artifact']} b{r['batch']} t{r['threads']}": r["precision"] for r in result["rows"]},
           "p50_ms": {f"{r['artifact']} b{r['batch']} t{r['threads']}": r["p50_ms"] for r in result["rows"]},
           "deployment": {b: {k: c[k] for k in ("artifact", "setting", "p50_ms", "precision")}
                          for b, c in result["deployment"].items()},
           "machine": deployment.machine(runtime.cores()), "macs_per_row": macs, "peaks": peaks,
           "openvino_precision_run": {q: p.precision for q, p in ov.items()}, "batches": {}}
    for batch in BENCH_BATCHES:
        x = {k: v[:batch] for k, v in x_test.items()}
        fastest = runtime.load(run.path, batch=batch)  # the fastest verified configuration at this batch size
        calls = {"serve_default": serve_default, "fastest_verified": fastest, "openvino_f32": ov["f32"],
                 "openvino_bf16": ov["bf16"], "onnx": onnx, "litert_fp32": litert_fp32}
        feeds = {k: (p.predictor if k == "serve_default" else p).validate(x) for k, p in calls.items()}
        p50 = _p50s(time_interleaved({k: (lambda p=p, f=feeds[k]: p.run(f)) for k, p in calls.items()},
                                     runs_ * 2, warmup=20, block=10))
        fastest.close()
        out["batches"][str(batch)] = {
            "p50_ms": {k: round(v, 4) for k, v in p50.items()},
            "serve_default_vs_fastest_verified": round(p50["serve_default"] / p50["fastest_verified"], 3),
            "openvino_f32_vs_onnx": round(p50["openvino_f32"] / p50["onnx"], 3),
            "openvino_bf16_vs_onnx": round(p50["openvino_bf16"] / p50["onnx"], 3),
            "fastest_verified_vs_litert_fp32": round(p50["fastest_verified"] / p50["litert_fp32"], 3),
            "fastest_gflops": round(2 * macs * batch / (p50["fastest_verified"] / 1e3) / 1e9, 1),
        }
    for p in (serve_default, onnx, litert_fp32, *ov.values()):
        p.close()
    out.update(_fraction_of_peak(out["batches"].get("32", {}), result["deployment"].get("32", {}), peaks))
    out["goals"] = {
        "serve default / fastest verified <= 1.10 (b1 and b32)":
            all(b["serve_default_vs_fastest_verified"] <= 1.10 for b in out["batches"].values()),
        "fastest verified at b32 >= 0.5 of its kind's peak (MobileNetV3)": out["fraction_of_peak_b32"] >= 0.5,
        "fastest verified / LiteRT fp32 (1 thread) at b32 <= 0.85 (MobileNetV3, a VNNI CPU)":
            b32_ratio(out) <= 0.85,
        "bench step <= 90 s (digits_mobilenet, quiet machine)": bench_s <= 90,
    }
    return out


def b32_ratio(out: dict) -> float:
    return out["batches"].get("32", {}).get("fastest_verified_vs_litert_fp32", float("inf"))


def _fraction_of_peak(b32: dict, pick: dict, peaks: dict) -> dict:
    """The fastest verified artifact's rate at batch 32 over the peak of the work it does, on as many cores as
    the pick uses (a 1-thread pick against one core's share of the peak): an int8 file's multiply-adds over the
    int8 (VNNI) peak where the CPU has one, every other file's over the fp32 peak."""
    int8 = "int8" in str(pick.get("artifact", "")) and peaks.get("int8")
    peak = peaks["int8"] if int8 else peaks["fp32"]
    cores = peak.get("threads") or 1
    found = re.search(r"threads=(\d+)", str(pick.get("setting", "")))
    used = min(int(found.group(1)), cores) if found else cores
    share = peak["gflops"] * used / cores
    return {"fraction_of_peak_b32": round(b32.get("fastest_gflops", 0) / share, 3),
            "fraction_of_peak_b32_against": f"{'int8' if int8 else 'fp32'} peak {round(share, 1)} G(FL)OP/s on "
                                            f"{used} of {cores} cores ({pick.get('artifact', '?')} "
                                            f"{pick.get('setting', '')} is the b32 pick)"}


# --------------------------------------------------------------------------- int8 and wrapper (issue 15a)

def _lite_bare(path: Path, x: np.ndarray, quantize_each_call: bool = True):
    """What a user writes against LiteRT: one interpreter sized for this batch, set/invoke/get. For a
    file with int8 I/O the user's float input is quantized, and the output dequantized, in each call
    with the plain numpy expressions (the work kerakit's call does); with `quantize_each_call=False`
    the input is quantized once and the raw int8 output returned: the floor of the runtime itself."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    (scale, zero_point), (out_scale, out_zero) = inp["quantization"], out["quantization"]
    if inp["dtype"] == np.float32 or not scale:
        quantize = dequantize = None
    else:
        info = np.iinfo(inp["dtype"])

        def quantize(v):
            return np.clip(np.round(v / scale + zero_point), info.min, info.max).astype(inp["dtype"])

        def dequantize(q):
            return (q.astype(np.float32) - out_zero) * out_scale
    if quantize is None or not quantize_each_call:
        fixed = x if quantize is None else quantize(x)

        def call():
            interpreter.set_tensor(inp["index"], fixed)
            interpreter.invoke()
            return interpreter.get_tensor(out["index"])
        return call

    def call_quantized():
        interpreter.set_tensor(inp["index"], quantize(x))
        interpreter.invoke()
        return dequantize(interpreter.get_tensor(out["index"]))
    return call_quantized


def _ratio_repeats(calls: dict, pairs: dict, repeats: int, seconds: float, block: int) -> dict:
    """p50(a) / p50(b) for each pair (a, b) of `calls`, measured `repeats` times in interleaved blocks."""
    from kerakit.bench import time_interleaved

    for call in calls.values():  # warm, and size the runs to ~`seconds` for all the calls together
        call()
    start = time.perf_counter()
    for call in calls.values():
        call()
    runs_ = max(3 * block, min(2000, int(seconds / max(time.perf_counter() - start, 1e-6))))
    ratios: dict[str, list[float]] = {name: [] for name in pairs}
    for _ in range(repeats):
        p50 = _p50s(time_interleaved(calls, runs_, warmup=block, block=block))
        for name, (a, b) in pairs.items():
            ratios[name].append(p50[a] / p50[b])
    return {name: {"median": round(statistics.median(r), 3), "repeats": [round(v, 3) for v in r]}
            for name, r in ratios.items()} | {"runs_per_repeat": runs_}


def int8_and_wrapper(run_path: Path, repeats: int = 3) -> dict:
    """int8/fp32 latency per runtime and batch (LiteRT and ONNX Runtime, 1 thread each, all four files
    interleaved in one loop), and each format's kerakit Predictor call over the bare runtime call at batch 1
    and 32."""
    import tensorflow as tf

    from kerakit import formats
    from kerakit.data import load_data
    from kerakit.runs import Run

    run = Run.open(run_path)
    out_dir = run.export_dir
    x_test, _ = load_data(run.recipe(), run.config["config"]).arrays("test")
    files = {"litert_fp32": out_dir / "model_fp32.tflite", "litert_int8": out_dir / "model_int8.tflite",
             "onnx_fp32": out_dir / "model.onnx", "onnx_int8": out_dir / "model_int8.onnx"}
    predictors = {k: formats.get("tflite" if k.startswith("litert") else "onnx").load(p, threads=1)
                  for k, p in files.items()}
    result = {"recipe": run.config["recipe"], "threads": 1, "int8_vs_fp32": {}}
    for batch in (1, 32):
        x = {k: v[:batch] for k, v in x_test.items()}
        feeds = {k: p.validate(x) for k, p in predictors.items()}
        calls = {k: (lambda p=p, f=feeds[k]: p.run(f)) for k, p in predictors.items()}
        result["int8_vs_fp32"][str(batch)] = _ratio_repeats(
            calls, {"litert": ("litert_int8", "litert_fp32"), "onnx": ("onnx_int8", "onnx_fp32")},
            repeats, seconds=4.0, block=10 if batch == 1 else 3)
    savedmodel = formats.get("savedmodel").load(out_dir / "savedmodel")
    signature = tf.saved_model.load(str(out_dir / "savedmodel")).signatures["serving_default"]
    for batch in (1, 32):
        x = {k: v[:batch] for k, v in x_test.items()}
        result[f"wrapper_vs_bare_batch{batch}"] = _wrapper_vs_bare(predictors, files, savedmodel, signature, x, repeats)
    for p in (*predictors.values(), savedmodel):
        p.close()
    return result


def _wrapper_vs_bare(predictors: dict, files: dict, savedmodel, signature, x: dict, repeats: int) -> dict:
    """Each format's kerakit call over the bare runtime call on the batch `x`; for LiteRT also over LiteRT's own
    call on kerakit's interpreter, and one fresh interpreter over another (what instances alone differ by)."""
    import tensorflow as tf

    single, feeds = next(iter(x.values())), {k: p.validate(x) for k, p in predictors.items()}
    block = 20 if len(single) == 1 else 3
    bare = {"litert_fp32": _lite_bare(files["litert_fp32"], single), "litert_int8": _lite_bare(files["litert_int8"], single),
            "litert_int8_invoke_only": _lite_bare(files["litert_int8"], single, quantize_each_call=False),
            "onnx_fp32": lambda s=predictors["onnx_fp32"].session, f=feeds["onnx_fp32"]: s.run(None, f),
            "onnx_int8": lambda s=predictors["onnx_int8"].session, f=feeds["onnx_int8"]: s.run(None, f),
            "savedmodel": lambda f=savedmodel.validate(x): {k: v.numpy() for k, v in signature(
                **{n: tf.constant(a) for n, a in f.items()}).items()}}
    out = {}
    for name, call in bare.items():
        predictor = savedmodel if name == "savedmodel" else predictors[name.replace("_invoke_only", "")]
        feed = predictor.validate(x)
        calls, pairs = {"kerakit": lambda p=predictor, f=feed: p.run(f), "bare": call}, {"ratio": ("kerakit", "bare")}
        if name in ("litert_fp32", "litert_int8"):  # LiteRT's own call on kerakit's interpreter, and on two fresh ones
            predictor.run(feed)
            own = predictor._sized[tuple(feed[k].shape for k in predictor._names)].interpreter  # noqa: SLF001
            calls.update(floor_own=_lite_floor(files[name], single, interpreter=own),
                         floor_a=_lite_floor(files[name], single), floor_b=_lite_floor(files[name], single))
            pairs.update(own_interpreter=("kerakit", "floor_own"), fresh_interpreters=("floor_b", "floor_a"))
        ratios = _ratio_repeats(calls, pairs, repeats, seconds=1.5, block=block)
        out[name] = {**ratios["ratio"], **{k: ratios[k] for k in pairs if k != "ratio"}}
    return out


def _int8_goals(models: list[dict]) -> list[str]:
    """The closing note: each figure with its goal."""
    lines = []
    for m in models:
        for batch, ratios in m["int8_vs_fp32"].items():
            for runtime_ in ("litert", "onnx"):
                goal = "goal <= 0.7" if m["recipe"] == "digits_mobilenet" else "no goal (small CNN)"
                lines.append(f"{m['recipe']} {runtime_} int8/fp32 batch {batch}: {ratios[runtime_]['median']} "
                             f"(repeats {ratios[runtime_]['repeats']}; {goal})")
        for name, r, batch in [(n, r, b) for b in (1, 32) for n, r in m.get(f"wrapper_vs_bare_batch{b}", {}).items()]:
            goal = ("against set/invoke/get alone on pre-quantized input: the runtime's floor" if name.endswith("_invoke_only")
                    else "goal <= 1.05")
            if "own_interpreter" in r:  # LiteRT: the goal is judged on the bare call over kerakit's own interpreter
                own, fresh = r["own_interpreter"], r["fresh_interpreters"]
                goal += (f"; on kerakit's own interpreter {own['median']} (repeats {own['repeats']}); a second "
                         f"fresh interpreter / the first {fresh['median']} (repeats {fresh['repeats']})")
            lines.append(f"{m['recipe']} {name} kerakit/bare batch {batch}: {r['median']} (repeats {r['repeats']}; {goal})")
    return lines


# --------------------------------------------------------------------------- int8 through kerakit (issue 28)

def _lite_floor(path: Path, x: np.ndarray, interpreter=None):
    """LiteRT's own call and nothing else: SetTensor/Invoke/GetTensor on the interpreter's wrapper, the input
    already in the file's input type (quantized once, outside the timing).

    `interpreter`: drive this one (already allocated for x's shape: kerakit's own) instead of a new one, so
    that a ratio to kerakit's call is what kerakit's Python adds, not where two interpreters' buffers fell in
    memory: two fresh interpreters of one file in one process time apart by a few % (`fresh_interpreters`)."""
    from ai_edge_litert.interpreter import Interpreter

    if interpreter is None:
        interpreter = Interpreter(model_path=str(path), num_threads=1)
        interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], x.shape)
        interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero_point = inp["quantization"]
    if inp["dtype"] != np.float32 and scale:
        info = np.iinfo(inp["dtype"])
        x = np.clip(np.rint(x / scale + zero_point), info.min, info.max).astype(inp["dtype"])
    wrapper, i, o = interpreter._interpreter, inp["index"], out["index"]

    def call():
        wrapper.SetTensor(i, x, 0)
        wrapper.Invoke(0)
        return wrapper.GetTensor(o, 0)
    return call


def int8_call(run_path: Path, repeats: int = 3) -> dict:
    """kerakit's LiteRT int8 call over LiteRT's own call on an int8-I/O file, at batch 1 and 32, interleaved:
    the edge target's file (float I/O: QUANTIZE/DEQUANTIZE inside the graph) and the int8-I/O file
    (`--format tflite-int8`, kerakit (de)quantizing in numpy per call)."""
    from kerakit import formats
    from kerakit.data import load_data
    from kerakit.export import export
    from kerakit.runs import Run

    from kerakit.export import VerificationFailed

    run = Run.open(run_path)
    x_test, _ = load_data(run.recipe(), run.config["config"]).arrays("test")
    files, verdicts = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for io in ("int8", "float32"):
            target = Path(tmp) / f"int8_{io}.toml"
            target.write_text(f'[[artifacts]]\nformat = "tflite"\nquantization = "int8"\nio = "{io}"\n')
            try:  # a briefly trained model's int8 may fail its metric; its timing is what is measured here
                report = export(run.path, targets=[str(target)], out=Path(tmp) / io, log=lambda m: None)
            except VerificationFailed as e:
                report = e.report
            files[io] = Path(tmp) / io / "model_int8.tflite"
            verdicts[io] = next(r["verdict"] for r in report.artifacts)
        result = {"recipe": run.config["recipe"], "threads": 1, "verdicts_by_io": verdicts,
                  "load_average_before": os.getloadavg(), "batches": {}}
        for batch in (1, 32):
            x = {k: v[:batch].astype(np.float32) for k, v in x_test.items()}
            single = next(iter(x.values()))
            loaded = {io: formats.get("tflite").load(path, threads=1) for io, path in files.items()}
            feeds = {io: p.validate(x) for io, p in loaded.items()}
            calls = {"kerakit_float_io": lambda: loaded["float32"].run(feeds["float32"]),
                     "kerakit_int8_io": lambda: loaded["int8"].run(feeds["int8"]),
                     "floor_int8_io": _lite_floor(files["int8"], single),
                     "floor_float_io": _lite_floor(files["float32"], single),
                     "bare_int8_io_numpy": _lite_bare(files["int8"], single)}
            result["batches"][str(batch)] = _ratio_repeats(calls, {
                "kerakit_float_io/floor_int8_io": ("kerakit_float_io", "floor_int8_io"),
                "kerakit_int8_io/floor_int8_io": ("kerakit_int8_io", "floor_int8_io"),
                "floor_float_io/floor_int8_io": ("floor_float_io", "floor_int8_io"),
                "kerakit_int8_io/bare_int8_io_numpy": ("kerakit_int8_io", "bare_int8_io_numpy")},
                repeats, seconds=4.0, block=10 if batch == 1 else 3)
            for p in loaded.values():
                p.close()
    result["load_average_after"] = os.getloadavg()
    return result


def tune_memory(trials: int = 20) -> dict:
    """RSS after each finished trial of a 20-trial random search on digits_cnn, in this process."""
    import kerakit
    from kerakit.bench import peak_rss_mb, rss_mb

    marks = {}

    def log(line: str) -> None:
        if line.startswith("Trial ") and " completed " in line:
            marks[len(marks) + 1] = (rss_mb(), peak_rss_mb())

    with tempfile.TemporaryDirectory() as tmp:
        kerakit.tune("digits_cnn", tmp, tuner="random", max_trials=trials, epochs=2, retrain=False, verbose=0, log=log)
    rss5, peak5 = marks[5]
    rss20, peak20 = marks[trials]
    return {
        "trials": trials, "epochs_per_trial": 2,
        "rss_mb_after_trial": {n: round(v[0], 1) for n, v in marks.items()},
        "peak_rss_mb_after_trial_5": round(peak5, 1), "peak_rss_mb_after_trial_20": round(peak20, 1),
        "peak_ratio_20_vs_5": round(peak20 / peak5, 3), "rss_ratio_20_vs_5": round(rss20 / rss5, 3),
        "target": "peak RSS after trial 20 <= 1.10x after trial 5",
        "meets_target": peak20 / peak5 <= 1.10,
    }


def tune_memory_workers(trials: int = 20) -> dict:
    """The same search through `--workers 1`: the worker's RSS (peak so far) as trials complete.

    Workers restart after `RECYCLE_AFTER` trials, so what TensorFlow keeps per
    model is given back.
    """
    import json as _json
    import threading

    import psutil

    import kerakit
    from kerakit.tune import RECYCLE_AFTER

    marks, peak, stop = {}, [0.0], threading.Event()

    def watch(out: Path) -> None:
        me = psutil.Process()
        while not stop.is_set():
            for child in me.children(recursive=True):
                try:
                    if "--role worker" in " ".join(child.cmdline()):
                        peak[0] = max(peak[0], child.memory_info().rss / 2**20)
                except psutil.Error:
                    pass
            done = 0
            for path in out.glob("tuner/trial_*/trial.json"):
                try:
                    done += _json.loads(path.read_text())["status"] == "COMPLETED"
                except (OSError, ValueError):
                    pass
            if done and done not in marks:
                marks[done] = peak[0]
            time.sleep(0.1)

    with tempfile.TemporaryDirectory() as tmp:
        thread = threading.Thread(target=watch, args=(Path(tmp),), daemon=True)
        thread.start()
        kerakit.tune("digits_cnn", tmp, tuner="random", max_trials=trials, epochs=2, retrain=False, workers=1,
                     log=lambda m: None)
        stop.set()
        thread.join()
    at5 = marks.get(5) or marks[min(k for k in marks if k >= 5)]
    at20 = marks.get(trials) or peak[0]
    return {
        "trials": trials, "epochs_per_trial": 2, "recycle_after": RECYCLE_AFTER,
        "worker_peak_rss_mb_after_trial": {n: round(v, 1) for n, v in sorted(marks.items())},
        "peak_ratio_20_vs_5": round(at20 / at5, 3),
        "target": "peak RSS after trial 20 <= 1.10x after trial 5",
        "meets_target": at20 / at5 <= 1.10,
    }


def tune_efficiency() -> dict:
    """Best val_accuracy and epochs spent: Hyperband vs random search on digits_cnn, same seed."""
    import kerakit

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, kwargs in (("random", {"tuner": "random", "max_trials": 10, "epochs": 15}),
                             ("hyperband", {"tuner": "hyperband", "max_epochs": 15})):
            start = time.perf_counter()
            result = kerakit.tune("digits_cnn", f"{tmp}/{name}", retrain=False, verbose=0, log=lambda m: None,
                                  **kwargs)
            scores = [t["score"] for t in result.trials if t["score"] is not None]
            out[name] = {"trials": len(result.trials), "epochs_spent": sum(t["epochs"] or 0 for t in result.trials),
                         "best_val_accuracy": round(max(scores), 4), "wall_s": round(time.perf_counter() - start, 1),
                         "_trials": sorted(result.trials, key=lambda t: int(t["trial"]))}
    r, h = out["random"], out["hyperband"]
    out["hyperband_epochs_vs_random"] = round(h["epochs_spent"] / r["epochs_spent"], 3)
    out["hyperband_minus_random_points"] = round(100 * (h["best_val_accuracy"] - r["best_val_accuracy"]), 2)
    # Epochs Hyperband spent (trials in the order it ran them) until its best so far came within
    # 1 point of random search's final best: the "reaches ... using <= 0.5x its epochs" figure.
    level, spent, reached = r["best_val_accuracy"] - 0.01, 0, None
    for t in h.pop("_trials"):
        spent += t["epochs"] or 0
        if t["score"] is not None and t["score"] >= level:
            reached = spent
            break
    out["hyperband_epochs_to_within_1_point"] = reached
    out["hyperband_epochs_to_within_1_point_vs_random"] = None if reached is None else round(reached / r["epochs_spent"], 3)
    out["target"] = "hyperband within 1 point of random's best with <= 0.5x its epochs"
    out["meets_target"] = reached is not None and reached / r["epochs_spent"] <= 0.5
    r.pop("_trials")
    return out


def tune_workers(trials: int = 6) -> dict:
    """Trials per minute of a random search with 1 and with 2 local workers (cores split between them)."""
    import kerakit

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            start = time.perf_counter()
            kerakit.tune("digits_cnn", f"{tmp}/w{workers}", max_trials=trials, epochs=3, workers=workers,
                         retrain=False, log=lambda m: None)
            wall = time.perf_counter() - start
            out[f"workers_{workers}"] = {"trials": trials, "wall_s": round(wall, 1),
                                         "trials_per_min": round(trials / wall * 60, 2)}
    out["speedup_2_vs_1"] = round(out["workers_2"]["trials_per_min"] / out["workers_1"]["trials_per_min"], 3)
    out["note"] = ("wall time includes starting the chief and each worker (a TensorFlow import each); "
                   "2 workers share this machine's 2 cores, 1 thread each")
    return out


def cpu_model() -> str:
    """The CPU's name and the vector/matrix extensions that change which kernels run (int8 and bf16 above all):
    kerakit.cpu's, the one description bench figures and deployment.json share."""
    from kerakit import cpu

    return f"{cpu.model()} ({', '.join(cpu.flags())})"


def _write(name: str, results: dict) -> None:
    path = RESULTS / name
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"wrote {path}")


def serve(run_path: Path) -> dict:
    from serve_load import limits, serve_load

    from kerakit.data import load_data
    from kerakit.export import export
    from kerakit.runs import Run

    run = Run.open(run_path)
    if not (run.export_dir / "model.onnx").exists():
        export(run.path, targets=["server"], log=lambda m: None)
    x, _ = load_data(run.recipe(), run.config["config"]).arrays("test")
    model, x_test = run.export_dir / "model.onnx", next(iter(x.values()))
    return {**serve_load(model, x_test, run.config["recipe"]),
            "limits": limits(model, x_test, with_memory=run.config["recipe"] == "digits_cnn")}


SECTIONS = ("foundation", "export", "inference", "serve", "tune", "data", "int8_call", "peaks", "tables", "images")


def main(sections: list[str]) -> None:
    from kerakit.train import library_versions

    unknown = set(sections) - set(SECTIONS)
    if unknown:
        sys.exit(f"Unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)} (none = all).")
    sections = sections or list(SECTIONS)
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "cpu": cpu_model(), **library_versions()}
    if "foundation" in sections:
        _write("foundation.json", {
            "machine": machine,
            "cli_help": cli_help(),
            "digits_cnn_default": digits_default(),
            "input_pipeline": [input_pipeline("digits_cnn"), input_pipeline("mnist_cnn", mock_examples=6000)],
        })
    if {"export", "inference", "serve"} & set(sections):
        with tempfile.TemporaryDirectory() as tmp:
            import kerakit

            # MobileNet's accuracy matters to export (size/accuracy); to serving speed, only its shape.
            epochs = 8 if "export" in sections else 2
            trained = [kerakit.train("digits_cnn", f"{tmp}/digits_cnn", verbose=0, log=lambda m: None).path,
                       kerakit.train("digits_mobilenet", f"{tmp}/digits_mobilenet", epochs=epochs, verbose=0,
                                     log=lambda m: None).path]
            if "export" in sections:
                _write("export.json", {"machine": machine, "models": [export_sizes(p) for p in trained]})
            if "export" in sections or "inference" in sections:
                if "export" not in sections:  # the artifacts inference times
                    from kerakit.export import export

                    for p in trained:
                        export(p, targets=["server", "edge"], formats=EXPORT_FORMATS, log=lambda m: None)
                int8 = [int8_and_wrapper(p) for p in trained]
                figures = {"machine": machine, "int8_and_wrapper": int8, "closing_note": _int8_goals(int8)}
                _write("inference.json", figures)  # kept if the longer comparisons below are cut short
                _write("inference.json", {**figures, "models": [inference(p) for p in trained]})
                print("\n".join(_int8_goals(int8)))
                _write("deployment.json", {"machine": machine, "models": [deployment_figures(p) for p in trained]})
            if "serve" in sections:
                _write("serve.json", {"machine": machine, "models": [serve(p) for p in trained]})
    if "int8_call" in sections:  # kerakit's LiteRT int8 call / LiteRT's own (goal <= 1.05), both int8 file forms
        with tempfile.TemporaryDirectory() as tmp:
            import kerakit

            trained = [kerakit.train("digits_cnn", f"{tmp}/digits_cnn", epochs=3, verbose=0, log=lambda m: None).path]
            if os.environ.get("KERAKIT_BENCH_MOBILENET", "1") != "0":  # its shape matters here, not its accuracy
                trained.append(kerakit.train("digits_mobilenet", f"{tmp}/digits_mobilenet", epochs=1, verbose=0,
                                             log=lambda m: None).path)
            models = []
            for p in trained:  # written after each model, so a cut-short run keeps the first
                models.append(int8_call(p))
                _write("int8_call.json", {"machine": machine, "models": models})
    if "peaks" in sections:  # the CPU's peak per kind of work, as the deployment figures divide by them
        _write("peaks.json", {"machine": machine, "loadavg": os.getloadavg(), **cpu_peaks()})
    if "images" in sections:  # the image recipe against the Keras guide's plain code (issue 26)
        from images import image_figures

        _write("images.json", {"machine": machine, **image_figures()})
    if "data" in sections:
        from data_prep import data_figures

        _write("data.json", {"machine": machine, **data_figures()})
    if "tables" in sections:
        from tables import table_figures

        _write("tables.json", {"machine": machine, **table_figures()})
    if "tune" in sections:
        _write("tune.json", {"machine": machine, "memory_in_process": tune_memory(),
                             "memory_workers": tune_memory_workers(), "efficiency": tune_efficiency(),
                             "workers": tune_workers()})


if __name__ == "__main__":
    main(sys.argv[1:])
