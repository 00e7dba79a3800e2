"""The data checks a careful practitioner runs before training, on a table as the file has it.

    report = table_report(read_table("penguins.csv"), label="species")
    report["flags"][0]  # {'check': 'duplicates_across_splits', 'count': 4, 'examples': [...], 'message': '...'}

Deepchecks' data-integrity and train-test-validation suites are the list this
follows: missing values (disguised ones such as "NA", ".", "?" included), constant
and near-constant columns, mixed types in one column, one category spelled
several ways, duplicate rows within a split and across splits (train/test
leakage), the same features with different labels, a column that alone
predicts the label (target leakage, or an identifier that follows the label
order), identifier-like columns, outliers and class imbalance. Every problem is
a flag with a count and a few example rows (1-based data row numbers, the header
not counted) or values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kerakit.errors import KerakitError
from kerakit.sources.folder import SPLIT_FOLDERS
from kerakit.sources.splits import NAMES, RATIOS, split_labels
from kerakit.sources.table import ONLY_DECIMAL, Table, as_numbers, column_decimal, infer_types, missing_mask

EXAMPLES = 5
NEAR_CONSTANT = 0.99      # a column whose most common value fills this share of its rows
IMBALANCE = 0.2           # smallest class / largest class below this: imbalanced
LEAKAGE_SCORE = 0.95      # a single column's cross-validated predictive power at least this: leakage
OUTLIER_Z = 6.0           # robust z-score (median / 1.4826 MAD) beyond this: an outlier
LEAKAGE_ROWS = 20_000     # rows the single-column models see (a sample of a larger table)


def table_report(table: Table, label: "str | list[str] | None" = None, *, types: dict | None = None, seed: int = 0,
                 group: str | None = None, time: str | None = None, task: str | None = None,
                 ratios=RATIOS) -> dict:
    """The data report of a table: its columns and types, the split it would get, and the flags.

    `label`: one column, or several (a list, or names joined by commas) for a multi-output model; each label is
    checked on its own (missing values, conflicts, leakage, imbalance)."""
    frame = table.frame
    labels = label_columns(label, list(frame.columns), table.path.name, group=group, time=time)
    types = infer_types(frame, table.decimal, types)
    tasks = label_tasks(labels, types, task)
    check_labelled(table.path.name, frame, tasks, table.decimal)
    splits, rule = split_labels(frame, tasks, seed=seed, ratios=ratios, group=group, time=time)
    features = [c for c in frame.columns if c not in tasks]
    keys = _row_hashes(frame, features)  # one hash of each row's features, for duplicates and conflicts
    flags = [*_missing(frame, features), *_constant(frame, features), *_decimal_marks(frame, types, table.decimal),
             *_mixed(frame, types, table.decimal),
             *_spellings(frame, types, labels), *_duplicates(frame, features, labels, splits, keys),
             *_identifiers(frame, types, features), *_outliers(frame, types, table.decimal)]
    for column, kind in tasks.items():
        flags += [*_conflicts(frame, keys, column), *_leakage(frame, types, features, column, kind, table.decimal)]
        if kind == "classification":
            flags += _imbalance(frame[column], column)
    return {"source": str(table.path), "read_as": table.describe(), "rows": len(frame),
            "label": labels[0] if len(labels) == 1 else (labels or None),
            "task": next(iter(tasks.values()), None), "tasks": tasks, "types": types, "split_rule": rule,
            "splits": _split_counts(frame, tasks, splits), "columns": _column_summary(frame, types, table.decimal),
            "flags": flags}


def label_columns(label, columns: list[str], name: str, *, group: str | None = None,
                  time: str | None = None) -> list[str]:
    """The label columns: none, one, or several (a list, or names joined by commas: "species,body_mass_g"; a
    column whose own name holds a comma is one label). One clear error for a label that is no column, a column
    named twice, or a label that is also the group or time column."""
    if label is None:
        return []
    if isinstance(label, str):
        labels = [label] if label in columns else [part.strip() for part in label.split(",")]
    elif isinstance(label, (list, tuple)) and all(isinstance(c, str) for c in label):
        labels = [c.strip() for c in label]
    else:
        raise KerakitError(f"Invalid label {label!r}: expected a column name or a list of them, e.g. "
                           "label=['species', 'body_mass_g'].")
    if not labels or "" in labels:
        raise KerakitError(f"Invalid label {label!r}: name a column, or several (`kerakit data` and `kerakit new` "
                           "take --label species,body_mass_g; a recipe's SOURCE takes label=['species', "
                           "'body_mass_g']).")
    for column in labels:
        if column not in columns:
            raise KerakitError(f"Unknown label column {column!r} in {name}. Columns: {', '.join(columns)}.")
        if labels.count(column) > 1:
            raise KerakitError(f"Label column {column!r} is named twice in {', '.join(labels)}: name each label "
                               "column once.")
        for role, split_column in (("group", group), ("time", time)):
            if column == split_column:
                raise KerakitError(f"Column {column!r} is both a label and the {role} column: a label cannot "
                                   f"decide the split; split by another column (`kerakit data` and `kerakit new` "
                                   f"take --{role}; a recipe's SOURCE takes {role}=) or predict another.")
    return labels


def label_tasks(labels: list[str], types: dict, task: str | None = None) -> dict[str, str]:
    """{label column: task}, in order: regression for a number label, else classification; `task` overrides
    the one label's."""
    if task is not None and len(labels) > 1:
        raise KerakitError(f"task={task!r} is the task of one label, and there are {len(labels)} "
                           f"({', '.join(labels)}): each label's task follows its type (number: regression, any "
                           "other: classification); give a number column of class codes the type category "
                           "(`kerakit data` and `kerakit new` take --type COLUMN=category; a recipe's SOURCE takes "
                           "types={COLUMN: 'category'}).")
    if task is not None and labels:
        return {labels[0]: task}
    return {c: "regression" if types[c] == "number" else "classification" for c in labels}


