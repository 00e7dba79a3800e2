"""`kerakit report RUN`: a Markdown model card and a self-contained HTML page.

>>> result = kerakit.report.report("runs/demo")
>>> result["html"], result["flags"]

Written to RUN/report/: model_card.md (with its PNG figures beside it) and
index.html (the same content, figures embedded, opens anywhere offline).
Sections: summary and flags, data (fingerprint, splits, class balance),
hyperparameters, training curves, test metrics with the per-class table and
confusion matrix, slices, interpretability (permutation importance for a
tabular input, gradient saliency for an image input), the deployment table
(from `kerakit export` and `kerakit bench`), reproducibility and library
versions. The Markdown is the single source; the HTML is rendered from it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import os
import re
from pathlib import Path

import numpy as np

from kerakit import runs, runtime

REPORT_DIR = "report"
MAX_SALIENCY = 6
PERMUTATION_REPEATS = 5


def _table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# --------------------------------------------------------------------------- figures

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_figure(history: list[dict], metric: str, path: Path) -> Path | None:
    if not history:
        return None
    plt = _plt()
    epochs = [int(r["epoch"]) + 1 for r in history]
    keys = [k for k in ("loss", metric) if k in history[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.4))
    axes = np.atleast_1d(axes)
    for ax, key in zip(axes, keys):
        ax.plot(epochs, [float(r[key]) for r in history], label=f"train {key}")
        if f"val_{key}" in history[0]:
            ax.plot(epochs, [float(r[f"val_{key}"]) for r in history], label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_figure(matrix: list[list[int]], names: list[str], path: Path) -> Path:
    plt = _plt()
    m = np.asarray(matrix)
    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45 if max(map(len, names)) > 2 else 0)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] > m.max() / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("confusion matrix (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def importance_figure(rows: list[dict], unit: str, path: Path) -> Path:
    plt = _plt()
    top = rows[:15][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(top) + 1.2))
    ax.barh([r["feature"] for r in top], [r["importance"] for r in top],
            xerr=[r["std"] for r in top], color="#4c72b0")
    ax.set_xlabel(unit)
    ax.set_title("permutation importance (test split)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def saliency_figure(images: np.ndarray, saliency: np.ndarray, titles: list[str], path: Path) -> Path:
    plt = _plt()
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.7 * n, 3.6))
    for i in range(n):
        img = images[i]
        axes[0, i].imshow(img[..., 0] if img.shape[-1] == 1 else np.clip(img, 0, 1), cmap="gray")
        axes[0, i].set_title(titles[i], fontsize=8)
        axes[1, i].imshow(saliency[i], cmap="inferno")
        for ax in axes[:, i]:
            ax.axis("off")
    fig.suptitle("input (top) and |gradient| of the predicted class (bottom)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- analyses

def _score(task: str, y, outputs) -> float:
    """Higher is better: `evaluate`'s accuracy, or its RMSE negated."""
    from kerakit.evaluate import task_metrics

    metrics = task_metrics(task, y, outputs)
    return metrics["accuracy"] if task == "classification" else -metrics["rmse"]


