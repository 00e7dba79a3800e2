"""An honest baseline beside every tabular score: `kerakit evaluate` and the report show, on the same split, a
majority-class (or mean) predictor and scikit-learn's gradient boosting, trained on the same training rows.

The table is generated the way real exports come: `;`-separated latin-1 with decimal commas, ".", "NA" and ""
for missing, a string in a number column, a category spelled two ways, an identifier, a column that gives the
label away, and a skewed label. The test computes gradient boosting's figure itself, with scikit-learn, from
the CSV, and expects kerakit's to be that figure.
"""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import cli_in_process


def _skewed_csv(path, n=400, seed=0, regression=False):
    """Columns id (identifier), island (category, 'Biscoe' also as 'biscoe '), bill_mm (decimal commas, missing
    as ".", "NA", "" and one 'unknown'), observer, species (70/22/8 %: the label), code (species in disguise);
    with `regression`, mass_g (the label, a number) instead of code."""
    rng = np.random.default_rng(seed)
    island = rng.choice(["Biscoe", "Dream", "Torgersen", "Shetland"], n, p=[0.4, 0.3, 0.2, 0.1])
    bill = rng.normal(44, 5, n)
    score = bill / 5 + (island == "Dream") * 1.5 + rng.normal(0, 0.7, n)
    species = np.where(score > np.quantile(score, 0.92), "Gentoo",
                       np.where(score > np.quantile(score, 0.70), "Chinstrap", "Adelie"))
    frame = pd.DataFrame({"id": [f"P{i:04d}" for i in range(n)], "island": island,
                          "bill_mm": [f"{b:.1f}".replace(".", ",") for b in bill],
                          "observer": rng.choice(["Zoé", "Renée", "Mateo"], n), "species": species})
    if regression:
        frame["mass_g"] = [f"{m:.0f}" for m in 3000 + 60 * bill + (island == "Biscoe") * 500 + rng.normal(0, 150, n)]
    else:
        frame["code"] = [s[:2].upper() for s in species]
    frame.loc[[0, 37, 74], "bill_mm"] = "NA"
    frame.loc[[53, 106], "bill_mm"] = "."
    frame.loc[[12, 200], "bill_mm"] = ""
    frame.loc[10, "bill_mm"] = "unknown"
    frame.loc[frame.index[frame["island"] == "Biscoe"][:6], "island"] = "biscoe "
    path.write_bytes(frame.to_csv(sep=";", index=False).encode("latin-1"))
    return path