def check_labelled(name: str, frame, tasks: dict[str, str], decimal: str, first_row: int = 0) -> None:
    """Every row has every label (a number where the label is regression's), or one error naming the column and
    the rows. A row without one of several labels is refused like a row without the one label: no output is
    trained on a guess, and no row is dropped unsaid (`first_row`: where a streamed chunk starts)."""
    for column, task in tasks.items():
        missing = missing_mask(frame[column])
        several = "; or leave the column out of the labels" if len(tasks) > 1 else ""
        if missing.any():
            raise KerakitError(f"{name}: {int(missing.sum())} row(s) have no label in column {column!r} "
                               f"(data rows {_row_list(missing, first_row)}). Drop them or fill them in{several}.")
        text = ~np.isfinite(as_numbers(frame[column], decimal)) if task == "regression" else missing
        if text.any():
            values = ", ".join(repr(v) for v in frame[column][text].unique()[:3])
            raise KerakitError(f"{name}: {int(text.sum())} row(s) hold text, not a number, in the number label "
                               f"column {column!r} (data rows {_row_list(text, first_row)}: {values}). Fix them "
                               f"or drop them{several}.")


def _flag(check: str, count: int, message: str, examples=()) -> dict:
    return {"check": check, "count": int(count), "examples": [_plain(e) for e in list(examples)[:EXAMPLES]],
            "message": message}


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _row_list(mask, first_row: int = 0) -> str:
    return ", ".join(str(first_row + int(i) + 1) for i in np.flatnonzero(mask)[:EXAMPLES])


def _rows(mask) -> list[int]:
    """1-based data row numbers of a mask's true cells (the header not counted)."""
    return [int(i) + 1 for i in np.flatnonzero(mask)[:EXAMPLES]]


def _split_counts(frame, tasks: dict[str, str], splits) -> dict:
    """Rows per split, and the classes of the label the split is stratified by (the first category label)."""
    label = next((c for c, task in tasks.items() if task == "classification"), None)
    counts = {}
    for name in NAMES:
        part = splits == name
        entry = {"rows": int(part.sum())}
        if label is not None:
            entry["classes"] = {str(k): int(v) for k, v in frame[label][part].value_counts().sort_index().items()}
        counts[name] = entry
    return counts


