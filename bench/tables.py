"""`python bench/run.py tables` (tables.json): the neural table recipe against gradient boosting.

On seven tables -- four generated with strings, case and space variants, missing values (".", "NA", "") and a
free identifier, and three of scikit-learn's bundled tables (breast_cancer, wine, diabetes; California housing
is a download, left out) -- `kerakit new --from table.csv --label COL` writes the recipe, `kerakit.train` trains
it as written (its defaults: epochs=80 with early stopping, class weights where the label is skewed), and
`kerakit.baselines` trains scikit-learn's HistGradientBoosting on the same training rows. Both are scored on the
same held-out test split:

- classification: the recipe's accuracy minus gradient boosting's, in points; goal >= -1 on the median table;
- regression: the recipe's RMSE / gradient boosting's; goal <= 1.05 on the median table;
- served raw rows (the first table): `kerakit serve RUN` answering one TF Serving row at a time, p50 over HTTP,
  against the bare SavedModel signature called on the same row pre-encoded as tensors, blocks in a shuffled order.

Every table, its test rows, the columns the recipe left out and the majority/mean predictor are recorded beside
the figures, and "falls_short" names each table under its goal: a small test split (wine: 18 rows, one row is
5.6 points) moves by whole rows.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ACCURACY_GOAL = -1.0  # points: the recipe's accuracy minus gradient boosting's, on the median table
RMSE_GOAL = 1.05  # the recipe's RMSE / gradient boosting's, on the median table


def _messy(frame, rng, columns):
    """Real-export noise: ".", "NA" and "" for missing numbers (5 %), case and space variants of categories."""
    for column in columns:
        values = frame[column].astype(str).to_numpy(dtype=object)
        if frame[column].dtype.kind == "f":
            values = np.array([f"{v:.3f}" for v in frame[column]], dtype=object)
            gaps = rng.random(len(values)) < 0.05
            values[gaps] = rng.choice([".", "NA", ""], gaps.sum())
        else:
            variant = rng.random(len(values)) < 0.05
            values[variant] = [rng.choice([v.upper(), f" {v}", v.lower() + " "]) for v in values[variant]]
        frame[column] = values
    return frame


def churn(rng, n=4000):
    """Binary, about 30 % positive: tenure, charges, plan, region, paperless (yes/no), an id."""
    import pandas as pd

    plan = rng.choice(["Basic", "Plus", "Premium", "Family"], n, p=[0.4, 0.3, 0.2, 0.1])
    region = rng.choice([f"Region{i}" for i in range(8)], n)
    tenure, charges = rng.gamma(2.0, 12.0, n), rng.normal(60, 20, n)
    paperless = rng.choice(["yes", "no"], n)
    logit = (-0.06 * tenure + 0.03 * (charges - 60) + (plan == "Basic") * 0.8 - (plan == "Family") * 0.6
             + (paperless == "yes") * 0.5 + np.isin(region, ["Region2", "Region5"]) * 0.7 + 0.3)
    churned = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "left", "stayed")
    frame = pd.DataFrame({"customer": [f"C{i:05d}" for i in range(n)], "tenure": tenure, "charges": charges,
                          "plan": plan, "region": region, "paperless": paperless, "churn": churned})
    return _messy(frame, rng, ["tenure", "charges", "plan", "region"]), "churn"


def species(rng, n=3000):
    """Three classes from two numbers and an island, with an interaction: a penguins-like table."""
    import pandas as pd

    island = rng.choice(["Biscoe", "Dream", "Torgersen", "Shetland"], n, p=[0.4, 0.3, 0.2, 0.1])
    bill, flipper = rng.normal(44, 5, n), rng.normal(200, 14, n)
    score = bill / 5 + (flipper - 200) / 14 * (island == "Biscoe") + (island == "Dream") * 1.5 + rng.normal(0, 0.7, n)
    label = np.where(score > np.quantile(score, 0.75), "Gentoo",
                     np.where(score > np.quantile(score, 0.45), "Chinstrap", "Adelie"))
    frame = pd.DataFrame({"bill_mm": bill, "flipper_mm": flipper, "island": island,
                          "observer": rng.choice(["Zoé", "Renée", "Mateo"], n), "species": label})
    return _messy(frame, rng, ["bill_mm", "flipper_mm", "island"]), "species"


def price(rng, n=4000):
    """Regression in currency units: area, age, district (12) and type, with a district x area interaction."""
    import pandas as pd

    district = rng.choice([f"D{i:02d}" for i in range(12)], n)
    kind = rng.choice(["flat", "house", "studio"], n, p=[0.5, 0.3, 0.2])
    area, age = rng.gamma(4.0, 20.0, n), rng.uniform(0, 80, n)
    per_m2 = 2000 + 150 * np.array([int(d[1:]) for d in district])
    value = area * per_m2 * np.where(kind == "house", 1.2, 1.0) - 800 * age + rng.normal(0, 15000, n)
    frame = pd.DataFrame({"area_m2": area, "age_years": age, "district": district, "type": kind,
                          "price": np.round(value, 0)})
    return _messy(frame, rng, ["area_m2", "age_years", "district", "type"]), "price"


def demand(rng, n=4000):
    """Regression: units sold by weekday x city (7 x 6 categories), temperature and a promotion flag."""
    import pandas as pd

    weekday = rng.choice(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"], n)
    city = rng.choice(["Lyon", "Porto", "Gent", "Brno", "Turku", "Cork"], n)
    temperature, promo = rng.normal(15, 8, n), rng.choice(["yes", "no"], n, p=[0.2, 0.8])
    weekend = np.isin(weekday, ["Sat", "Sun"])
    units = (50 + 20 * weekend * np.isin(city, ["Lyon", "Porto"]) + 1.5 * np.maximum(temperature - 10, 0)
             + 15 * (promo == "yes") + rng.normal(0, 6, n))
    frame = pd.DataFrame({"weekday": weekday, "city": city, "temperature": temperature, "promo": promo,
                          "units": np.round(units, 1)})
    return _messy(frame, rng, ["temperature", "city"]), "units"


def bundled(name: str):
    """One of scikit-learn's bundled tables as a frame, a class label as its names (so it reads as a category)."""
    import sklearn.datasets

    loaded = getattr(sklearn.datasets, f"load_{name}")(as_frame=True)
    frame = loaded.frame.rename(columns={"target": "label"})
    if name != "diabetes":
        frame["label"] = np.asarray(loaded.target_names)[loaded.target]
    return frame, "label"


