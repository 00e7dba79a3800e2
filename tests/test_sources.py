"""Your own data: tables as real exports have them, read and checked before any training.

Every file is generated here with the mess real files have: `;`-separated latin-1 with decimal commas,
"." and "NA" for missing, a string in a number column, one island spelled two ways, rows repeated
across splits, a column that is the label in disguise, an identifier, conflicting labels; and a table with two
labels (a category and a number in grams) for a model with one output each.
"""

import json
import re

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from kerakit.errors import KerakitError
from kerakit.sources import data_report
from kerakit.sources.splits import assign_splits
from kerakit.sources.table import read_table

N = 300


def penguins(n=N, seed=0) -> pd.DataFrame:
    """A clean table: id, island, bill length (a number), observer, species (the label), a leaky code."""
    rng = np.random.default_rng(seed)
    island = rng.choice(["Biscoe", "Dream", "Torgersen"], n)
    species = np.where(island == "Biscoe", "Gentoo", rng.choice(["Adelie", "Chinstrap"], n))
    bill = np.round(rng.normal(44, 5, n), 1)
    return pd.DataFrame({"id": [f"P{i:04d}" for i in range(n)], "island": island, "bill_mm": bill,
                         "observer": np.where(np.arange(n) % 2, "Zoé", "Renée"), "species": species,
                         "code": [s[:2].upper() for s in species]})


def messy_csv(path):
    """The clean table as a European spreadsheet exports it, with the mistakes people make."""
    frame = penguins().astype(str)
    frame["bill_mm"] = frame["bill_mm"].str.replace(".", ",")
    frame.loc[[0, 37, 74], "bill_mm"] = "NA"
    frame.loc[[53, 106], "bill_mm"] = "."
    frame.loc[10, "bill_mm"] = "unknown"
    biscoe = frame.index[frame["island"] == "Biscoe"][:4]
    frame.loc[biscoe, "island"] = "biscoe "
    frame = pd.concat([frame, frame.iloc[[5, 6, 7, 8, 9]]], ignore_index=True)  # exported twice
    path.write_bytes(frame.to_csv(sep=";", index=False).encode("latin-1"))
    return path


def test_a_messy_csv_is_read_as_written_and_every_problem_is_flagged(tmp_path):
    report = data_report(messy_csv(tmp_path / "penguins.csv"), label="species")
    assert report["read_as"] == "penguins.csv (305 rows; semicolon-separated, cp1252, decimal mark ',')"
    assert report["types"] == {"id": "identifier", "island": "category", "bill_mm": "number",
                               "observer": "category", "species": "category", "code": "category"}
    bill = next(c for c in report["columns"] if c["column"] == "bill_mm")
    assert bill["missing"] == 5 and 20 < bill["min"] < bill["median"] < bill["max"] < 70  # "44,1" read as 44.1
    flags = {f["check"]: f for f in report["flags"]}
    assert set(flags) == {"disguised_missing", "mixed_types", "spelling_variants", "duplicate_rows",
                          "duplicates_across_splits", "identifier", "target_leakage"}
    assert flags["disguised_missing"]["count"] == 5 and flags["disguised_missing"]["examples"] == [1, 38, 54, 75, 107]
    assert "('.', 'NA')" in flags["disguised_missing"]["message"]
    assert flags["mixed_types"]["examples"] == [11] and "'unknown'" in flags["mixed_types"]["message"]
    assert flags["spelling_variants"]["examples"] == ["Biscoe / biscoe "]
    assert flags["duplicate_rows"]["count"] == 5 and flags["duplicate_rows"]["examples"] == [301, 302, 303, 304, 305]
    assert "'code' alone predicts 'species'" in flags["target_leakage"]["message"]
    assert "'id' looks like an identifier" in flags["identifier"]["message"]
    # The split the report checks is the one kerakit makes: a duplicate across it is named by row.
    splits, _ = assign_splits(read_table(tmp_path / "penguins.csv").frame, "species", seed=0)
    crossing = [r for r in range(300, 305) if {splits[r], splits[r - 295]} != {"train"} and "train" in
                {splits[r], splits[r - 295]}]
    assert flags["duplicates_across_splits"]["count"] == len(crossing) > 0


