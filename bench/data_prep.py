"""`make bench BENCH=data` (data.json): preparing the user's tables, on generated CSV files.

- prepare_vs_pandas: rows/s of `kerakit.sources.prepare` (read, type, check, split, write TFDS records)
  against `pandas.read_csv` of the same file in the same run (a file under the streaming size, read whole).
- memory: peak RSS of a process that prepares a streamed CSV, for two file sizes (3x apart), measured by
  polling the process (psutil); goal: flat in the file's size (ratio large/small <= 1.1).
- training_input: training steps/s of an MLP fed by the prepared dataset through kerakit's pipeline
  (`kerakit.data.pipeline`: map, cache, shuffle, batch, prefetch) against the same rows held in memory
  (`from_tensor_slices`), interleaved rounds after a first epoch; goal >= 0.9.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = """
import sys, time
from kerakit.sources.prepare import SourceSpec, prepare
start = time.perf_counter()
prepare(SourceSpec.from_options(sys.argv[1], {"label": "outcome"}), sys.argv[2], log=lambda m: None)
print(time.perf_counter() - start)
"""


def write_csv(path: Path, rows: int, seed: int = 0) -> Path:
    """A table like an export: 6 numbers (some missing), 3 categories, an id; written in 200,000-row blocks."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for start in range(0, rows, 200_000):
            n = min(200_000, rows - start)
            x = np.round(rng.normal(size=(n, 6)), 4)
            frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(6)]).astype(str)
            frame.loc[rng.random(n) < 0.02, "x3"] = "NA"
            for i, values in enumerate((["north", "south", "east", "west"], ["a", "b"], list("pqrstuvw"))):
                frame[f"c{i}"] = rng.choice(values, n)
            frame["id"] = [f"R{start + i:09d}" for i in range(n)]
            frame["outcome"] = np.where(x[:, 0] + x[:, 1] > 0, "yes", "no")
            frame.to_csv(f, index=False, header=start == 0)
    return path


def _peak_rss(command: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, the child's own printed seconds) of a command, polled every 20 ms."""
    import psutil

    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    watched, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.02)
    out = process.stdout.read().strip().splitlines()
    if process.returncode:
        raise RuntimeError(f"{command} exited {process.returncode}")
    return peak / 2**20, float(out[-1])


def prepare_vs_pandas(tmp: Path, rows: int = 300_000) -> dict:
    import pandas as pd

    path = write_csv(tmp / "whole.csv", rows)
    start = time.perf_counter()
    pd.read_csv(path)
    pandas_s = time.perf_counter() - start
    _, prepare_s = _peak_rss([sys.executable, "-c", CHILD, str(path), str(tmp / "tfds_whole")])
    return {"rows": rows, "mib": round(path.stat().st_size / 2**20, 1), "pandas_rows_per_s": round(rows / pandas_s),
            "prepare_rows_per_s": round(rows / prepare_s), "prepare_over_pandas": round(pandas_s / prepare_s, 4)}


def memory(tmp: Path, rows: tuple[int, int] = (1_000_000, 3_000_000)) -> dict:
    figures = []
    for n in rows:
        path = write_csv(tmp / f"stream_{n}.csv", n, seed=n)
        rss, seconds = _peak_rss([sys.executable, "-c", CHILD, str(path), str(tmp / f"tfds_{n}")])
        figures.append({"rows": n, "mib": round(path.stat().st_size / 2**20, 1), "peak_rss_mib": round(rss, 1),
                        "seconds": round(seconds, 1), "rows_per_s": round(n / seconds)})
        path.unlink()
    return {"files": figures, "rss_large_over_small": round(figures[1]["peak_rss_mib"] / figures[0]["peak_rss_mib"], 3),
            "file_over_rss_large": round(figures[1]["mib"] / figures[1]["peak_rss_mib"], 3), "goal": "rss ratio <= 1.1"}


def training_input(tmp: Path, rows: int = 100_000, rounds: int = 5) -> dict:
    import keras
    import tensorflow as tf

    from kerakit.data import pipeline
    from kerakit.sources.prepare import SourceSpec, prepare

    path = write_csv(tmp / "train.csv", rows)
    builder = prepare(SourceSpec.from_options(path, {"label": "outcome"}), tmp / "tfds_train", log=lambda m: None)
    names = [f"x{i}" for i in range(6)]

    def features(example):
        return tf.stack([tf.where(tf.math.is_nan(example[n]), 0.0, example[n]) for n in names]), example["label"]

    prepared = pipeline(builder.as_dataset(split="train", shuffle_files=False), features, 256, shuffle_seed=0)
    x, y = zip(*((a, b) for a, b in prepared.unbatch().as_numpy_iterator()))
    memory_ds = tf.data.Dataset.from_tensor_slices((np.stack(x), np.array(y))).shuffle(10_000, seed=0).batch(256)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(2)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    steps = len(x) // 256
    model.fit(prepared, epochs=1, verbose=0)  # fills the cache, as a first epoch does
    model.fit(memory_ds, epochs=1, verbose=0)
    timed = {"prepared": [], "in_memory": []}
    for _ in range(rounds):
        for name, ds in (("prepared", prepared), ("in_memory", memory_ds)):
            start = time.perf_counter()
            model.fit(ds, epochs=1, verbose=0)
            timed[name].append(steps / (time.perf_counter() - start))
    prepared_s, memory_s = statistics.median(timed["prepared"]), statistics.median(timed["in_memory"])
    return {"rows": len(x), "steps_per_s_prepared": round(prepared_s, 1), "steps_per_s_in_memory": round(memory_s, 1),
            "prepared_over_in_memory": round(prepared_s / memory_s, 3), "goal": ">= 0.9"}


def data_figures() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        return {"prepare_vs_pandas": prepare_vs_pandas(tmp), "memory": memory(tmp),
                "training_input": training_input(tmp)}


if __name__ == "__main__":
    print(json.dumps(data_figures(), indent=2))
