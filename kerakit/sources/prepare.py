"""A source prepared once as a real TFDS dataset under the data directory, versioned by its content.

    spec = SourceSpec(Path("data/penguins.csv"), label="species")   # or label=("species", "body_mass_g")
    builder = prepare(spec, data_dir)   # a tfds builder: builder.as_dataset(split="train"), builder.info
    builder.info.config_name            # 'c3f1a0d2e4b5a6978' : the content version

The dataset is written with TFDS's own ad-hoc builder (`store_as_tfds_dataset`)
to DATA_DIR/kerakit_<name>/<content version>/1.0.0, with train, validation and
test splits. The content version is a SHA-256 over every byte of the file (or
over every file's path, size and bytes in a folder) and the options that shape
the dataset (label, dialect, types, split rule): unchanged files prepare
nothing, one changed byte prepares a new version. TFDS writes into an
`incomplete.*` folder and renames it when done, so a killed preparation leaves
nothing a later run takes for a finished dataset.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

import kerakit.sources.folder as folders
import kerakit.sources.splits as splitting
import kerakit.sources.table as tables
from kerakit.errors import KerakitError
from kerakit.sources.checks import check_labelled, folder_report, table_report

TFDS_VERSION = "1.0.0"  # the dataset format's own version; the content is the config name
MEMORY_BUFFER = 64 << 20  # serialized records TFDS holds per split before spilling to disk (its default: 1 GB)


@dataclass(frozen=True)
class SourceSpec:
    """What makes a dataset from a path: the path and every option that changes its records or splits."""

    path: Path
    label: str | tuple | None = None  # one label column, or several (a multi-output model)
    task: str | None = None
    sep: str | None = None
    encoding: str | None = None
    decimal: str | None = None
    types: tuple = ()  # ((column, type), ...)
    seed: int = 0
    group: str | None = None
    time: str | None = None
    split: tuple = splitting.RATIOS

    @classmethod
    def from_options(cls, path: "str | Path", options: dict) -> "SourceSpec":
        allowed = set(cls.__dataclass_fields__) - {"path"}
        unknown = set(options) - allowed
        if unknown:
            raise KerakitError(f"Unknown SOURCE option(s) {', '.join(sorted(unknown))}. Allowed: "
                               f"{', '.join(sorted(allowed))}.")
        options = dict(options)
        options["types"] = tuple(sorted(dict(options.get("types") or {}).items()))
        options["split"] = tuple(float(r) for r in options.get("split", splitting.RATIOS))
        if isinstance(options.get("label"), list):
            options["label"] = tuple(options["label"])
        return cls(Path(path), **options)

    def options(self) -> dict:
        found = asdict(self)
        found.pop("path")
        return found


@dataclass
class Prepared:
    """What a source becomes before TFDS writes it: features, examples per split, and how it was made."""

    features: object  # tfds.features.FeaturesDict
    splits: dict[str, Callable]  # split -> () -> iterator of (key, example)
    about: dict = field(default_factory=dict)


def dataset_name(path: Path) -> str:
    """kerakit_<file or folder name>, in TFDS's naming rule (snake_case)."""
    stem = re.sub(r"[^a-z0-9]+", "_", path.stem.lower()).strip("_") or "data"
    return f"kerakit_{stem}"


def content_version(spec: SourceSpec) -> str:
    """'c' + 16 hex digits of a SHA-256 over the options and every byte of the source."""
    h = hashlib.sha256(json.dumps(spec.options(), sort_keys=True, default=str).encode())
    if spec.path.is_dir():
        for f in sorted(p for p in spec.path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(spec.path)}\0{f.stat().st_size}\0{folders.file_digest(f)}\n".encode())
    else:
        h.update(folders.file_digest(spec.path).encode())
    return "c" + h.hexdigest()[:16]


def dataset_dir(spec: SourceSpec, data_dir: "str | Path") -> Path:
    return Path(data_dir) / dataset_name(spec.path) / content_version(spec) / TFDS_VERSION


def prepare(spec: SourceSpec, data_dir: "str | Path", log: Callable[[str], None] = print):
    """The TFDS builder of `spec`'s dataset, preparing it first unless this content is prepared already."""
    import tensorflow_datasets as tfds

    if not spec.path.exists():
        raise KerakitError(f"Data path {str(spec.path)!r} does not exist.")
    directory = dataset_dir(spec, data_dir)
    if not (directory / "dataset_info.json").exists():
        log(f"Preparing {spec.path} as TFDS dataset {dataset_name(spec.path)} version {directory.parent.name} "
            f"in {data_dir}")
        _write(spec, _prepared(spec), data_dir, directory.parent.name)
    return tfds.builder_from_directory(str(directory))