def _column_summary(frame, types: dict, decimal: str) -> list[dict]:
    rows = []
    for column in frame.columns:
        values, missing = frame[column], missing_mask(frame[column])
        entry = {"column": column, "type": types[column], "missing": int(missing.sum()),
                 "distinct": int(values[~missing].str.strip().nunique())}
        if types[column] == "number":
            numbers = as_numbers(values[~missing], decimal)
            numbers = numbers[np.isfinite(numbers)]
            if len(numbers):
                entry.update(min=float(numbers.min()), median=float(np.median(numbers)), max=float(numbers.max()))
        rows.append(entry)
    return rows


def _missing(frame, features) -> list[dict]:
    flags = []
    for column in features:
        stripped = frame[column].str.strip()
        empty = (stripped == "").to_numpy()
        disguised = missing_mask(frame[column]) & ~empty
        if empty.any():
            flags.append(_flag("missing_values", empty.sum(), f"column {column!r}: {empty.sum()} empty cell(s)",
                               _rows(empty)))
        if disguised.any():
            tokens = sorted(set(stripped[disguised]))
            flags.append(_flag("disguised_missing", disguised.sum(),
                               f"column {column!r}: {disguised.sum()} cell(s) hold a missing-value marker "
                               f"({', '.join(repr(t) for t in tokens)}); they are read as missing", _rows(disguised)))
    return flags


def _constant(frame, features) -> list[dict]:
    flags = []
    for column in features:
        present = frame[column][~missing_mask(frame[column])].str.strip()
        if len(present) == 0:
            flags.append(_flag("constant", len(frame), f"column {column!r} is empty in every row"))
            continue
        top = present.value_counts()
        share = top.iloc[0] / len(present)
        if len(top) == 1:
            flags.append(_flag("constant", len(present), f"column {column!r} has one value ({top.index[0]!r}) "
                               "in every row: it carries no information"))
        elif share >= NEAR_CONSTANT:
            flags.append(_flag("near_constant", len(present) - top.iloc[0],
                               f"column {column!r}: {share:.1%} of rows hold {top.index[0]!r}",
                               list(top.index[1:])))
    return flags


def _decimal_marks(frame, types: dict, decimal: str) -> list[dict]:
    """A number column that writes its decimals with the other mark than the rest of the file ("15,3" in a '.'
    file): read with its own (`column_decimal`), and said, since a tool reading the file whole would not."""
    flags = []
    for column, kind in types.items():
        values = frame[column]
        mark = column_decimal(values, decimal) if kind == "number" else decimal
        if mark != decimal:
            written = values[values.str.strip().str.fullmatch(ONLY_DECIMAL[mark])]
            flags.append(_flag("decimal_mark", len(written), f"column {column!r} writes decimals with {mark!r} where "
                               f"the file's numbers use {decimal!r}; its cells are read with {mark!r}",
                               list(written.head(EXAMPLES))))
    return flags


def _mixed(frame, types: dict, decimal: str) -> list[dict]:
    """Numbers with a few strings among them (a number column), or numbers mixed into a category column."""
    flags = []
    for column, kind in types.items():
        values = frame[column]
        present = ~missing_mask(values)
        numeric = np.isfinite(as_numbers(values, decimal)) & present
        strings = present & ~numeric
        if kind == "number" and strings.any():
            flags.append(_flag("mixed_types", strings.sum(), f"column {column!r} holds numbers and "
                               f"{strings.sum()} text value(s) ({', '.join(repr(v) for v in sorted(set(values[strings]))[:3])}); "
                               "they are read as missing", _rows(strings)))
        elif kind == "category" and 0.05 <= numeric.sum() / max(present.sum(), 1) < 0.95:
            flags.append(_flag("mixed_types", numeric.sum(), f"column {column!r} mixes {numeric.sum()} numbers "
                               f"with {strings.sum()} text values", _rows(numeric)))
    return flags