def test_conflicting_labels_imbalance_constant_and_outliers(tmp_path):
    frame = penguins()[["island", "bill_mm", "species"]].copy()
    frame["bill_mm"] = np.round(np.random.default_rng(1).normal(44, 5, N), 3)  # no two penguins alike
    frame["species"] = np.where(np.arange(N) < 12, "Rare", "Common")
    frame.loc[:11, "island"] = "Dream"
    frame["checked"] = "yes"
    frame.loc[20, "bill_mm"] = 4400.0  # a unit mistake
    frame.loc[N] = frame.loc[30].to_dict() | {"species": "Rare"}  # the same penguin, labelled again
    frame.to_csv(tmp_path / "t.csv", index=False)
    flags = {f["check"]: f for f in data_report(tmp_path / "t.csv", label="species")["flags"]}
    assert {"conflicting_labels", "class_imbalance", "constant", "outliers"} <= set(flags)
    assert flags["conflicting_labels"]["examples"] == [31, 301]
    assert "class 'Rare' has 13 rows" in flags["class_imbalance"]["message"]
    assert flags["outliers"]["examples"] == [21] and "4400" in flags["outliers"]["message"]
    assert "'checked' has one value ('yes')" in flags["constant"]["message"]


def test_parquet_json_lines_and_tsv_read_like_the_csv(tmp_path):
    frame = penguins()
    frame.loc[3, "bill_mm"] = np.nan
    frame.to_csv(tmp_path / "p.csv", index=False)
    frame.to_parquet(tmp_path / "p.parquet")
    frame.to_json(tmp_path / "p.jsonl", orient="records", lines=True)
    frame.to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    reports = [data_report(tmp_path / f"p.{suffix}", label="species") for suffix in ("csv", "parquet", "jsonl", "tsv")]
    for report in reports[1:]:
        assert report["types"] == reports[0]["types"] and report["columns"] == reports[0]["columns"]
        assert report["splits"] == reports[0]["splits"]
    assert reports[0]["columns"][2]["missing"] == 1


def test_splits_are_seeded_stratified_grouped_or_by_time():
    frame = penguins(1000)
    splits, rule = assign_splits(frame, "species", seed=3)
    assert rule == "stratified by species, seed 3: train 80%, validation 10%, test 10%"
    assert (splits == assign_splits(frame, "species", seed=3)[0]).all()
    for name in ("train", "test"):
        shares = frame["species"][splits == name].value_counts(normalize=True)
        assert np.allclose(shares.sort_index(), frame["species"].value_counts(normalize=True).sort_index(), atol=0.02)
    frame["patient"] = np.arange(1000) // 7
    grouped, rule = assign_splits(frame, "species", group="patient")
    assert rule.startswith("by group (patient") and frame.groupby(grouped)["patient"].apply(set).pipe(
        lambda s: not (s["train"] & s["test"]) and not (s["train"] & s["validation"]))
    frame["day"] = pd.date_range("2024-01-01", periods=1000).strftime("%Y-%m-%d")[::-1]
    timed, _ = assign_splits(frame, "species", time="day")
    assert frame["day"][timed == "train"].max() < frame["day"][timed == "validation"].min()
    assert frame["day"][timed == "validation"].max() < frame["day"][timed == "test"].min()