TABLES = {"churn": churn, "species": species, "price": price, "demand": demand,
          "breast_cancer": lambda rng: bundled("breast_cancer"), "wine": lambda rng: bundled("wine"),
          "diabetes": lambda rng: bundled("diabetes")}


def table_figures(names=None) -> dict:
    """Each table's recipe and gradient boosting figures, and the median table's against the goals."""
    rows = []
    load, start = os.getloadavg(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names or TABLES):
            rows.append(one_table(name, TABLES[name](np.random.default_rng(i)), Path(tmp)))
            print(f"tables: {rows[-1]}", flush=True)
            if i == 0:
                served = served_row_p50(Path(tmp) / f"run_{name}", str(Path(tmp) / "tfds"))
                print(f"tables: served {served}", flush=True)
    return {"loadavg_before": load, "loadavg_after": os.getloadavg(),
            "wall_seconds": round(time.perf_counter() - start, 1), **summary(rows), "served_row": served,
            "tables": rows}


def served_row_p50(run_path: Path, data_dir: str, blocks: int = 15, block: int = 20) -> dict:
    """One raw row per request through `kerakit serve RUN` (TF Serving's `instances`, HTTP on loopback) against
    the bare SavedModel signature on the same row as tensors, p50 of each over blocks in a shuffled order
    (`kerakit.bench.time_interleaved`)."""
    import requests
    import tensorflow as tf

    from kerakit.bench import time_interleaved
    from kerakit.data import load_data
    from kerakit.export import export
    from kerakit.runs import Run
    from serve_load import _Server

    run = Run.open(run_path)
    export(run.path, formats=["savedmodel"], log=lambda m: None)
    x, _ = load_data(run.recipe(), run.config["config"], data_dir).arrays("test")
    row = {k: v[:1] for k, v in x.items()}
    json_row = {k: (None if isinstance(c, float) and c != c else c.decode() if isinstance(c, bytes) else c)
                for k, c in ((k, v.reshape(-1)[0].item() if hasattr(v.reshape(-1)[0], "item") else v.reshape(-1)[0])
                             for k, v in row.items())}
    signature = tf.saved_model.load(str(run.export_dir / "savedmodel")).signatures["serving_default"]
    tensors = {k: tf.constant(v) for k, v in row.items()}
    server = _Server(run.path)  # the run: its recipe tells serve which inputs are columns (null is missing)
    try:
        session = requests.Session()
        calls = {"served": lambda: session.post(f"{server.url}/v1/models/m:predict", json={"instances": [json_row]}),
                 "bare": lambda: signature(**tensors)}
        assert calls["served"]().status_code == 200
        samples = time_interleaved(calls, blocks * block, warmup=block, block=block)
    finally:
        server.stop()
    p50 = {k: statistics.median(v) / 1e6 for k, v in samples.items()}
    return {"served_p50_ms": round(p50["served"], 3), "bare_savedmodel_p50_ms": round(p50["bare"], 3),
            "served_over_bare": round(p50["served"] / p50["bare"], 2), "requests": len(samples["served"]),
            "row": json_row}