def _spellings(frame, types: dict, labels: list[str]) -> list[dict]:
    """One category written several ways ("Biscoe", "biscoe ", "BISCOE")."""
    flags = []
    for column, kind in types.items():
        if kind not in ("category", "boolean") and column not in labels:
            continue
        values = frame[column][~missing_mask(frame[column])]
        spellings: dict[str, set] = {}
        for value in values.unique():
            spellings.setdefault(" ".join(value.split()).casefold(), set()).add(value)
        variants = [sorted(s) for s in spellings.values() if len(s) > 1]
        if variants:
            rows = values.isin([v for group in variants for v in group[1:]]).sum()
            flags.append(_flag("spelling_variants", rows, f"column {column!r}: {len(variants)} value(s) spelled "
                               f"several ways, e.g. {' / '.join(repr(v) for v in variants[0])}",
                               [" / ".join(group) for group in variants]))
    return flags


def _normalized(frame, columns) -> "object":
    """Row keys for duplicate checks: cells stripped, missing markers as one value."""
    import pandas as pd

    return pd.DataFrame({c: np.where(missing_mask(frame[c]), "", frame[c].str.strip()) for c in columns})


def _row_hashes(frame, columns) -> np.ndarray:
    """One 64-bit hash per row of the normalized cells (pandas' vectorised hashing: a tuple per row took
    11 s for 100,000 rows)."""
    import pandas as pd

    return pd.util.hash_pandas_object(_normalized(frame, columns), index=False).to_numpy()


def _duplicates(frame, features, labels: list[str], splits, feature_keys) -> list[dict]:
    keys = _normalized(frame, [*features, *labels])
    flags = []
    repeated = keys.duplicated(keep="first").to_numpy()
    if repeated.any():
        flags.append(_flag("duplicate_rows", repeated.sum(), f"{repeated.sum()} row(s) repeat an earlier row "
                           "exactly", _rows(repeated)))
    leaked = (splits != "train") & np.isin(feature_keys, feature_keys[splits == "train"])
    if leaked.any():
        flags.append(_flag("duplicates_across_splits", leaked.sum(), f"{leaked.sum()} validation/test row(s) have "
                           "the same features as a training row: the score on them measures memory, not "
                           "generalization (train/test leakage); drop them, or keep related rows in one split "
                           "(`kerakit data` and `kerakit new` take --group COLUMN; a recipe's SOURCE takes group=)",
                           _rows(leaked)))
    return flags


def _conflicts(frame, keys, label) -> list[dict]:
    per_key = frame[label].str.strip().groupby(keys).nunique()
    conflicting = np.isin(keys, per_key.index[per_key > 1].to_numpy())
    if not conflicting.any():
        return []
    return [_flag("conflicting_labels", conflicting.sum(), f"{conflicting.sum()} row(s) share their features "
                  f"with a row of another {label!r}: no model can get both right", _rows(conflicting))]


def _identifiers(frame, types: dict, features) -> list[dict]:
    flags = []
    for column in features:
        present = frame[column][~missing_mask(frame[column])]
        unique = len(present) >= 20 and present.nunique() == len(present)
        if types[column] == "identifier" or (unique and types[column] in ("number", "category")
                                            and _integers(present)):
            flags.append(_flag("identifier", len(present), f"column {column!r} looks like an identifier (a distinct "
                               "value in every row): it cannot generalize; drop it, or split by it (`kerakit data` "
                               "and `kerakit new` take --group; a recipe's SOURCE takes group=)", list(present[:3])))
    return flags


def _integers(values) -> bool:
    return bool(values.str.fullmatch(r"[A-Za-z_-]*\d+").all())


def _outliers(frame, types: dict, decimal: str) -> list[dict]:
    flags = []
    for column, kind in types.items():
        if kind != "number":
            continue
        numbers = as_numbers(frame[column], decimal)
        finite = np.isfinite(numbers)
        if finite.sum() < 20:
            continue
        median = np.median(numbers[finite])
        mad = np.median(np.abs(numbers[finite] - median)) * 1.4826
        if mad == 0:
            continue
        far = finite & (np.abs(np.where(finite, numbers, median) - median) / mad > OUTLIER_Z)
        if far.any():
            flags.append(_flag("outliers", far.sum(), f"column {column!r}: {far.sum()} value(s) more than "
                               f"{OUTLIER_Z:g} robust standard deviations from the median {median:.4g} "
                               f"(e.g. {', '.join(f'{v:.4g}' for v in numbers[far][:3])})", _rows(far)))
    return flags