def _write(spec: SourceSpec, prepared: Prepared, data_dir, version: str) -> None:
    from tensorflow_datasets.core import shuffle
    from tensorflow_datasets.core.dataset_builders import store_as_tfds_dataset

    from kerakit.quiet import muted_stderr

    # TFDS keeps a split's serialized records in memory up to MAX_MEM_BUFFER_SIZE (1 GB) before it spills
    # them to its on-disk buckets: preparing a 4M-row CSV peaked at 1.6 GB RSS. A smaller buffer keeps
    # memory flat in the file's size (bench: BENCH=data).
    buffer, shuffle.MAX_MEM_BUFFER_SIZE = shuffle.MAX_MEM_BUFFER_SIZE, MEMORY_BUFFER
    try:
        with muted_stderr():  # TFDS's progress bars
            store_as_tfds_dataset(name=dataset_name(spec.path), version=TFDS_VERSION, config=version,
                                  features=prepared.features, data_dir=str(data_dir), disable_shuffling=True,
                                  split_datasets={k: fn() for k, fn in prepared.splits.items()},
                                  description=json.dumps(prepared.about, sort_keys=True))
    finally:
        shuffle.MAX_MEM_BUFFER_SIZE = buffer


def about(spec_or_info) -> dict:
    """How a prepared dataset was made (source, split rule, columns), from its DatasetInfo."""
    try:
        return json.loads(spec_or_info.description)
    except (TypeError, ValueError):
        return {}


def _prepared(spec: SourceSpec) -> Prepared:
    if tables.is_table(spec.path):
        return _table(spec)
    if spec.path.is_dir():
        return _folder(spec)
    raise KerakitError(f"{str(spec.path)!r} is not a data source kerakit reads: expected a table file "
                       f"({', '.join(sorted(tables.SUFFIXES))}) or a folder with one subfolder per class.")


# --------------------------------------------------------------------------- tables

def _table(spec: SourceSpec) -> Prepared:
    """A table's features (numbers as float32 with NaN for missing, the rest as text) and each label (a class or
    a float: "label" for one, its own name for each of several, `tables.label_keys`), and its rows per split,
    read chunk by chunk where the file is streamed."""
    import tensorflow_datasets as tfds

    table = tables.read_table(spec.path, sep=spec.sep, encoding=spec.encoding, decimal=spec.decimal)
    if spec.label is None:
        raise KerakitError(f"A table needs its label column: SOURCE = dict(label=...) in the recipe "
                           f"(columns of {spec.path.name}: {', '.join(table.frame.columns)}).")
    report = table_report(table, spec.label, types=dict(spec.types), seed=spec.seed, group=spec.group,
                          time=spec.time, task=spec.task, ratios=spec.split)
    types, tasks = report["types"], report["tasks"]
    names = tables.feature_names([c for c in table.frame.columns if c not in tasks])
    keys = tables.label_keys(list(tasks), names)
    classes, total = _scan(table, tasks)
    spread = 2**128 // (total + 1)  # see `_scan`
    split_of, rule = _splits(table, spec, tasks)
    features = {names[c]: tfds.features.Scalar(np.float32) if types[c] == "number" else tfds.features.Text()
                for c in names}
    features.update({keys[c]: tfds.features.ClassLabel(names=classes[c]) if c in classes
                     else tfds.features.Scalar(np.float32) for c in tasks})

    def rows(split):
        def generate():
            for start, chunk in table.chunks():
                columns = {c: tables.as_numbers(chunk[c], table.decimal).astype(np.float32) if types[c] == "number"
                           else np.where(tables.missing_mask(chunk[c]), "", chunk[c].str.strip()) for c in names}
                labels = {c: np.searchsorted(np.array(classes[c]), chunk[c].str.strip().to_numpy()) if c in classes
                          else tables.as_numbers(chunk[c], table.decimal).astype(np.float32) for c in tasks}
                for i in np.flatnonzero(split_of(start, chunk) == split):
                    yield (start + int(i)) * spread, {**{names[c]: columns[c][i] for c in names},
                                                      **{keys[c]: labels[c][i] for c in tasks}}
        return generate

    first = next(iter(tasks))
    about = {"source": str(spec.path), "read_as": table.describe(), "task": report["task"], "label": report["label"],
             "classes": classes.get(first), "split_rule": rule, "flags": report["flags"],
             "columns": {names[c]: {"column": c, "type": types[c]} for c in names},
             "labels": {keys[c]: {"column": c, "task": task, "classes": classes.get(c)} for c, task in tasks.items()}}
    return Prepared(tfds.features.FeaturesDict(features), {s: rows(s) for s in splitting.NAMES}, about)


