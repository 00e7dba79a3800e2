"""`kerakit report RUN`: a Markdown model card and a self-contained HTML page.

    from kerakit.report import report
    result = report("runs/demo")  # a finished run: kerakit train digits_cnn --out runs/demo
    result["html"]
    # -> 'runs/demo/report/index.html'
    result["flags"]  # one line per concern: a weak class or slice, an artifact that failed verification

Written to RUN/report/: model_card.md (with its PNG figures beside it) and
index.html (the same content, figures embedded, opens anywhere offline).
Sections: summary and flags, data (fingerprint, splits, class balance),
hyperparameters, training curves, test metrics with the per-class table and
confusion matrix, slices, interpretability (permutation importance for a
tabular input, gradient saliency for an image input), the deployment table
(from `kerakit export` and `kerakit bench`), reproducibility and library
versions. The Markdown is the single source; the HTML is rendered from it.

Every number that judges the model (summary, slices, permutation importance,
deployment) is the recipe's METRIC, read in its direction (`kerakit.metrics`):
accuracy for the classification recipes, MAE for the regression one.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kerakit import files, metrics, runs, runtime
from kerakit.folds import from_record
from kerakit.formats.keras import KerasPredictor
from kerakit.recipe import Recipe

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

def permutation_importance(predict, x: dict, y, task: str, metric: str, name: str,
                           feature_names: list[str] | None, seed: int = 0) -> list[dict]:
    """How much worse `metric` gets when one feature of input `name` is shuffled, per feature."""
    rng = np.random.default_rng(seed)
    base = metrics.score(task, metric, y, predict(x))
    n_features = x[name].shape[1]
    names = feature_names if feature_names and len(feature_names) == n_features else [f"feature {i}" for i in range(n_features)]
    rows = []
    for j in range(n_features):
        drops = []
        for _ in range(PERMUTATION_REPEATS):
            shuffled = x[name].copy()
            shuffled[:, j] = rng.permutation(shuffled[:, j])
            drops.append(metrics.worsening(metric, base, metrics.score(task, metric, y, predict({**x, name: shuffled}))))
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
    """The recipe's metric on each of its SLICES; flagged when worse than `overall` by more than SLICE_MARGIN.

    The margin is absolute for a score (0.05: five accuracy points) and
    relative for an error (0.05: 5 % above the overall MAE).
    """
    metric, margin = recipe.metric, recipe.slice_margin
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
        value = metrics.score(recipe.task, metric, np.asarray(y)[mask], np.asarray(outputs)[mask])
        flag = metrics.worsening(metric, overall, value) > metrics.allowed_worsening(metric, overall, margin, margin)
        rows.append({"slice": name, "examples": int(mask.sum()), "score": value, "gap": value - overall, "flag": flag})
    return rows


def deployment_rows(run: runs.Run) -> list[dict]:
    """Format x size, metric, change, p50 at batch 1, throughput at batch 32, verdict.

    An artifact is shown verified only while it is still verified (`ArtifactRow.still_verified`: its file, by
    name in this run's export/, still has the SHA-256 it was verified with).
    """
    from kerakit.export import ExportReport

    export = ExportReport.find(run.export_dir)
    if export is None:
        return []
    bench_rows = (files.load_json(run.bench_result, "delete it and rerun `kerakit bench`", ("rows",))["rows"]
                  if run.bench_result.exists() else [])

    def timing(file_name: str) -> tuple[float | None, float | None]:
        mine = [r for r in bench_rows if r["artifact"] == file_name]
        p50 = min((r["p50_ms"] for r in mine if r["batch"] == 1), default=None)
        throughput = max((r["throughput_per_s"] for r in mine if r["batch"] == 32), default=None)
        return p50, throughput

    def note(file_name: str) -> str:
        return next((r["note"] for r in bench_rows if r["artifact"] == file_name and r.get("note")), "")

    keras_metric = export.keras_metric or {}
    p50, thr = timing(run.model_path.name)
    rows = [{"artifact": "keras", "format": "keras", "size_bytes": run.model_path.stat().st_size,
             "metric": keras_metric.get("value"), "metric_change": 0.0, "p50_ms_batch1": p50,
             "throughput_batch32": thr, "verdict": "reference"}]
    for r in export.artifacts:
        p50, thr = timing(r.filename)
        verdict, reasons = r.verdict, r.reasons
        stale = r.why_not_verified(export.directory) if r.verified else None
        if stale:
            verdict, reasons = "failed", [f"{stale}: export again"]
        figures = r.figures
        rows.append({"artifact": r.artifact, "format": r.format, "size_bytes": figures.get("size_bytes"),
                     "metric": figures.get("metric"), "metric_change": figures.get("metric_change"),
                     "p50_ms_batch1": p50, "throughput_batch32": thr, "verdict": verdict, "reasons": reasons,
                     "footprint": figures.get("footprint"), "budget": figures.get("budget"),
                     "timing_note": note(r.filename)})
    return rows


# --------------------------------------------------------------------------- the report

@dataclass
class _Card:
    """What the model card's sections read, gathered once; sections add their flags."""

    run: runs.Run
    recipe: Recipe
    data: Any  # kerakit.data.Data (not imported here: it imports TensorFlow)
    x_test: dict
    y_test: np.ndarray
    predictor: KerasPredictor
    outputs: np.ndarray  # the model's first output on the test split
    overall: float  # the recipe's metric on the test split
    deploy: list[dict]
    baselines: dict | None = None  # kerakit.baselines on the test split, for a tabular recipe
    figures: Path = Path()  # where the figures are written
    flags: list[str] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return self.recipe.metric


def report(run_path: "str | os.PathLike", data_dir: str | None = None, log=print) -> dict:
    """Write RUN/report/{model_card.md, index.html, *.png}; returns paths and flags."""
    run = runs.Run.open(run_path)
    with files.writer(run.path, "kerakit report", has_out=False):  # it writes RUN/report
        return _write(run, data_dir, log)


def _write(run: runs.Run, data_dir: str | None, log) -> dict:
    import keras

    card = _gather(run, data_dir)
    target = run.report_dir
    with files.atomic_dir(target) as tmp:
        card.figures = tmp
        md = _markdown(card)
        (tmp / runs.REPORT_MARKDOWN_FILE).write_text(md, encoding="utf-8")
        (tmp / runs.REPORT_HTML_FILE).write_text(_html(md, tmp, f"{card.recipe.name} model card"), encoding="utf-8")
    keras.backend.clear_session()
    result = {"markdown": str(target / runs.REPORT_MARKDOWN_FILE), "html": str(target / runs.REPORT_HTML_FILE),
              "flags": card.flags, "deployment": card.deploy}
    log(f"Report written to {target / runs.REPORT_HTML_FILE} (and {runs.REPORT_MARKDOWN_FILE})")
    return result


def _gather(run: runs.Run, data_dir: str | None) -> _Card:
    """Load the run's model, recipe and test split; score the model."""
    from kerakit.data import load_data

    # First, so a model that does not load (a custom class not known here) fails before the data is read.
    predictor = KerasPredictor(run.model_path)  # the Keras loader: the recipe's and --custom-objects' classes
    recipe = run.recipe()
    # A fold run of `kerakit cv` is described with its own fold's train and val parts.
    data = load_data(recipe, run.config["config"], data_dir, fold=from_record(run.config.get("fold")))
    x_test, y_test = data.arrays("test")
    outputs = runtime.first_output(predictor, x_test)  # eager calls: no retracing per input size
    overall = metrics.score(recipe.task, recipe.metric, y_test, outputs)
    from kerakit.baselines import baselines

    return _Card(run=run, recipe=recipe, data=data, x_test=x_test, y_test=y_test, predictor=predictor,
                 outputs=outputs, overall=overall, deploy=deployment_rows(run), baselines=baselines(data, "test"))


def _markdown(card: _Card) -> str:
    """The model card. Sections that raise flags run first, so the summary on top can list every flag."""
    data = _data_section(card)
    training = _training_section(card)
    test_metrics = _metrics_section(card)
    sliced = _slices_section(card)
    interpretability = _interpretability_section(card)
    reproducibility = _reproducibility_section(card)
    deployment = _deployment_section(card)
    parts = [*_title(card), *_summary_section(card), *deployment, *data, *training, *test_metrics, *sliced,
             *interpretability, *reproducibility]
    return "\n".join(parts) + "\n"


def _title(card: _Card) -> list[str]:
    from importlib.metadata import version

    return [f"# Model card: {card.recipe.name}",
            f"_Generated {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} by kerakit "
            f"{version('kerakit')} from `{card.run.path}`._", "", card.recipe.description, ""]


def _class_names(card: _Card) -> list[str]:
    return card.data.class_names or [str(i) for i in range(card.outputs.shape[-1])]


def _data_section(card: _Card) -> list[str]:
    d = card.run.manifest.get("data", {})
    lines = ["## Data", "", _table(["", " "], [
        ["dataset", f"{d.get('dataset')} {d.get('version', '')}"],
        ["splits", ", ".join(f"{k}: `{v}` ({d.get('sizes', {}).get(k, '?')} examples)" for k, v in d.get("splits", {}).items())],
        *([["source", f"`{d['source'].get('source')}`, read as {d['source'].get('read_as')}"],
           ["split rule", d["source"].get("split_rule", "")]] if d.get("source") else []),
        ["fingerprint (sha256 of every record of each split)",
         ", ".join(f"{k} `{v[:16]}`" for k, v in d.get("sha256", {}).items())],
        ["inputs", ", ".join(f"`{i.name}` {tuple(i.shape)} {i.dtype}" for i in card.recipe.inputs)],
        *_series_rows(card.recipe, d),
    ])]
    if card.recipe.task == "classification":
        names = _class_names(card)
        _, y_train = card.data.arrays("train")
        train_counts = np.bincount(np.asarray(y_train, int).reshape(-1), minlength=len(names))
        test_counts = np.bincount(np.asarray(card.y_test, int).reshape(-1), minlength=len(names))
        lines += ["", "Class balance:", "", _table(["class", "train", "train %", "test", "test %"], [
            [n, int(a), f"{100 * a / train_counts.sum():.1f}", int(b), f"{100 * b / test_counts.sum():.1f}"]
            for n, a, b in zip(names, train_counts, test_counts)])]
    return lines + _source_lines(card) + _quality_lines(card) + [""]


def _source_lines(card: _Card) -> list[str]:
    """The data report of a dataset made from the user's files (`kerakit data`), as its preparation wrote it
    into the run's data fingerprint: each flag with its count."""
    source = card.run.manifest.get("data", {}).get("source") or {}
    if "flags" not in source:
        return []
    rows = [[f["check"], f["count"], f["message"] + (f" (e.g. {', '.join(map(str, f['examples'][:3]))})"
                                                    if f["examples"] else "")] for f in source["flags"]]
    return ["", f"Data checks of `{source['source']}` (`kerakit data`: {len(rows)} flag(s)):", "",
            _table(["check", "count", "what"], rows) if rows else "No flags."]


def _series_rows(recipe: Recipe, d: dict) -> list[list[str]]:
    """A forecasting recipe's windows and the split by time, with each split's first and last target time."""
    if recipe.series is None or "split_by" not in d:
        return []
    s = recipe.series
    spans = ", ".join(f"{k}: {d['windows'].get(k)} windows, targets {v[0]}..{v[1]}" if v else f"{k}: none"
                      for k, v in d.get("target_times", {}).items())
    return [["windows", f"{s.window} steps -> the value {s.horizon} step(s) later; season {s.season} steps"],
            ["split by", d["split_by"]], [f"target `{s.time_key}` per split", spans]]


def _quality_lines(card: _Card) -> list[str]:
    """Per-feature data quality of each tabular (rank-1) input; constant, duplicate and shifted features flagged."""
    from kerakit.quality import feature_quality

    lines = []
    for spec in (i for i in card.recipe.inputs if len(i.shape) == 1 and i.dtype.startswith("float")):
        x_train, _ = card.data.arrays("train")
        names = card.recipe.feature_names if len(card.recipe.inputs) == 1 else None
        rows = feature_quality(x_train[spec.name], card.x_test[spec.name], names)
        for r in rows:
            for flag in r["flags"]:
                card.flags.append(f"feature {spec.name}[{r['feature']}]: {flag}")
        lines += ["", f"Data quality of `{spec.name}` (train; PSI and KS of test against train, as `kerakit drift`):",
                  "", _table(["feature", "missing", "min", "median", "max", "PSI", "KS", "flag"], [
                      [r["feature"], r["missing"], _fmt(r["min"]), _fmt(r["median"]), _fmt(r["max"]),
                       _fmt(r["psi"], 3), _fmt(r["ks"], 3), ", ".join(r["flags"])] for r in rows])]
    return lines


def _training_section(card: _Card) -> list[str]:
    """Hyperparameters, then the training run and its curves."""
    config, manifest = card.run.config, card.run.manifest
    training = manifest.get("training", {})
    lines = ["## Hyperparameters", "", _table(["name", "value"],
             [[k, v] for k, v in {**config.get("hparams", {}), **config.get("config", {})}.items()]), ""]
    history = _read_history(card.run.history_path)
    curves = curves_figure(history, card.metric, card.figures / "curves.png")
    best = ", ".join(f"{k} {_fmt(v)}" for k, v in training.items() if k.startswith("best_") and k != "best_epoch")
    lines += ["## Training", "",
              f"{training.get('epochs_run', len(history))} epochs; best epoch {training.get('best_epoch', '?')} "
              f"({best}); {_fmt(manifest.get('wall_seconds'), 1)} s; {_strategy(manifest.get('strategy'))}.", ""]
    if curves:
        lines += [f"![training curves]({curves.name})", ""]
    return lines


def _metrics_section(card: _Card) -> list[str]:
    """Test metrics from the run; for classification, per-class rows (low recall flagged) and the confusion matrix."""
    recorded = card.run.metrics
    lines = ["## Test metrics", "", _table(["metric", "value"], [[k, _fmt(v)] for k, v in recorded.items()
                                                                 if isinstance(v, (int, float))]), ""]
    lines += _baseline_lines(card)
    if "forecast" in recorded:
        return lines + _forecast_lines(card, recorded["forecast"])
    if card.recipe.task != "classification" or "per_class" not in recorded:
        return lines
    margin = card.recipe.slice_margin
    accuracy = metrics.score("classification", "accuracy", card.y_test, card.outputs)
    rows = []
    for c in recorded["per_class"]:
        low = c["recall"] < accuracy - margin
        if low:
            card.flags.append(f"class {c['class']}: recall {c['recall']:.3f} is more than {margin:.2f} below accuracy {accuracy:.3f}")
        rows.append([c["class"], _fmt(c["precision"], 3), _fmt(c["recall"], 3), _fmt(c["f1"], 3), c["support"],
                     "**below**" if low else ""])
    confusion = confusion_figure(recorded["confusion_matrix"], recorded.get("class_names", _class_names(card)),
                                 card.figures / "confusion.png")
    return lines + ["Per class (flagged when recall is more than the slice margin below overall accuracy):", "",
                    _table(["class", "precision", "recall", "f1", "support", "flag"], rows), "",
                    f"![confusion matrix]({confusion.name})", ""]


BASELINE_NAMES = {"majority": "majority class (the training split's most frequent)", "mean": "mean (of the training labels)",
                  "gradient_boosting": "gradient boosting (scikit-learn HistGradientBoosting, native categories)"}
GRADIENT_BOOSTING_MARGIN = dict(max_drop=0.01, max_rel_increase=0.05)  # within 1 point, or 5 % of an error


def _baseline_lines(card: _Card) -> list[str]:
    """The model beside a majority-class (or mean) predictor and gradient boosting, trained on the same training
    rows and scored on the same test rows; flagged when the model does not beat the first, or when gradient
    boosting beats it by more than 1 point (5 % of an error)."""
    found = card.baselines
    if not found:
        return []
    model = metrics.task_metrics(card.recipe.task, card.y_test, card.outputs, card.data.class_names)
    keys = metrics.TASK_SCALARS[card.recipe.task]
    simple = next(name for name in ("majority", "mean") if name in found)
    metric = card.metric
    if metrics.worsening(metric, found[simple][metric], model[metric]) >= 0:
        card.flags.append(f"baseline: the model's test {metric} {model[metric]:.4g} does not beat the "
                          f"{simple} predictor's {found[simple][metric]:.4g}")
    gap = metrics.judge(metric, found["gradient_boosting"][metric], model[metric], **GRADIENT_BOOSTING_MARGIN)
    if gap:
        card.flags.append(f"baseline: gradient boosting on the same rows scores test {metric} "
                          f"{found['gradient_boosting'][metric]:.4g}, the model {model[metric]:.4g} ({gap})")
    rows = [["this model", *(_fmt(model[k]) for k in keys)]]
    rows += [[BASELINE_NAMES[name], *(_fmt(found[name][k]) for k in keys)] for name in (simple, "gradient_boosting")]
    return [f"Baselines, trained by kerakit on the same {found['train_examples']} training rows and scored on the "
            f"same test rows ({found['rows']}):", "", _table(["model", *keys], rows), ""]


def _forecast_lines(card: _Card, forecast: dict) -> list[str]:
    """The model beside the seasonal-naive forecast; flagged when it does not beat it."""
    model, naive = forecast["model"], forecast["seasonal_naive"]
    if not forecast["beats_naive"]:
        card.flags.append(f"forecast: test MAE {model['mae']:.4g} does not beat the seasonal-naive forecast's "
                          f"{naive['mae']:.4g} (the value {forecast['season']} steps earlier)")
    return [f"Forecast {forecast['horizon']} step(s) ahead against the seasonal-naive forecast (the value one season, "
            f"{forecast['season']} steps, before the target); MASE divides MAE by the training series' mean absolute "
            f"seasonal difference ({_fmt(forecast['mase_scale'])}):", "",
            _table(["forecast", "MAE", "RMSE", "MASE"], [
                [name, _fmt(r["mae"]), _fmt(r["rmse"]), _fmt(r["mase"])]
                for name, r in (("model", model), ("seasonal naive", naive))]),
            "", "The model beats the seasonal-naive forecast." if forecast["beats_naive"]
            else "**The model does not beat the seasonal-naive forecast.**", ""]


def _slices_section(card: _Card) -> list[str]:
    lines = ["## Slices", ""]
    slice_rows = slices(card.recipe, card.x_test, card.y_test, card.outputs, card.overall)
    if not slice_rows:
        return lines + ["The recipe declares no `SLICES`; per-class metrics are above.", ""]
    metric, overall = card.metric, card.overall
    rows = []
    for s in slice_rows:
        if "error" in s:
            rows.append([s["slice"], "–", "–", "–", f"error: {s['error']}"])
            card.flags.append(f"slice {s['slice']!r}: {s['error']}")
        elif not s.get("examples"):
            rows.append([s["slice"], 0, "–", "–", "empty"])
        else:
            if s["flag"]:
                card.flags.append(f"slice {s['slice']!r}: {metric} {s['score']:.3f} vs {overall:.3f} overall")
            rows.append([s["slice"], s["examples"], _fmt(s["score"]), f"{s['gap']:+.4f}",
                         "**below margin**" if s["flag"] else ""])
    relative = metrics.direction(metric) == "min"  # an error's margin is a fraction of it
    return lines + [f"Test-split subsets declared by the recipe (`SLICES`), flagged when {metric} is worse than "
                    f"overall ({_fmt(overall)}) by more than {card.recipe.slice_margin}"
                    + (" × overall" if relative else "") + ":", "",
                    _table(["slice", "examples", metric, "vs overall", "flag"], rows), ""]


def _interpretability_section(card: _Card) -> list[str]:
    """Permutation importance for a tabular input, gradient saliency for a single image input."""
    lines = ["## Interpretability", ""]
    first = card.recipe.inputs[0]
    if len(first.shape) == 1 and first.dtype.startswith("float"):
        return lines + _importance(card, first.name)
    if len(first.shape) == 3 and len(card.recipe.inputs) == 1:
        return lines + _saliency(card)
    return lines + [f"Not computed for input `{first.name}` {tuple(first.shape)} {first.dtype} "
                    "(attributions cover tabular float inputs and single image inputs).", ""]


def _importance(card: _Card, name: str) -> list[str]:
    metric = card.metric
    rows = permutation_importance(lambda x: runtime.first_output(card.predictor, x), dict(card.x_test), card.y_test,
                                  card.recipe.task, metric, name, card.recipe.feature_names)
    unit = f"{metric} drop" if metrics.direction(metric) == "max" else f"{metric} increase"
    figure = importance_figure(rows, unit, card.figures / "importance.png")
    return [f"Permutation importance of `{name}`: the {unit} when one feature's test values are "
            f"shuffled ({PERMUTATION_REPEATS} repeats, mean ± std).", "", f"![permutation importance]({figure.name})", "",
            _table(["feature", unit, "std"], [[r["feature"], _fmt(r["importance"]), _fmt(r["std"])] for r in rows[:10]]), ""]


def _saliency(card: _Card) -> list[str]:
    dtype = np.dtype(card.predictor.model.inputs[0].dtype)
    if not np.issubdtype(dtype, np.floating):  # the model casts its input to integers first: no gradient flows
        return [f"No gradient saliency: the model takes {dtype} pixels (the photo's raw values), and no gradient "
                "flows through integers.", ""]
    images = next(iter(card.x_test.values()))[:MAX_SALIENCY].astype(np.float32)
    sal, predicted = saliency(card.predictor.model, images)
    names = _class_names(card)
    titles = [f"true {names[int(t)]} / pred {names[int(p)]}"
              for t, p in zip(np.asarray(card.y_test)[:MAX_SALIENCY], predicted)]
    figure = saliency_figure(images, sal, titles, card.figures / "saliency.png")
    return ["Gradient saliency on the first test images: brighter pixels change the predicted class's "
            "probability most.", "", f"![saliency]({figure.name})", ""]


def _reproducibility_section(card: _Card) -> list[str]:
    """How to reproduce the run, the artifacts' hashes, and the library versions."""
    run, recipe, manifest, config = card.run, card.recipe, card.run.manifest, card.run.config
    code = manifest.get("code", {})
    return ["## Reproducibility", "", _table(["", " "], [
        ["recipe", f"`{recipe.name}` (copy in `{run.recipe_path}`)"],
        ["seeds", ", ".join(f"{k}={v}" for k, v in (manifest.get("seeds") or {}).items()) or str(config["config"].get("seed"))],
        ["code", ", ".join(f"{k}: {v}" for k, v in code.items()) if isinstance(code, dict) else str(code)],
        ["retrain", f"`kerakit train {recipe.name} --out NEW_DIR --hparams HPARAMS.json "
                    + " ".join(f"{k}={v}" for k, v in config["config"].items()) + "` (HPARAMS.json: the values above)"],
        ["started", manifest.get("started", "?")],
    ]), "", "Artifacts (sha256):", "",
        _table(["file", "sha256"], [[k, f"`{v[:16]}…`"] for k, v in manifest.get("artifacts", {}).items()]), "",
        "## Library versions", "", _table(["library", "version"], list(manifest.get("versions", {}).items())), ""]


def _deployment_section(card: _Card) -> list[str]:
    """The export and bench table; an artifact that failed verification is flagged."""
    lines = ["## Deployment", ""]
    if not card.deploy:
        return lines + [f"No export yet: `kerakit export {card.run.path} --target server,edge`.", ""]
    rows, devices = [], any(r.get("footprint") for r in card.deploy)
    timing = {r["artifact"]: r["timing_note"] for r in card.deploy if r.get("timing_note")}
    for r in card.deploy:
        if r["verdict"] not in ("verified", "reference"):
            card.flags.append(f"artifact {r['artifact']}: {r['verdict']} ({'; '.join(r.get('reasons', []))})")
        p50 = _fmt(r["p50_ms_batch1"], 3) + (" †" if r["artifact"] in timing and r["p50_ms_batch1"] else "")
        rows.append([r["artifact"], _size(r["size_bytes"]), *(footprint_cells(r.get("footprint")) if devices else []),
                     _fmt(r["metric"]), "" if r["verdict"] == "reference" else _signed(r["metric_change"]), p50,
                     _fmt(None if r["throughput_batch32"] is None else round(r["throughput_batch32"])), r["verdict"]])
    headers = ["artifact", "size", *(FOOTPRINT_HEADERS if devices else []), card.metric, "change", "p50 ms (batch 1)",
               "samples/s (batch 32)", "verdict"]
    notes = [*_footprint_notes(card.deploy), *(f"† {name}: {note}." for name, note in timing.items())]
    return lines + ["Every artifact is checked against the Keras model by `kerakit export`; latency from `kerakit bench` "
                    "(best thread setting).", "", _table(headers, rows), "", *(x for note in notes for x in (note, ""))]


FOOTPRINT_HEADERS = ["RAM KB", "flash KB", "MACs"]


def footprint_cells(footprint: dict | None) -> list[str]:
    """RAM KB, flash KB and MACs of a measured artifact (KB = 1024 bytes); dashes for the others."""
    if not footprint:
        return ["–", "–", "–"]
    macs = footprint.get("macs")
    return [f"{footprint['ram_bytes'] / 1024:.1f}", f"{footprint['flash_bytes'] / 1024:.1f}",
            "–" if macs is None else f"{macs:,}"]


def _footprint_notes(deploy: list[dict]) -> list[str]:
    """What RAM and flash mean for each measured artifact, and the budget it was held to."""
    notes = []
    for r in deploy:
        footprint, budget = r.get("footprint"), r.get("budget") or {}
        if not footprint:
            continue
        limits = ", ".join(f"{budget[k]:g} KB {what}" for k, what in (("ram_kb", "RAM"), ("flash_kb", "flash"))
                           if budget.get(k) is not None)
        notes.append(f"{r['artifact']}: RAM is its {footprint['ram_label']} and flash its model's bytes, as measured "
                     f"in its runtime; MACs per inference" + (f"; the target's budget: {limits}." if limits else "."))
    return notes


def _summary_section(card: _Card) -> list[str]:
    """Task, the headline metric, artifacts verified, and every flag the other sections raised."""
    deploy, flags = card.deploy, card.flags
    lines = ["## Summary", "", _table(["", " "], [
        ["task", card.recipe.task],
        [f"test {card.metric}", f"{_fmt(card.overall)} on {len(np.asarray(card.y_test))} examples"],
        *([[f"baselines' test {card.metric}", ", ".join(f"{name.replace('_', ' ')} {_fmt(v[card.metric])}"
                                                        for name, v in card.baselines.items() if isinstance(v, dict))]]
          if card.baselines else []),
        *_cv_rows(card),
        ["artifacts verified", f"{sum(r['verdict'] == 'verified' for r in deploy[1:])} of {len(deploy) - 1}" if deploy else "not exported"],
        ["flags", "none" if not flags else f"{len(flags)} (below)"],
    ])]
    if flags:
        lines += ["", *[f"- ⚠ {f}" for f in flags]]
    return lines + [""]


def _cv_rows(card: _Card) -> list[list[str]]:
    """The k-fold figure of `kerakit cv ... --out RUN/cv`, beside the test figure, when the run has one."""
    summary = runs.CrossValidation(card.run.cv_dir).summary()
    if summary is None:
        return []
    same = summary.get("request", {}).get("config") == card.run.config.get("config")
    return [[f"cross-validated {summary['metric']}",
             f"{_fmt(summary['mean'])} ± {_fmt(summary['std'])} over {summary['folds']} folds ({summary['scheme']}, "
             f"held-out fold of the train+val examples" + ("" if same else "; **with another config than this run**")
             + ")"]]


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