def is_imbalanced(labels) -> bool:
    """Whether a label's smallest class has under IMBALANCE of its largest's rows (the data report's flag, and
    where `kerakit new` weighs classes)."""
    return _skewed(labels.str.strip().value_counts())


def _skewed(counts) -> bool:
    return len(counts) > 1 and counts.iloc[-1] / counts.iloc[0] < IMBALANCE


def _imbalance(labels, column: str | None = None) -> list[dict]:
    counts = labels.str.strip().value_counts()
    if not _skewed(counts):
        return []
    which = f"label {column!r}: " if column else ""
    return [_flag("class_imbalance", counts.iloc[-1], f"{which}class {counts.index[-1]!r} has {counts.iloc[-1]} rows, "
                  f"{counts.iloc[-1] / counts.iloc[0]:.1%} of class {counts.index[0]!r}'s {counts.iloc[0]}: "
                  "accuracy will hide it; weigh classes or judge by macro F1", list(counts.index[-3:]))]


def _leakage(frame, types: dict, features, label, task, decimal) -> list[dict]:
    """A column that alone predicts the label: a depth-4 tree on it, 3-fold cross-validated."""
    from sklearn.model_selection import cross_val_score
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    sample = frame.sample(min(len(frame), LEAKAGE_ROWS), random_state=0) if len(frame) > LEAKAGE_ROWS else frame
    y = sample[label].str.strip().to_numpy() if task == "classification" else as_numbers(sample[label], decimal)
    if task == "classification":
        classes, counts = np.unique(y, return_counts=True)
        if len(classes) < 2 or counts.min() < 3:
            return []
        model, scoring, chance = DecisionTreeClassifier(max_depth=4, random_state=0), "balanced_accuracy", 1 / len(classes)
    else:
        model, scoring, chance = DecisionTreeRegressor(max_depth=4, random_state=0), "r2", 0.0
    flags = []
    for column in features:
        x = _encoded(sample[column], types[column], decimal)
        score = float(np.mean(cross_val_score(model, x, y, cv=3, scoring=scoring)))
        power = (score - chance) / (1 - chance)
        if power >= LEAKAGE_SCORE:
            flags.append(_flag("target_leakage", len(sample), f"column {column!r} alone predicts {label!r} "
                               f"(cross-validated {scoring} {score:.3f}): it is probably derived from the label or "
                               "recorded after it, or the rows are ordered by label; drop it unless it will be "
                               "known at prediction time"))
    return flags


def _encoded(values, kind: str, decimal: str) -> np.ndarray:
    """One column as a feature for the leakage tree: numbers (missing: a value below all), else category codes."""
    if kind == "number":
        numbers = as_numbers(values, decimal)
        finite = np.isfinite(numbers)
        fill = (numbers[finite].min() - 1) if finite.any() else 0.0
        return np.where(finite, numbers, fill).reshape(-1, 1)
    import pandas as pd

    codes, _ = pd.factorize(values.str.strip())
    return codes.reshape(-1, 1).astype(np.float64)


# --------------------------------------------------------------------------- folders of images or text

def folder_report(folder, *, seed: int = 0, ratios=RATIOS) -> dict:
    """The data report of a class-per-folder source (`kerakit.sources.folder.Folder`): files per split and
    class, files skipped and why, undecodable files, duplicates by content within and across splits and
    under two classes, image sizes and modes."""
    import pandas as pd

    from kerakit.sources.folder import file_digest, folder_splits

    broken, sizes, modes = _read_all(folder)
    readable = np.array([str(f.path) not in broken for f in folder.files], dtype=bool)
    files = [f for f, keep in zip(folder.files, readable) if keep]
    labels = pd.Series([f.label for f in files], dtype=str)
    every_split, rule = folder_splits(folder, seed, ratios)  # over every file, as the prepared dataset's
    splits = every_split[readable]
    digests = [file_digest(f.path) for f in files]
    flags = [*_skipped([(_relative(Path(p)), why) for p, why in folder.skipped]),
             *_broken({_relative(Path(p)): why for p, why in broken.items()}, folder.kind),
             *_same_content(files, digests, splits), *_imbalance(labels)]
    counts = {name: {"rows": int((splits == name).sum()),
                     "classes": {str(k): int(v) for k, v in labels[splits == name].value_counts().sort_index().items()}}
              for name in NAMES}
    report = {"source": str(folder.root), "read_as": folder.describe(), "rows": len(files), "label": "label",
              "task": "classification", "kind": folder.kind, "classes": folder.classes, "split_rule": rule,
              "splits": counts, "skipped": len(folder.skipped), "unreadable": len(broken), "flags": flags}
    if folder.kind == "image":
        report["images"] = _image_summary(sizes, modes)
    return report