def permutation_importance(predict, x: dict, y, task: str, name: str, feature_names: list[str] | None,
                           seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    base = _score(task, y, predict(x))
    n_features = x[name].shape[1]
    names = feature_names if feature_names and len(feature_names) == n_features else [f"feature {i}" for i in range(n_features)]
    rows = []
    for j in range(n_features):
        drops = []
        for _ in range(PERMUTATION_REPEATS):
            shuffled = x[name].copy()
            shuffled[:, j] = rng.permutation(shuffled[:, j])
            drops.append(base - _score(task, y, predict({**x, name: shuffled})))
        rows.append({"feature": names[j], "importance": float(np.mean(drops)), "std": float(np.std(drops))})
    return sorted(rows, key=lambda r: -r["importance"])


def saliency(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|d p(predicted class) / d input|, max over channels; and the predicted classes."""
    import tensorflow as tf

    inputs = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        probs = model(inputs, training=False)
        probs = probs[0] if isinstance(probs, (list, tuple)) else probs
        predicted = tf.argmax(probs, axis=1)
        top = tf.gather(probs, predicted, axis=1, batch_dims=1)
    grads = tape.gradient(top, inputs).numpy()
    return np.abs(grads).max(axis=-1), predicted.numpy()


def slices(recipe, x: dict, y, outputs, overall: float) -> list[dict]:
    rows = []
    for name, fn in recipe.slices.items():
        try:
            mask = np.asarray(fn(x, y), dtype=bool).reshape(-1)
        except Exception as e:  # noqa: BLE001 - a recipe bug, shown in the report
            rows.append({"slice": name, "error": f"{type(e).__name__}: {e}"})
            continue
        if mask.shape != (len(y),):
            rows.append({"slice": name, "error": f"mask has shape {mask.shape}, expected ({len(y)},)"})
            continue
        if not mask.any():
            rows.append({"slice": name, "examples": 0})
            continue
        score = _score(recipe.task, np.asarray(y)[mask], np.asarray(outputs)[mask])
        rows.append({"slice": name, "examples": int(mask.sum()), "score": score, "gap": score - overall,
                     "flag": score < overall - recipe.slice_margin * (1 if recipe.task == "classification" else abs(overall))})
    return rows


def deployment_rows(run: runs.Run) -> list[dict]:
    """Format x size, metric, change, p50 at batch 1, throughput at batch 32, verdict."""
    export_file = run.path / "export" / "export_report.json"
    if not export_file.exists():
        return []
    export = runs.read_json(export_file)
    bench_file = run.path / "bench" / "bench.json"
    bench_rows = runs.read_json(bench_file)["rows"] if bench_file.exists() else []

    def timing(file_name: str) -> tuple[float | None, float | None]:
        mine = [r for r in bench_rows if r["artifact"] == file_name]
        p50 = min((r["p50_ms"] for r in mine if r["batch"] == 1), default=None)
        throughput = max((r["throughput_per_s"] for r in mine if r["batch"] == 32), default=None)
        return p50, throughput

    keras_metric = export.get("keras_metric") or {}
    p50, thr = timing(runs.MODEL_FILE)
    rows = [{"artifact": "keras", "format": "keras", "size_bytes": (run.path / runs.MODEL_FILE).stat().st_size,
             "metric": keras_metric.get("value"), "metric_change": 0.0, "p50_ms_batch1": p50,
             "throughput_batch32": thr, "verdict": "reference"}]
    for r in export["artifacts"]:
        p50, thr = timing(Path(r["path"]).name) if r.get("path") else (None, None)
        rows.append({"artifact": r["artifact"], "format": r["format"], "size_bytes": r.get("size_bytes"),
                     "metric": r.get("metric"), "metric_change": r.get("metric_change"), "p50_ms_batch1": p50,
                     "throughput_batch32": thr, "verdict": r["verdict"], "reasons": r.get("reasons", [])})
    return rows


# --------------------------------------------------------------------------- the report

def report(run_path: "str | os.PathLike", data_dir: str | None = None, log=print) -> dict:
    """Write RUN/report/{model_card.md, index.html, *.png}; returns paths and flags."""
    import keras

    from kerakit import drift
    from kerakit.data import load_data

    run = runs.Run.open(run_path)
    recipe = run.recipe()
    config, manifest, metrics = run.config, run.manifest, run.metrics
    data = load_data(recipe, config["config"], data_dir)
    x_test, y_test = data.arrays("test")
    model = run.load_model()
    keras_model = runtime.KerasPredictor(run.model_path, model=model)  # eager calls: no retracing per input size
    outputs = runtime.first_output(keras_model, x_test)
    overall = _score(recipe.task, y_test, outputs)
    drift.profile(run.path, data_dir, predictor=keras_model)  # the training-data summary `kerakit drift` compares against
    deploy = deployment_rows(run)

    target = run.path / REPORT_DIR
    with runs.atomic_dir(target) as tmp:
        md, flags = _markdown(run, recipe, config, manifest, metrics, data, x_test, y_test, keras_model,
                              outputs, overall, deploy, tmp)
        (tmp / "model_card.md").write_text(md, encoding="utf-8")
        (tmp / "index.html").write_text(_html(md, tmp, f"{recipe.name} model card"), encoding="utf-8")
    keras.backend.clear_session()
    result = {"markdown": str(target / "model_card.md"), "html": str(target / "index.html"), "flags": flags,
              "deployment": deploy}
    log(f"Report written to {target / 'index.html'} (and model_card.md)")
    return result


def _markdown(run, recipe, config, manifest, metrics, data, x_test, y_test, keras_model, outputs, overall, deploy,
              out: Path) -> tuple[str, list[str]]:
    from importlib.metadata import version

    flags: list[str] = []
    task = recipe.task
    metric_name = "accuracy" if task == "classification" else "RMSE"
    shown_overall = overall if task == "classification" else -overall
    parts = [f"# Model card: {recipe.name}",
             f"_Generated {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} by kerakit "
             f"{version('kerakit')} from `{run.path}`._", "", recipe.description, ""]

    # Data -------------------------------------------------------------------
    d = manifest.get("data", {})
    data_md = ["## Data", "", _table(["", " "], [
        ["dataset", f"{d.get('dataset')} {d.get('version', '')}"],
        ["splits", ", ".join(f"{k}: `{v}` ({d.get('sizes', {}).get(k, '?')} examples)" for k, v in d.get("splits", {}).items())],
        ["fingerprint (sha256 of the first records of each split)",
         ", ".join(f"{k} `{v[:16]}`" for k, v in d.get("sha256", {}).items())],
        ["inputs", ", ".join(f"`{i.name}` {tuple(i.shape)} {i.dtype}" for i in recipe.inputs)],
    ])]
    if task == "classification":
        names = data.class_names or [str(i) for i in range(outputs.shape[1])]
        _, y_train = data.arrays("train")
        train_counts = np.bincount(np.asarray(y_train, int).reshape(-1), minlength=len(names))
        test_counts = np.bincount(np.asarray(y_test, int).reshape(-1), minlength=len(names))
        data_md += ["", "Class balance:", "", _table(["class", "train", "train %", "test", "test %"], [
            [n, int(a), f"{100 * a / train_counts.sum():.1f}", int(b), f"{100 * b / test_counts.sum():.1f}"]
            for n, a, b in zip(names, train_counts, test_counts)])]
    parts += data_md + [""]

    # Hyperparameters and training ---------------------------------------------
    training = manifest.get("training", {})
    parts += ["## Hyperparameters", "", _table(["name", "value"],
              [[k, v] for k, v in {**config.get("hparams", {}), **config.get("config", {})}.items()]), ""]
    history = _read_history(run.path / "history.csv")
    monitor = "accuracy" if task == "classification" else ("mae" if history and "mae" in history[0] else "loss")
    curves = curves_figure(history, monitor, out / "curves.png")
    parts += ["## Training", "",
              f"{training.get('epochs_run', len(history))} epochs; best epoch {training.get('best_epoch', '?')} "
              f"({', '.join(f'{k} {_fmt(v)}' for k, v in training.items() if k.startswith('best_') and k != 'best_epoch')}); "
              f"{_fmt(manifest.get('wall_seconds'), 1)} s; {_strategy(manifest.get('strategy'))}.", ""]
    if curves:
        parts += [f"![training curves]({curves.name})", ""]

    # Test metrics -----------------------------------------------------------------
    parts += ["## Test metrics", "", _table(["metric", "value"], [[k, _fmt(v)] for k, v in metrics.items()
                                                                  if isinstance(v, (int, float))]), ""]
    if task == "classification" and "per_class" in metrics:
        rows = []
        for c in metrics["per_class"]:
            low = c["recall"] < overall - recipe.slice_margin
            if low:
                flags.append(f"class {c['class']}: recall {c['recall']:.3f} is more than {recipe.slice_margin:.2f} below accuracy {overall:.3f}")
            rows.append([c["class"], _fmt(c["precision"], 3), _fmt(c["recall"], 3), _fmt(c["f1"], 3), c["support"],
                         "**below**" if low else ""])
        parts += ["Per class (flagged when recall is more than the slice margin below overall accuracy):", "",
                  _table(["class", "precision", "recall", "f1", "support", "flag"], rows), ""]
        confusion = confusion_figure(metrics["confusion_matrix"], metrics.get("class_names", names), out / "confusion.png")
        parts += [f"![confusion matrix]({confusion.name})", ""]

    # Slices -----------------------------------------------------------------------
    parts += ["## Slices", ""]
    slice_rows = slices(recipe, x_test, y_test, outputs, overall)
    if slice_rows:
        rows = []
        for s in slice_rows:
            if "error" in s:
                rows.append([s["slice"], "–", "–", "–", f"error: {s['error']}"])
                flags.append(f"slice {s['slice']!r}: {s['error']}")
                continue
            if not s.get("examples"):
                rows.append([s["slice"], 0, "–", "–", "empty"])
                continue
            value = s["score"] if task == "classification" else -s["score"]
            gap = s["gap"] if task == "classification" else -s["gap"]
            if s["flag"]:
                flags.append(f"slice {s['slice']!r}: {metric_name} {value:.3f} vs {shown_overall:.3f} overall")
            rows.append([s["slice"], s["examples"], _fmt(value), f"{gap:+.4f}", "**below margin**" if s["flag"] else ""])
        parts += [f"Test-split subsets declared by the recipe (`SLICES`), flagged when {metric_name} is worse than "
                  f"overall ({_fmt(shown_overall)}) by more than {recipe.slice_margin}"
                  + ("" if task == "classification" else " × overall") + ":", "",
                  _table(["slice", "examples", metric_name, "vs overall", "flag"], rows), ""]
    else:
        parts += ["The recipe declares no `SLICES`; per-class metrics are above.", ""]

    # Interpretability --------------------------------------------------------------
    parts += ["## Interpretability", ""]
    first = recipe.inputs[0]
    if len(first.shape) == 1 and np.dtype(first.dtype).kind == "f":
        rows = permutation_importance(lambda x: runtime.first_output(keras_model, x), dict(x_test), y_test, task,
                                      first.name, recipe.feature_names)
        unit = "accuracy drop" if task == "classification" else "RMSE increase"
        figure = importance_figure(rows, unit, out / "importance.png")
        parts += [f"Permutation importance of `{first.name}`: the {unit} when one feature's test values are "
                  f"shuffled ({PERMUTATION_REPEATS} repeats, mean ± std).", "", f"![permutation importance]({figure.name})", "",
                  _table(["feature", unit, "std"], [[r["feature"], _fmt(r["importance"]), _fmt(r["std"])] for r in rows[:10]]), ""]
    elif len(first.shape) == 3 and len(recipe.inputs) == 1:
        images = next(iter(x_test.values()))[:MAX_SALIENCY].astype(np.float32)
        sal, predicted = saliency(keras_model.model, images)
        names = data.class_names or [str(i) for i in range(outputs.shape[1])]
        titles = [f"true {names[int(t)]} / pred {names[int(p)]}" for t, p in zip(np.asarray(y_test)[:MAX_SALIENCY], predicted)]
        figure = saliency_figure(images, sal, titles, out / "saliency.png")
        parts += ["Gradient saliency on the first test images: brighter pixels change the predicted class's "
                  "probability most.", "", f"![saliency]({figure.name})", ""]
    else:
        parts += [f"Not computed for input `{first.name}` {tuple(first.shape)} {first.dtype} "
                  "(attributions cover tabular float inputs and single image inputs).", ""]

    # Reproducibility and versions ---------------------------------------------------
    code = manifest.get("code", {})
    parts += ["## Reproducibility", "", _table(["", " "], [
        ["recipe", f"`{recipe.name}` (copy in `{run.path / runs.RECIPE_FILE}`)"],
        ["seeds", ", ".join(f"{k}={v}" for k, v in (manifest.get("seeds") or {}).items()) or str(config["config"].get("seed"))],
        ["code", ", ".join(f"{k}: {v}" for k, v in code.items()) if isinstance(code, dict) else str(code)],
        ["retrain", f"`kerakit train {recipe.name} --out NEW_DIR "
                    + " ".join(f"{k}={v}" for k, v in config["config"].items()) + "` with `--hparams` of the values above"],
        ["started", manifest.get("started", "?")],
    ]), "", "Artifacts (sha256):", "",
        _table(["file", "sha256"], [[k, f"`{v[:16]}…`"] for k, v in manifest.get("artifacts", {}).items()]), ""]
    parts += ["## Library versions", "", _table(["library", "version"], list(manifest.get("versions", {}).items())), ""]

    # Deployment (shown right after the summary) ---------------------------------------
    deploy_md = ["## Deployment", ""]
    if deploy:
        rows = []
        for r in deploy:
            if r["verdict"] not in ("verified", "reference"):
                flags.append(f"artifact {r['artifact']}: {r['verdict']} ({'; '.join(r.get('reasons', []))})")
            rows.append([r["artifact"], _size(r["size_bytes"]), _fmt(r["metric"]),
                         "" if r["verdict"] == "reference" else _signed(r["metric_change"]),
                         _fmt(r["p50_ms_batch1"], 3), _fmt(None if r["throughput_batch32"] is None else round(r["throughput_batch32"])),
                         r["verdict"]])
        deploy_md += ["Every artifact is checked against the Keras model by `kerakit export`; latency from `kerakit bench` "
                  "(best thread setting).", "",
                  _table(["artifact", "size", recipe.metric, "change", "p50 ms (batch 1)", "samples/s (batch 32)", "verdict"], rows), ""]
    else:
        deploy_md += [f"No export yet: `kerakit export {run.path} --target server,edge`.", ""]

    summary = ["## Summary", "", _table(["", " "], [
        ["task", task],
        [f"test {metric_name}", f"{_fmt(shown_overall)} on {len(np.asarray(y_test))} examples"],
        ["artifacts verified", f"{sum(r['verdict'] == 'verified' for r in deploy[1:])} of {len(deploy) - 1}" if deploy else "not exported"],
        ["flags", "none" if not flags else f"{len(flags)} (below)"],
    ])]
    if flags:
        summary += ["", *[f"- ⚠ {f}" for f in flags]]
    parts[5:5] = summary + [""] + deploy_md
    return "\n".join(parts) + "\n", flags


def _strategy(strategy) -> str:
    if isinstance(strategy, dict):
        replicas = strategy.get("replicas", 1)
        return f"tf.distribute strategy {strategy.get('name', 'default')} ({replicas} replica{'s' if replicas != 1 else ''})"
    return f"tf.distribute strategy {strategy or 'default'}"


def _read_history(path: Path) -> list[dict]:
    import csv

    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _size(n) -> str:
    if n is None:
        return "–"
    return f"{n / 1024:.0f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"


def _signed(v) -> str:
    return "–" if v is None else f"{v:+.4f}"


CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1040px; margin: 2em auto; padding: 0 1em; color: #1d232a; }
h1 { border-bottom: 2px solid #4c72b0; padding-bottom: .2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; font-size: 14px; } th, td { border: 1px solid #d0d7de; padding: 3px 9px; text-align: left; }
th { background: #f3f5f8; } tr:nth-child(even) td { background: #fafbfc; } img { max-width: 100%; }
code { background: #f3f5f8; padding: 0 3px; border-radius: 3px; } strong { color: #b3261e; }
"""


def _html(markdown_text: str, folder: Path, title: str) -> str:
    """The Markdown rendered to one HTML file, figures embedded as data URIs."""
    import markdown

    def embed(match: re.Match) -> str:
        alt, name = match.group(1), match.group(2)
        data = base64.b64encode((folder / name).read_bytes()).decode()
        return f"![{alt}](data:image/png;base64,{data})"

    body = markdown.markdown(re.sub(r"!\[([^\]]*)\]\(([\w.-]+\.png)\)", embed, markdown_text), extensions=["tables"])
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n")
