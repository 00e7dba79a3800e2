"""`make bench`: benchmarks, written as JSON to bench/results/ (foundation.json, export.json).

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
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
KERAKIT = str(Path(sys.executable).parent / "kerakit")


def _timed_fit(model, dataset, steps: int) -> float:
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps / (time.perf_counter() - start)


def input_pipeline(recipe_name: str, rounds: int = 5, mock_examples: int | None = None) -> dict:
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


def export_sizes(recipe_name: str, **overrides) -> dict:
    import kerakit
    from kerakit.export import export

    with tempfile.TemporaryDirectory() as tmp:
        run = kerakit.train(recipe_name, f"{tmp}/run", verbose=0, log=lambda m: None, **overrides)
        start = time.perf_counter()
        report = export(run.path, targets=["server", "edge"], formats=EXPORT_FORMATS, log=lambda m: None)
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
        for r in report["artifacts"]
    }
    int8 = rows["tflite-int8"]["size_vs_tflite_fp32"]
    return {
        "recipe": recipe_name,
        "overrides": overrides,
        "keras_accuracy": report["keras_metric"]["value"],
        "artifacts": rows,
        "export_wall_s": round(wall, 1),
        "target": "tflite-int8 <= 0.27x float32 TFLite; accuracy change >= -1 point",
        "meets_target": int8 <= 0.27 and all(r["verdict"] == "verified" for r in rows.values()),
    }


def _write(name: str, results: dict) -> None:
    path = RESULTS / name
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"wrote {path}")


def main() -> None:
    from kerakit.train import library_versions

    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), **library_versions()}
    _write("foundation.json", {
        "machine": machine,
        "cli_help": cli_help(),
        "digits_cnn_default": digits_default(),
        "input_pipeline": [input_pipeline("digits_cnn"), input_pipeline("mnist_cnn", mock_examples=6000)],
    })
    _write("export.json", {
        "machine": machine,
        "models": [export_sizes("digits_cnn"), export_sizes("digits_mobilenet", epochs=8)],
    })


if __name__ == "__main__":
    main()