def one_table(name: str, made, tmp: Path) -> dict:
    """Recipe as `kerakit new` writes it, trained with its defaults, and gradient boosting on the same rows."""
    import kerakit
    from kerakit.baselines import baselines
    from kerakit.data import load_data
    from kerakit.sources import new_recipe

    frame, label = made
    csv = tmp / f"{name}.csv"
    frame.to_csv(csv, index=False)
    report, text = new_recipe(name, csv, label=label)
    (tmp / f"{name}.py").write_text(text)
    start = time.perf_counter()
    run = kerakit.train(tmp / f"{name}.py", tmp / f"run_{name}", data_dir=str(tmp / "tfds"), verbose=0,
                        log=lambda m: None)
    seconds = time.perf_counter() - start
    data = load_data(run.recipe(), run.config["config"], str(tmp / "tfds"))
    base = baselines(data, "test")
    task, metric = report["task"], ("accuracy" if report["task"] == "classification" else "rmse")
    simple = "majority" if task == "classification" else "mean"
    neural, boosted = run.metrics[metric], base["gradient_boosting"][metric]
    return {"table": name, "task": task, "rows": len(frame), "test_rows": run.metrics["examples"],
            "columns": {kind: [t for c, t in report["types"].items() if c != label].count(kind)
                        for kind in sorted({t for c, t in report["types"].items() if c != label})},
            "left_out": list(getattr(run.recipe().module, "DROPPED", {})),
            "class_weight": run.config["config"].get("class_weight"), "metric": metric,
            "recipe": neural, "gradient_boosting": boosted, simple: base[simple][metric],
            ("accuracy_points" if task == "classification" else "rmse_ratio"):
                round(100 * (neural - boosted), 2) if task == "classification" else round(neural / boosted, 4),
            "epochs_run": run.manifest["training"]["epochs_run"], "train_seconds": round(seconds, 1)}


def summary(rows: list[dict]) -> dict:
    """The median table's figure per task against its goal, and each table under its goal by name."""
    points = [r["accuracy_points"] for r in rows if r["task"] == "classification"]
    ratios = [r["rmse_ratio"] for r in rows if r["task"] == "regression"]
    median_points = statistics.median(points) if points else None
    median_ratio = statistics.median(ratios) if ratios else None
    short = [f"{r['table']}: accuracy {r['accuracy_points']:+.1f} points" for r in rows
             if r.get("accuracy_points", 0) < ACCURACY_GOAL]
    short += [f"{r['table']}: RMSE {r['rmse_ratio']:.3f}x" for r in rows if r.get("rmse_ratio", 0) > RMSE_GOAL]
    return {"classification_median_accuracy_points": median_points,
            "classification_goal": f">= {ACCURACY_GOAL} point(s) on the median table",
            "classification_goal_met": median_points is not None and median_points >= ACCURACY_GOAL,
            "regression_median_rmse_ratio": median_ratio,
            "regression_goal": f"<= {RMSE_GOAL} on the median table",
            "regression_goal_met": median_ratio is not None and median_ratio <= RMSE_GOAL,
            "falls_short": short}