def _scan(table, tasks: dict[str, str]) -> tuple[dict[str, list[str]], int]:
    """(every value of each classification label over the whole table, sorted; its row count): a streamed file
    is read once for them, and every row of it is checked for its labels (`check_labelled`).

    The row count spreads the examples' keys over TFDS's 128-bit key space: with `disable_shuffling` TFDS
    buckets records by the key's top bits and sorts each bucket in memory, so row numbers as keys put every
    record in bucket 0 and a split's whole size in memory (peak RSS 1.04 GB for 1M rows, 1.55 GB for 3M).
    """
    found, total = {c: set() for c, task in tasks.items() if task == "classification"}, 0
    for start, chunk in table.chunks():
        total += len(chunk)
        check_labelled(table.path.name, chunk, tasks, table.decimal, first_row=start)
        for column, values in found.items():
            values.update(chunk[column].str.strip().unique())
    return {c: sorted(values) for c, values in found.items()}, total


def _splits(table, spec: SourceSpec, tasks: dict[str, str]) -> tuple[Callable, str]:
    """(first row, chunk) -> each row's split, and the rule. The whole table: `splitting.split_labels`. A
    streamed one: a seeded draw per row (its group's hash with `group`), stratified in expectation."""
    if not table.streamed:
        split_of, rule = splitting.split_labels(table.frame, tasks, seed=spec.seed, ratios=spec.split,
                                                group=spec.group, time=spec.time)
        return (lambda start, chunk: split_of[start:start + len(chunk)]), rule
    if spec.time is not None:
        raise KerakitError(f"time={spec.time!r} needs the whole table in memory to sort it, and "
                           f"{spec.path.name} is streamed (over {tables.STREAM_ABOVE // 2**20} MiB): sort the file "
                           "by time and split it into train/validation/test files, or use group=.")
    cuts = np.cumsum(spec.split)[:2]

    def split_of(start, chunk):
        if spec.group is not None:
            keys = chunk[spec.group].map(lambda v: hashlib.sha256(f"{spec.seed}:{v}".encode()).digest()[:8])
            draws = np.array([int.from_bytes(k, "big") / 2**64 for k in keys])
        else:
            draws = np.random.default_rng([spec.seed, start]).random(len(chunk))
        return np.array(splitting.NAMES)[np.searchsorted(cuts, draws, side="right")]

    shares = ", ".join(f"{n} {r:.0%}" for n, r in zip(splitting.NAMES, spec.split))
    how = f"by group ({spec.group}: a group in one split)" if spec.group else "shuffled per row"
    return split_of, f"{how}, seed {spec.seed}, as it streams (stratified in expectation): {shares}"


# --------------------------------------------------------------------------- folders

def _folder(spec: SourceSpec) -> Prepared:
    import tensorflow_datasets as tfds

    folder = folders.scan_folder(spec.path)
    report = folder_report(folder, seed=spec.seed, ratios=spec.split)
    split_of, rule = folders.folder_splits(folder, spec.seed, spec.split)
    classes = folder.classes
    key = "image" if folder.kind == "image" else "text"
    value = tfds.features.Image(shape=(None, None, 3)) if key == "image" else tfds.features.Text()
    features = tfds.features.FeaturesDict({key: value, "label": tfds.features.ClassLabel(names=classes),
                                           "file": tfds.features.Text()})

    spread = 2**128 // (len(folder.files) + 1)  # keys across TFDS's buckets (see `_scan`)

    def rows(split):
        def generate():
            for i in np.flatnonzero(split_of == split):
                f = folder.files[i]
                content = folders.read_image(f.path) if key == "image" else folders.read_text(f.path)
                if content is None:
                    continue  # counted in the data report
                yield int(i) * spread, {key: content[0] if key == "image" else content, "label": classes.index(f.label),
                               "file": str(f.path.relative_to(spec.path))}
        return generate

    about = {"source": str(spec.path), "read_as": folder.describe(), "task": "classification", "kind": folder.kind,
             "classes": classes, "split_rule": rule, "skipped": len(folder.skipped), "flags": report["flags"],
             "image_rule": "every mode converted to RGB (grey and palette expanded, alpha dropped), at its own size"
             if key == "image" else None}
    return Prepared(features, {s: rows(s) for s in splitting.NAMES}, about)