def _read_all(folder) -> tuple[dict, list, dict]:
    """Decode every file once: ({unreadable path: why}, image sizes, image modes)."""
    from kerakit.sources.folder import read_image, read_text

    broken, sizes, modes = {}, [], {}
    for f in folder.files:
        if folder.kind == "image":
            result = read_image(f.path)
            if result is None:
                broken[str(f.path)] = "cannot be decoded as an image (corrupt, truncated, or not an image)"
                continue
            pixels, mode = result
            sizes.append(pixels.shape[:2])
            modes[mode] = modes.get(mode, 0) + 1
        elif read_text(f.path) is None:
            broken[str(f.path)] = "is binary, not text"
    return broken, sizes, modes


def _skipped(skipped: list) -> list[dict]:
    flags = []
    for why in sorted({w for _, w in skipped}):
        paths = [p for p, w in skipped if w == why]
        flags.append(_flag("skipped_files", len(paths), f"{len(paths)} file(s) skipped: {why}", paths))
    return flags


def _broken(broken: dict, kind: str) -> list[dict]:
    if not broken:
        return []
    return [_flag("unreadable_files", len(broken), f"{len(broken)} {kind} file(s) skipped: "
                  f"{next(iter(broken.values()))}", list(broken))]


def _same_content(files, digests, splits) -> list[dict]:
    """Files with the same bytes: twice in one split, in train and in validation/test, or under two classes."""
    by_digest: dict[str, list[int]] = {}
    for i, d in enumerate(digests):
        by_digest.setdefault(d, []).append(i)
    groups = [g for g in by_digest.values() if len(g) > 1]
    repeated = [i for g in groups for i in g[1:] if any(splits[j] == splits[i] for j in g if j < i)]
    across = [i for g in groups for i in g if splits[i] != "train" and any(splits[j] == "train" for j in g)]
    conflicts = [g for g in groups if len({files[i].label for i in g}) > 1]
    flags = []
    if repeated:
        flags.append(_flag("duplicate_files", len(repeated), f"{len(repeated)} file(s) repeat an earlier file "
                           "of the same split byte for byte", [_relative(files[i].path) for i in repeated]))
    if across:
        flags.append(_flag("duplicates_across_splits", len(across), f"{len(across)} validation/test file(s) are "
                           "byte-for-byte copies of a training file: the score on them measures memory (train/test "
                           "leakage); remove the copies", [_relative(files[i].path) for i in across]))
    if conflicts:
        flags.append(_flag("conflicting_labels", sum(len(g) for g in conflicts), f"{len(conflicts)} file content(s) "
                           "appear under two classes: no model can get both right",
                           [" = ".join(_relative(files[i].path) for i in g) for g in conflicts]))
    return flags


def _relative(path) -> str:
    """class/file.png, or split/class/file.png: a path as it reads under the source folder."""
    parts = path.parts
    return "/".join(parts[-3:] if len(parts) > 2 and parts[-3].lower() in SPLIT_FOLDERS else parts[-2:])


def _image_summary(sizes: list, modes: dict) -> dict:
    if not sizes:
        return {"modes": modes}
    heights, widths = np.array([s[0] for s in sizes]), np.array([s[1] for s in sizes])
    return {"modes": dict(sorted(modes.items())),
            "width": {"min": int(widths.min()), "median": int(np.median(widths)), "max": int(widths.max())},
            "height": {"min": int(heights.min()), "median": int(np.median(heights)), "max": int(heights.max())}}