@pytest.mark.parametrize("content, label, message", [
    (b"a,b,label\n1,2,x\n3,4,y\n5,6,7,z\n", "label", "Expected 3 fields in line 4, saw 4"),
    (b"a,b,label\n1,2,x\n3,4,\n5,6,y\n", "label", "1 row(s) have no label in column 'label' (data rows 2)"),
    (b"a,b,label\n1,2,x\n", "species", "Unknown label column 'species' in t.csv. Columns: a, b, label."),
    (b"", None, "is empty: expected a header row and data rows"),
    (b"a,b,label\n", None, "has a header but no rows"),
])
def test_a_bad_table_gets_one_line_naming_the_problem(tmp_path, content, label, message):
    (tmp_path / "t.csv").write_bytes(content)
    with pytest.raises(KerakitError, match=None) as e:
        data_report(tmp_path / "t.csv", label=label)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_cli_prints_the_report_writes_json_and_refuses_in_one_line(tmp_path):
    messy_csv(tmp_path / "penguins.csv")
    result = run_cli("data", tmp_path / "penguins.csv", "--label", "species", "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    assert "data: penguins.csv (305 rows; semicolon-separated, cp1252, decimal mark ','), label 'species'" \
        in result.stdout
    assert "flag: duplicates_across_splits:" in result.stdout and "7 flag(s)" in result.stdout
    assert json.loads((tmp_path / "r.json").read_text())["label"] == "species"
    for args, message in [(("nope.csv",), "nope.csv' does not exist."),
                          (("penguins.csv", "--label", "nope"), "Unknown label column 'nope'"),
                          (("penguins.csv", "--type", "bill_mm=float"), "Invalid type 'float' for column 'bill_mm'"),
                          (("penguins.csv", "--group", "ward"), "Unknown split column 'ward'")]:
        result = run_cli("data", *[tmp_path / a if a.endswith(".csv") else a for a in args])
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- folders, datasets, recipes

def test_an_image_folder_report_counts_junk_corrupt_files_and_copies(tmp_path):
    from messy_files import photos

    report = data_report(photos(tmp_path / "photos"))
    assert report["read_as"] == "photos/ (65 image files, 2 classes, one folder per class)"
    assert report["classes"] == ["circle", "square"] and report["rows"] == 64  # the corrupt JPEG is not a row
    assert report["images"]["modes"] == {"L": 14, "P": 8, "RGB": 36, "RGBA": 6}
    assert 24 <= report["images"]["width"]["min"] and report["images"]["height"]["max"] < 80
    flags = {(f["check"], f["message"].split(":")[-1].strip()): f for f in report["flags"]}
    assert flags[("skipped_files", "hidden file")]["examples"] == \
        ["circle/Thumbs.db", "square/.DS_Store", "square/._square_000.png"]
    assert flags[("skipped_files", "not an image")]["examples"] == ["circle/notes.txt"]
    checks = {f["check"]: f for f in report["flags"]}
    assert checks["unreadable_files"]["examples"] == ["circle/broken.jpg"]
    assert checks["conflicting_labels"]["examples"] == ["circle/circle_016.png = circle/copy_2.png = "
                                                        "square/misfiled.png"]
    copies = checks["duplicate_files"]["count"] + checks.get("duplicates_across_splits", {"count": 0})["count"]
    assert copies >= 3


def test_a_folder_without_classes_or_with_an_empty_class_is_refused_in_one_line(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(KerakitError, match="has no subfolders: expected one folder per class"):
        data_report(tmp_path / "flat")
    (tmp_path / "flat" / "cat").mkdir()
    (tmp_path / "flat" / "dog").mkdir()
    (tmp_path / "flat" / "dog" / "d.png").write_bytes(b"")
    with pytest.raises(KerakitError, match=r"Class folder '.*cat' has no data files: add files or remove it."):
        data_report(tmp_path / "flat")


def _learnable_csv(path, n=600, seed=0, note=False):
    """A table a model can learn (the label follows two numbers and a category), exported the European way;
    with `note`, a free-text column whose words also tell the label."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    site = rng.choice(["North", "South", "east "], n)
    label = np.where(x1 + 0.5 * x2 + (site == "North") * 1.5 > 0.5, "high", "low")
    frame = pd.DataFrame({"x1": np.round(x1, 3), "x2": np.round(x2, 3), "site": site, "outcome": label}).astype(str)
    if note:
        words = {"high": "busy queue crowded full", "low": "quiet calm empty slow"}
        frame["note"] = [f"visit {i} was " + " ".join(rng.choice(words[v].split(), 3)) for i, v in enumerate(label)]
    frame["x1"] = frame["x1"].str.replace(".", ",")
    frame["x2"] = frame["x2"].str.replace(".", ",")
    frame.loc[::50, "x2"] = "NA"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(frame.to_csv(sep=";", index=False).encode("latin-1"))
    return path


def test_a_source_is_prepared_once_per_content_and_a_changed_byte_prepares_again(tmp_path):
    from kerakit.sources.prepare import SourceSpec, about, prepare

    csv = _learnable_csv(tmp_path / "t.csv")
    said = []
    spec = SourceSpec.from_options(csv, {"label": "outcome"})
    builder = prepare(spec, tmp_path / "tfds", log=said.append)
    assert len(said) == 1 and builder.name == "kerakit_t"
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 480, "validation": 60, "test": 60}
    assert about(builder.info)["split_rule"] == "stratified by outcome, seed 0: train 80%, validation 10%, test 10%"
    example = next(iter(builder.as_dataset(split="train").take(1)))
    assert set(example) == {"x1", "x2", "site", "label"} and example["x1"].dtype.name == "float32"
    again = prepare(spec, tmp_path / "tfds", log=said.append)
    assert len(said) == 1 and again.info.config_name == builder.info.config_name  # nothing prepared
    # A half-written preparation (TFDS's incomplete.* folder, as a kill leaves it) is not a dataset.
    text = csv.read_bytes()
    csv.write_bytes(text[:-3] + (b"1" if text[-3:-2] != b"1" else b"2") + text[-2:])  # the last row's last cell
    changed = SourceSpec.from_options(csv, {"label": "outcome"})
    (tmp_path / "tfds" / "kerakit_t" / "cfake" / "incomplete.X_1.0.0").mkdir(parents=True)
    rebuilt = prepare(changed, tmp_path / "tfds", log=said.append)
    assert len(said) == 2 and rebuilt.info.config_name != builder.info.config_name
    grouped = prepare(SourceSpec.from_options(csv, {"label": "outcome", "seed": 1}), tmp_path / "tfds",
                      log=said.append)
    assert len(said) == 3 and grouped.info.config_name not in (builder.info.config_name, rebuilt.info.config_name)
    with pytest.raises(KerakitError, match=r"Unknown SOURCE option\(s\) sep_char. Allowed: decimal, encoding"):
        SourceSpec.from_options(csv, {"sep_char": ";"})


def test_presplit_folders_are_honoured_and_a_missing_validation_folder_is_carved_from_train(tmp_path):
    from messy_files import photos

    from kerakit.sources.prepare import SourceSpec, about, prepare

    for split in ("train", "test"):
        photos(tmp_path / "split" / split, per_class=20 if split == "train" else 17, seed=len(split))
    builder = prepare(SourceSpec.from_options(tmp_path / "split", {}), tmp_path / "tfds", log=lambda m: None)
    sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
    assert sizes["test"] == 17 * 2 + 3 + 1 and sizes["train"] + sizes["validation"] == 20 * 2 + 3 + 1
    assert sizes["validation"] > 0
    assert about(builder.info)["split_rule"].startswith("as the folders are (train/, test/); validation: 10 % of")


def test_data_where_a_recipe_belongs_is_named_with_what_to_do(tmp_path):
    csv = _learnable_csv(tmp_path / "data" / "t.csv")
    result = run_cli("train", csv)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"'{csv}' is data, not a recipe: write a recipe for it with `kerakit new NAME --from {csv} --label " \
           "COLUMN`" in result.stderr


@pytest.mark.slow
def test_new_then_build_from_a_messy_table_photos_and_texts_ends_in_verified_artifacts(tmp_path):
    """As a user would: a project folder with data/ (a table, photos, texts), `kerakit new`, `kerakit build`,
    and a rerun that prepares nothing."""
    from messy_files import notes, photos

    project = tmp_path / "project"
    _learnable_csv(project / "data" / "visits.csv", note=True)
    photos(project / "data" / "shapes")
    notes(project / "data" / "reviews")
    env = {"TFDS_DATA_DIR": str(tmp_path / "tfds")}
    made = run_cli("new", "visits", "--from", "data/visits.csv", "--label", "outcome", cwd=project, env=env)
    assert made.returncode == 0, made.stderr
    assert "Recipe written to recipes/visits.py" in made.stdout
    recipe = (project / "recipes" / "visits.py").read_text()
    assert 'DATASET = "data/visits.csv"' in recipe and "NUMBERS = ['x1', 'x2']" in recipe
    assert "CATEGORIES = ['site']" in recipe and "MISSING_FLAGS = ['x2']" in recipe and "TEXT = ['note']" in recipe
    refused = run_cli("new", "visits", "--from", "data/visits.csv", "--label", "outcome", cwd=project, env=env)
    assert refused.returncode == 1 and "recipes/visits.py exists: pick another NAME, or pass --force" in refused.stderr
    assert run_cli("new", "shapes", "--from", "data/shapes", cwd=project, env=env).returncode == 0
    text = run_cli("new", "reviews", "--from", "data/reviews", cwd=project, env=env)
    assert text.returncode == 0 and "skipped: not a text file [rows/values: complaint/scan.png]" in text.stdout
    for name in ("visits", "shapes", "reviews"):
        # The image recipe's default is ImageNet weights (offline here): the compact CNN learns from scratch; 3
        # fine-tuning epochs still run build through both phases (the default 15 doubled the test's time).
        offline = ["weights=none", "backbone=small_cnn", "fine_tune_epochs=3"] if name == "shapes" else []
        built = run_cli("build", name, "--target", "server", "--out", f"runs/{name}", "epochs=15", *offline,
                        cwd=project, env=env, timeout=600)
        assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
        assert "Preparing" in built.stdout
        rows = json.loads((project / "runs" / name / "export" / "export_report.json").read_text())["artifacts"]
        assert {r["artifact"]: r["verdict"] for r in rows} == {"savedmodel": "verified", "onnx": "verified"}
        manifest = json.loads((project / "runs" / name / "manifest.json").read_text())
        assert manifest["data"]["records_hashed"] == "all" and manifest["data"]["version"].startswith("1.0.0 (content c")
        assert manifest["data"]["source"]["split_rule"].startswith("stratified by")
    card = (project / "runs" / "shapes" / "report" / "model_card.md").read_text()  # the data report is a section
    assert "(`kerakit data`: " in card and "| unreadable_files | 1 | 1 image file(s) skipped" in card
    metrics = json.loads((project / "runs" / "visits" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.8  # the rule is learnable; a broken feature vector is not
    again = run_cli("train", "visits", "--out", "runs/again", "epochs=1", cwd=project, env=env, timeout=600)
    assert again.returncode == 0 and "Preparing" not in again.stdout


def test_a_large_table_streams_in_chunks_and_still_sees_every_row(tmp_path, monkeypatch):
    """Shrunk limits stand in for a file larger than memory: 3,000 rows read 500 at a time."""
    from kerakit.sources import table as tables
    from kerakit.sources.prepare import SourceSpec, about, prepare

    monkeypatch.setattr(tables, "STREAM_ABOVE", 10_000)
    monkeypatch.setattr(tables, "SAMPLE_ROWS", 400)
    monkeypatch.setattr(tables, "CHUNK_ROWS", 500)
    frame = penguins(3000)
    frame.loc[2900:, "species"] = "Emperor"  # a class that only the end of the file has
    frame["colony"] = np.arange(3000) // 10
    frame["row"] = np.arange(3000)
    frame.to_csv(tmp_path / "big.csv", index=False)
    report = data_report(tmp_path / "big.csv", label="species")
    assert report["read_as"].startswith("big.csv (first 400 rows of 0 MiB; comma-separated")
    builder = prepare(SourceSpec.from_options(tmp_path / "big.csv", {"label": "species"}), tmp_path / "tfds",
                      log=lambda m: None)
    sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
    assert sum(sizes.values()) == 3000 and 2300 < sizes["train"] < 2500
    assert builder.info.features["label"].names == ["Adelie", "Chinstrap", "Emperor", "Gentoo"]
    rows = [int(x["row"]) for x in builder.as_dataset(split="train").as_numpy_iterator()]
    assert rows == sorted(rows)  # in the file's order
    assert about(builder.info)["split_rule"] == ("shuffled per row, seed 0, as it streams (stratified in "
                                                 "expectation): train 80%, validation 10%, test 10%")
    grouped = prepare(SourceSpec.from_options(tmp_path / "big.csv", {"label": "species", "group": "colony"}),
                      tmp_path / "tfds", log=lambda m: None)
    colonies = {split: {int(x["colony"]) for x in grouped.as_dataset(split=split).as_numpy_iterator()}
                for split in ("train", "validation", "test")}
    assert not (colonies["train"] & colonies["test"]) and not (colonies["train"] & colonies["validation"])
    with pytest.raises(KerakitError, match=r"time='colony' needs the whole table in memory"):
        prepare(SourceSpec.from_options(tmp_path / "big.csv", {"label": "species", "time": "colony"}),
                tmp_path / "tfds", log=lambda m: None)


@pytest.mark.parametrize("file_mark", [",", "."])
def test_a_column_written_with_the_other_decimal_mark_is_read_with_its_own_and_flagged(tmp_path, file_mark):
    """A hand-made `;` export: bill_mm with the file's decimal mark, mass_kg with the other one ("4.25" in a ','
    file, "4,25" in a '.' file). Read with the file's mark, "4.25" became 425 (its dot taken for a thousands
    separator) and "4,25" was no number (the column a category). Each column is read with its own mark, in the
    report and in the prepared dataset, and the odd one is flagged."""
    from kerakit.sources.prepare import SourceSpec, prepare

    frame = penguins(200)
    other = "." if file_mark == "," else ","
    masses = np.round(np.random.default_rng(1).normal(4.2, 0.5, len(frame)), 2)
    frame["mass_kg"] = [f"{m:.2f}".replace(".", other) for m in masses]
    frame["bill_mm"] = frame["bill_mm"].astype(str).str.replace(".", file_mark)
    frame.loc[3, "mass_kg"] = "NA"
    (tmp_path / "mixed.csv").write_bytes(frame.to_csv(sep=";", index=False).encode("latin-1"))
    report = data_report(tmp_path / "mixed.csv", label="species")
    assert report["read_as"].endswith(f"decimal mark {file_mark!r})")
    assert report["types"]["mass_kg"] == report["types"]["bill_mm"] == "number"
    mass = next(c for c in report["columns"] if c["column"] == "mass_kg")
    assert mass["median"] == pytest.approx(np.median(np.delete(masses, 3)), abs=0.01) and mass["max"] < 10
    flag = next(f for f in report["flags"] if f["check"] == "decimal_mark")
    assert flag["message"] == (f"column 'mass_kg' writes decimals with {other!r} where the file's numbers use "
                               f"{file_mark!r}; its cells are read with {other!r}")
    assert not any("bill_mm" in f["message"] for f in report["flags"] if f["check"] == "decimal_mark")
    builder = prepare(SourceSpec.from_options(tmp_path / "mixed.csv", {"label": "species"}), tmp_path / "tfds",
                      log=lambda m: None)
    prepared = np.concatenate([[x["mass_kg"] for x in builder.as_dataset(split=split).as_numpy_iterator()]
                               for split in ("train", "validation", "test")])
    assert np.isnan(prepared).sum() == 1
    assert sorted(prepared[~np.isnan(prepared)]) == pytest.approx(sorted(np.delete(masses, 3)), abs=1e-5)


# --------------------------------------------------------------------------- several labels (multi-output)

MASS = "Body mass (g)"


def _two_label_csv(path, n=400, seed=0, rare=True):
    """Penguins with two labels: species (a category; Chinstrap rare with `rare`) and body mass in grams (a
    number, decimal commas), exported the European way (`;`, latin-1, "NA" and "." for missing, a word in a
    number column). `code` gives the species away and `mass_lb` the mass: each leaks one label."""
    rng = np.random.default_rng(seed)
    island = rng.choice(["Biscoe", "Dream", "Torgersen"], n, p=[0.45, 0.35, 0.2])
    bill = rng.normal(44, 4, n)
    chinstrap = (island == "Dream") & (bill > (48 if rare else 44))
    species = np.where(island == "Biscoe", "Gentoo", np.where(chinstrap, "Chinstrap", "Adelie"))
    flipper = np.round(rng.normal(200, 12, n), 1)
    mass = np.round(3500 + 40 * (flipper - 200) + 900 * (species == "Gentoo") + rng.normal(0, 120, n), 1)
    frame = pd.DataFrame({"id": [f"P{i:04d}" for i in range(n)], "island": island, "bill_mm": np.round(bill, 1),
                          "flipper_mm": flipper, "observer": np.where(np.arange(n) % 3, "Zoé", "Renée"),
                          "species": species, MASS: mass, "mass_lb": np.round(mass / 453.6, 2),
                          "code": [s[:2].upper() for s in species]}).astype(str)
    for column in ("bill_mm", "flipper_mm", MASS, "mass_lb"):
        frame[column] = frame[column].str.replace(".", ",")
    frame.loc[[4, n // 10, n // 5], "bill_mm"] = "NA"
    frame.loc[3 * n // 10, "flipper_mm"] = "."
    frame.loc[7, "bill_mm"] = "unknown"
    frame.loc[frame.index[frame["island"] == "Biscoe"][:3], "island"] = "biscoe "
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(frame.to_csv(sep=";", index=False).encode("latin-1"))
    return path, frame


def test_two_labels_are_each_checked_split_on_the_category_and_prepared_as_their_own_features(tmp_path):
    from kerakit.sources.prepare import SourceSpec, about, prepare

    csv, frame = _two_label_csv(tmp_path / "penguins.csv")
    report = data_report(csv, label=f"{MASS},species")  # the number first: the split still stratifies by species
    assert report["label"] == [MASS, "species"] and report["task"] == "regression"
    assert report["tasks"] == {MASS: "regression", "species": "classification"}
    assert report["split_rule"] == (f"stratified by species (the first category label of {MASS}, species), "
                                    "seed 0: train 80%, validation 10%, test 10%")
    shares = frame["species"].value_counts(normalize=True)
    for split in ("train", "test"):
        counts = pd.Series(report["splits"][split]["classes"])
        assert np.allclose((counts / counts.sum()).sort_index(), shares.sort_index(), atol=0.03)
    flags = {f["check"]: [g for g in report["flags"] if g["check"] == f["check"]] for f in report["flags"]}
    leaks = sorted(f["message"].split(" (cross-validated")[0] for f in flags["target_leakage"])
    assert leaks == ["column 'code' alone predicts 'species'", f"column 'mass_lb' alone predicts '{MASS}'"]
    assert [f["message"].split(":")[0] for f in flags["class_imbalance"]] == ["label 'species'"]
    assert "class 'Chinstrap'" in flags["class_imbalance"][0]["message"]
    assert flags["mixed_types"][0]["examples"] == [8] and flags["spelling_variants"][0]["examples"] == \
        ["Biscoe / biscoe "]
    assert not any(MASS in f["message"] or "'species'" in f["message"] for f in flags["disguised_missing"])

    builder = prepare(SourceSpec.from_options(csv, {"label": [MASS, "species"]}), tmp_path / "tfds",
                      log=lambda m: None)
    info = builder.info
    assert about(info)["labels"] == {"body_mass_g": {"column": MASS, "task": "regression", "classes": None},
                                     "species": {"column": "species", "task": "classification",
                                                 "classes": ["Adelie", "Chinstrap", "Gentoo"]}}
    assert about(info)["split_rule"] == report["split_rule"] and "label" not in info.features
    assert info.features["species"].names == ["Adelie", "Chinstrap", "Gentoo"]
    assert info.features["body_mass_g"].dtype.name == "float32"
    want = frame.set_index("id")
    seen = 0
    for split in ("train", "validation", "test"):
        for example in builder.as_dataset(split=split).as_numpy_iterator():
            row = want.loc[example["id"].decode()]
            assert info.features["species"].names[example["species"]] == row["species"]
            assert example["body_mass_g"] == pytest.approx(float(row[MASS].replace(",", ".")), abs=0.05)
            seen += 1
    assert seen == len(frame) == sum(report["splits"][s]["rows"] for s in report["splits"])


def test_a_row_without_one_of_its_labels_is_refused_naming_the_column_and_rows(tmp_path):
    from kerakit.sources.prepare import SourceSpec, prepare

    csv, frame = _two_label_csv(tmp_path / "gaps.csv", n=120)
    frame.loc[[2, 8], MASS] = "NA"
    csv.write_bytes(frame.to_csv(sep=";", index=False).encode("latin-1"))
    message = (f"gaps.csv: 2 row(s) have no label in column '{MASS}' (data rows 3, 9). Drop them or fill them in; "
               "or leave the column out of the labels.")
    with pytest.raises(KerakitError) as e:
        data_report(csv, label=["species", MASS])
    assert str(e.value) == message
    with pytest.raises(KerakitError) as e:  # preparation refuses it too, and leaves no dataset behind
        prepare(SourceSpec.from_options(csv, {"label": ["species", MASS]}), tmp_path / "tfds", log=lambda m: None)
    assert str(e.value) == message and not list((tmp_path / "tfds").rglob("dataset_info.json"))
    assert data_report(csv, label="species")["label"] == "species"  # without that label, every row is labelled
    frame.loc[[2, 8], MASS] = ["3500", "about 4 kg"]
    csv.write_bytes(frame.to_csv(sep=";", index=False).encode("latin-1"))
    with pytest.raises(KerakitError, match=rf"^gaps.csv: 1 row\(s\) hold text, not a number, in the number label "
                                           rf"column '{re.escape(MASS)}' \(data rows 9: 'about 4 kg'\)"):
        data_report(csv, label=["species", MASS])


@pytest.mark.parametrize("label, options, message", [
    ("species,species", {}, "Label column 'species' is named twice in species, species: name each label column "
                            "once."),
    ("species,weight", {}, "Unknown label column 'weight' in t.csv. Columns: id, island, bill_mm, flipper_mm"),
    ("species,island", {"group": "island"}, "Column 'island' is both a label and the group column: a label cannot "
                                            "decide the split"),
    ("island", {"time": "island"}, "Column 'island' is both a label and the time column"),
    (["species", MASS], {"task": "classification"}, "task='classification' is the task of one label, and there "
                                                    f"are 2 (species, {MASS})"),
    ("species,", {}, "Invalid label 'species,': name a column, or several (`kerakit data` and `kerakit new` take "
                     "--label species,body_mass_g; a recipe's SOURCE takes label=['species', 'body_mass_g'])"),
])
def test_a_bad_label_list_gets_one_line(tmp_path, label, options, message):
    csv, _ = _two_label_csv(tmp_path / "t.csv", n=60)
    with pytest.raises(KerakitError) as e:
        data_report(csv, label=label, **options)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_new_writes_one_named_output_per_label_and_refuses_a_label_named_twice(tmp_path):
    import keras

    from kerakit.recipe import load_recipe
    from kerakit.sources import new_recipe

    csv, _ = _two_label_csv(tmp_path / "data" / "penguins.csv", n=200)
    report, text = new_recipe("penguins", csv, label=f"species,{MASS}")
    assert f"SOURCE = dict(label=['species', '{MASS}'], seed=0)" in text
    assert ("OUTPUTS = {\n    'species': 'classification',  # column 'species'\n"
            f"    'body_mass_g': 'regression',  # column '{MASS}'\n}}") in text
    assert "'code': 'it alone predicts the label (leakage?)'" in text and "'mass_lb': 'it alone" in text
    (tmp_path / "penguins.py").write_text(text)
    recipe = load_recipe(tmp_path / "penguins.py")
    assert recipe.task == "classification" and recipe.outputs == {"species": "classification",
                                                                  "body_mass_g": "regression"}
    assert recipe.monitor == "val_species_accuracy" and recipe.label_key == "species"
    # The contract is checked: TASK is the first output's, and the model's outputs are OUTPUTS, in order.
    (tmp_path / "swapped.py").write_text(text.replace('TASK = "classification"', 'TASK = "regression"'))
    with pytest.raises(KerakitError, match=r"TASK='regression', but the first of OUTPUTS, 'species', is "
                                           r"classification: TASK and METRIC are the first output's"):
        load_recipe(tmp_path / "swapped.py")
    x = keras.Input((2,), name="features")
    reversed_model = keras.Model(x, [keras.layers.Dense(1, name="body_mass_g")(x),
                                     keras.layers.Dense(3, name="species")(x)])
    with pytest.raises(KerakitError, match=r"the model's outputs are \['body_mass_g', 'species'\], and OUTPUTS "
                                           r"declares \['species', 'body_mass_g'\]"):
        recipe.check_outputs(reversed_model)
    refused = run_cli("new", "twice", "--from", csv, "--label", "species,species", "--out-dir", tmp_path / "r")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == ("error: Label column 'species' is named twice in species, "
                                                       "species: name each label column once.")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_new_then_build_with_two_labels_trains_exports_and_verifies_each_output_by_name(tmp_path):
    """`kerakit new --label species,"Body mass (g)"`, then `kerakit build`: one model, one named output per label
    (a class head, a regression head in grams), each judged on its own test labels in every artifact."""
    import keras

    project = tmp_path / "project"
    _two_label_csv(project / "data" / "penguins.csv", rare=False)
    env = {"TFDS_DATA_DIR": str(tmp_path / "tfds")}
    made = run_cli("new", "penguins", "--from", "data/penguins.csv", "--label", f"species,{MASS}", cwd=project,
                   env=env)
    assert made.returncode == 0, made.stderr
    assert f"labels 'species' (classification), '{MASS}' (regression)" in made.stdout
    built = run_cli("build", "penguins", "--target", "server", "--out", "runs/penguins", "epochs=10", cwd=project,
                    env=env, timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    run = project / "runs" / "penguins"
    model = keras.saving.load_model(run / "model.keras")
    assert model.output_names == ["species", "body_mass_g"]
    assert [tuple(o.shape) for o in model.outputs] == [(None, 3), (None, 1)]
    rows = json.loads((run / "export" / "export_report.json").read_text())["artifacts"]
    assert {r["artifact"]: r["verdict"] for r in rows} == {"savedmodel": "verified", "onnx": "verified"}
    for row in rows:
        assert {name: (m["judged_on"], m["metric"]) for name, m in row["output_metrics"].items()} == \
            {"species": ("labels", "accuracy"), "body_mass_g": ("labels", "mae")}
    metrics = json.loads((run / "metrics.json").read_text())
    # Both outputs learned their rule: species from island and bill, the mass (in grams, std ~650) from flipper and
    # species; the run is judged by the first output, whose validation accuracy picked the best epoch.
    assert metrics["accuracy"] == metrics["outputs"]["species"]["accuracy"] >= 0.8
    assert metrics["outputs"]["body_mass_g"]["r2"] >= 0.5 and metrics["outputs"]["body_mass_g"]["mae"] < 400
    assert json.loads((run / "manifest.json").read_text())["training"]["best_val_species_accuracy"] >= 0.8
    # Any artifact is evaluated output by output, each on its own labels; --metric-output picks the headline.
    scored = run_cli("evaluate", "runs/penguins/export/model.onnx", "--metric-output", "body_mass_g", "--json",
                     cwd=project, env=env)
    assert scored.returncode == 0, scored.stderr
    scored = json.loads(scored.stdout)
    assert scored["output"] == "body_mass_g" and scored["mae"] == scored["outputs"]["body_mass_g"]["mae"]
    assert scored["outputs"]["body_mass_g"]["mae"] == pytest.approx(metrics["outputs"]["body_mass_g"]["mae"],
                                                                    rel=1e-3)
    assert scored["outputs"]["species"]["accuracy"] == metrics["accuracy"]