def _sklearn_figures(csv, label, columns, task):
    """Gradient boosting and the majority/mean predictor on the test rows, computed here with scikit-learn
    alone from the CSV: categories stripped and lowercased, coded by OrdinalEncoder on the training rows;
    numbers as float32 (as the dataset stores them) with NaN for missing. kerakit's split says which rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error
    from sklearn.preprocessing import OrdinalEncoder

    from kerakit.sources.splits import split_labels
    from kerakit.sources.table import read_table

    text = pd.read_csv(csv, sep=";", encoding="latin-1", dtype=str, keep_default_na=False)
    splits, _ = split_labels(read_table(csv).frame, {label: task}, seed=0)
    train, test = splits == "train", splits == "test"
    x = pd.DataFrame(index=text.index)
    for column, kind in columns.items():
        if kind == "number":
            numbers = pd.to_numeric(text[column].str.replace(",", "."), errors="coerce")
            x[column] = numbers.astype(np.float32).astype(np.float64)
        else:
            x[column] = text[column].str.strip().str.lower().replace("", np.nan)
    categorical = [kind == "category" for kind in columns.values()]
    names = [c for c, kind in columns.items() if kind == "category"]
    encoder = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan)
    x[names] = encoder.fit(x.loc[train, names]).transform(x[names])
    if task == "classification":
        classes = sorted(text[label].str.strip().unique())
        y = np.searchsorted(classes, text[label].str.strip())
        model = HistGradientBoostingClassifier(categorical_features=categorical, random_state=0)
        predicted = model.fit(x[train].to_numpy(), y[train]).predict(x[test].to_numpy())
        majority = np.full(test.sum(), np.bincount(y[train]).argmax())
        return {"gradient_boosting": {"accuracy": accuracy_score(y[test], predicted),
                                      "macro_f1": f1_score(y[test], predicted, average="macro",
                                                           labels=range(len(classes)), zero_division=0)},
                "majority": {"accuracy": accuracy_score(y[test], majority)}}
    y = pd.to_numeric(text[label]).astype(np.float32).to_numpy(np.float64)
    model = HistGradientBoostingRegressor(categorical_features=categorical, random_state=0)
    predicted = model.fit(x[train].to_numpy(), y[train]).predict(x[test].to_numpy())
    return {"gradient_boosting": {"mae": mean_absolute_error(y[test], predicted)},
            "mean": {"mae": mean_absolute_error(y[test], np.full(test.sum(), y[train].mean()))}}


def _trained(tmp_path, csv, label, name):
    import kerakit
    from kerakit.sources import new_recipe

    _, text = new_recipe(name, csv, label=label)
    recipe = tmp_path / f"{name}.py"
    recipe.write_text(text)
    return kerakit.train(recipe, tmp_path / "run", epochs=2, verbose=0, log=lambda m: None)


def test_evaluate_and_the_report_show_majority_and_gradient_boosting_on_the_same_rows(tmp_path):
    from kerakit.report import report

    csv = _skewed_csv(tmp_path / "penguins.csv")
    run = _trained(tmp_path, csv, "species", "penguins")
    # In the prepared dataset's order (its features are sorted by name): tied splits go to the first column.
    expected = _sklearn_figures(csv, "species", {"bill_mm": "number", "island": "category",
                                                 "observer": "category"}, "classification")

    shown = cli_in_process("evaluate", run.path, "--json")
    assert shown.returncode == 0, shown.stderr
    found = json.loads(shown.stdout)["baselines"]
    # The identifier and the column that gives the label away are left out, as the recipe leaves them out.
    assert found["rows"].startswith("3 raw column(s) of the table (bill_mm, island, observer)")
    assert found["train_examples"] == 320
    assert found["gradient_boosting"]["accuracy"] == pytest.approx(expected["gradient_boosting"]["accuracy"], abs=1e-12)
    assert found["gradient_boosting"]["macro_f1"] == pytest.approx(expected["gradient_boosting"]["macro_f1"], abs=1e-12)
    assert found["majority"]["accuracy"] == pytest.approx(expected["majority"]["accuracy"], abs=1e-12) == 28 / 40
    printed = cli_in_process("evaluate", run.path).stdout
    assert "baselines (trained on the same 320 training rows;" in printed
    assert f"  gradient_boosting: accuracy={expected['gradient_boosting']['accuracy']:.4f}" in printed
    assert "  majority: accuracy=0.7000" in printed

    result = report(run.path, log=lambda m: None)
    md = (run.path / "report" / "model_card.md").read_text()
    assert "Baselines, trained by kerakit on the same 320 training rows and scored on the same test rows" in md
    assert "| majority class (the training split's most frequent) | 0.7000 |" in md
    gb = expected["gradient_boosting"]
    assert (f"| gradient boosting (scikit-learn HistGradientBoosting, native categories) | {gb['accuracy']:.4f} | "
            f"{gb['macro_f1']:.4f} |") in md
    assert f"| baselines' test accuracy | majority 0.7000, gradient boosting {gb['accuracy']:.4f} |" in md
    # Two epochs do not beat the boosted trees by a point: the card says so, with both figures.
    model = run.metrics["accuracy"]
    if model < gb["accuracy"] - 0.01:
        assert any(f.startswith(f"baseline: gradient boosting on the same rows scores test accuracy "
                                f"{gb['accuracy']:.4g}, the model {model:.4g}") for f in result["flags"])


def test_a_number_label_is_compared_with_the_mean_and_gradient_boosting_regression(tmp_path):
    csv = _skewed_csv(tmp_path / "penguins.csv", regression=True)
    run = _trained(tmp_path, csv, "mass_g", "mass")
    expected = _sklearn_figures(csv, "mass_g", {"bill_mm": "number", "island": "category", "observer": "category",
                                                "species": "category"}, "regression")
    shown = cli_in_process("evaluate", run.path, "--json")
    assert shown.returncode == 0, shown.stderr
    found = json.loads(shown.stdout)["baselines"]
    assert set(found) == {"mean", "gradient_boosting", "rows", "train_examples"}
    assert found["gradient_boosting"]["mae"] == pytest.approx(expected["gradient_boosting"]["mae"], rel=1e-9)
    assert found["mean"]["mae"] == pytest.approx(expected["mean"]["mae"], rel=1e-9)
    assert found["gradient_boosting"]["mae"] < 0.6 * found["mean"]["mae"]  # the table is learnable, and it learnt


def test_an_image_recipe_has_no_table_baseline(digits_run):
    from kerakit.baselines import baselines
    from kerakit.data import load_data

    data = load_data(digits_run.recipe(), digits_run.config["config"])
    assert baselines(data, "test") is None
