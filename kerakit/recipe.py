"""The recipe contract, the registry, and loading recipes by name or path.

A recipe is a plain Python file that reads top to bottom:

    DESCRIPTION = "Small CNN on scikit-learn's 8x8 digits (bundled, offline)."
    TASK = "classification"              # or "regression", "forecasting"
    DATASET = "kerakit_digits"           # any TFDS name
    INPUTS = [Input("image", shape=(8, 8, 1), dtype="float32")]
    DEFAULTS = dict(epochs=40, batch_size=64)

    def preprocess(example, config):     # one TFDS example -> (features, label)
        return {"image": tf.cast(example["image"], "float32") / 16.0}, example["label"]

    def build_model(hp, data):           # keras_tuner.HyperParameters, kerakit.data.Data
        filters = hp.Int("filters", 16, 64, step=16, default=32)
        ...
        return model                      # compiled

Optional names: NAME (default: the file name), SPLITS, CLASS_NAMES, METRIC
(the number the run is judged by everywhere: accuracy or macro_f1 for
classification, mae, mse, rmse or r2 for regression; default accuracy / mae;
the model must log it under that name, e.g. metrics=["mae"]),
`representative_sample(data, n)` for int8 calibration, `class_weight(data, config)` ({class
index: weight} that train passes to model.fit, or None), CUSTOM_OBJECTS
({name: class} the saved model needs to load; a recipe that imports its
decorated layers needs none), and for the report
SLICES = {"name": fn(features, labels) -> bool mask} (subsets of the test
split whose metric is checked against the overall one, SLICE_MARGIN apart)
and FEATURE_NAMES (of a tabular input, for attributions).

Training in two phases (transfer learning: a head on a frozen backbone, then fine-tuning): a recipe defines
`fine_tune(model, hp, data)`, which unfreezes what the second phase trains and recompiles the model, and the
config key `fine_tune_epochs` (in DEFAULTS). `epochs` are the first phase; the second runs after it (after
early stopping too) and resumes like any training: a run interrupted in it calls `fine_tune` again before
restoring its weights, so `fine_tune` must depend on (model, hp, data) alone.

A model with several outputs, each with its own labels (a multi-output table:
`kerakit new --label species,body_mass_g`), declares them in Keras order:
OUTPUTS = {"species": "classification", "body_mass_g": "regression"}. Its
`preprocess` returns the labels as a dict by output name; TASK and METRIC are
the first output's (the run is judged by it, which picks the best epoch and
trial); LABEL, the dataset feature with the first output's class names,
defaults to the first output's name. Every output is trained with its own
loss, evaluated, and verified by name on the test split's labels.

A "forecasting" recipe reads a series in time order: its `preprocess(example,
config)` returns one time step's value (a float scalar), kerakit cuts the
windows in tf.data, and it declares WINDOW (past steps the model sees; its one
input has shape (WINDOW, 1)), SEASON (steps per season: the seasonal-naive
baseline and MASE) and optionally HORIZON (steps ahead, default 1) and TIME
(the example key holding the timestamp, default "time").

With no search, `hp`'s `default=` values build the model; under `kerakit tune`
the same calls define the search space.
"""

from __future__ import annotations

import importlib.util
import linecache
import math
import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from kerakit import metrics
from kerakit.errors import KerakitError, utf8_name

TASKS = ("classification", "regression", "forecasting")

# Every recipe gets these; a recipe's DEFAULTS add keys or change values.
BASE_DEFAULTS: dict[str, Any] = {
    "epochs": 20,
    "batch_size": 32,
    "seed": 42,
    "patience": 8,  # early stopping, in epochs without improvement of the validation metric
    "shuffle_buffer": 10_000,
}

DEFAULT_SPLITS = {"train": "train[:85%]", "val": "train[85%:]", "test": "test"}
# A dataset prepared from the user's files has its own validation split (`kerakit.sources.splits`).
PATH_SPLITS = {"train": "train", "val": "validation", "test": "test"}

REQUIRED = ("TASK", "DATASET", "INPUTS", "preprocess", "build_model")


@dataclass(frozen=True)
class Input:
    """One named model input: `shape` excludes the batch dimension.

    >>> Input("image", shape=(8, 8, 1), dtype="float32")
    Input(name='image', shape=(8, 8, 1), dtype='float32')
    """

    name: str
    shape: tuple
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    def keras(self):
        """The matching `keras.Input`, so the model's input carries the recipe's name."""
        import keras

        return keras.Input(shape=tuple(self.shape), dtype=self.dtype, name=self.name)


@dataclass(frozen=True)
class Series:
    """How a forecasting recipe cuts its series: `window` past steps predict the value `horizon` steps after
    the last; `season` steps make a season (the seasonal-naive forecast repeats the value one season back)."""

    window: int
    horizon: int
    season: int
    time_key: str = "time"

    @property
    def naive_index(self) -> int:
        """Where in a window the seasonal-naive forecast reads: the value `season` steps before the target."""
        return self.window - 1 + self.horizon - self.season


@dataclass
class Recipe:
    """A loaded recipe. Build one with `load_recipe(name_or_path)`."""

    name: str
    path: Path
    description: str
    task: str
    dataset: str
    inputs: list[Input]
    preprocess: Callable
    build_model: Callable
    defaults: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SPLITS))
    class_names: list[str] | None = None
    metric: str = ""  # one of metrics.TASK_SCALARS[task]
    metric_direction: str = "max"  # metrics.direction(metric)
    label_key: str = "label"
    representative_sample: Callable | None = None
    # Report: named subsets of the test split, {name: fn(features, labels) -> bool mask},
    # flagged when their metric falls more than `slice_margin` below the overall one.
    slices: dict[str, Callable] = field(default_factory=dict)
    slice_margin: float = 0.05
    feature_names: list[str] | None = None  # of a tabular (rank-1) input, for attributions
    custom_objects: dict[str, Any] = field(default_factory=dict)  # CUSTOM_OBJECTS: classes its model needs to load
    series: "Series | None" = None  # forecasting: window, horizon, season, time key
    source: dict | None = None  # SOURCE: how a DATASET path becomes a dataset (label, sep, split, ...)
    outputs: dict[str, str] | None = None  # OUTPUTS: {output name: task} of a multi-output model, in Keras order
    fine_tune: Callable | None = None  # fine_tune(model, hp, data): the second training phase (fine_tune_epochs)
    class_weight: Callable | None = None  # class_weight(data, config): model.fit's class_weight, or None
    module: ModuleType | None = None

    def dataset_path(self) -> Path | None:
        """DATASET as a path to the user's files, or None for a TFDS name. A relative path is found from the
        working directory, then from the recipe's folder and the folder above it (recipes/NAME.py beside data/)."""
        if self.source is None and not looks_like_path(self.dataset):
            return None
        given = Path(self.dataset).expanduser()
        candidates = [given] if given.is_absolute() else [Path.cwd() / given, self.path.parent / given,
                                                          self.path.parent.parent / given]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise KerakitError(f"Recipe {self.path}: DATASET {self.dataset!r} does not exist (looked in "
                               f"{', '.join(str(c.parent) for c in candidates)}).")
        return found.resolve()

    @property
    def judged_output(self) -> str | None:
        """The output TASK and METRIC judge: the first of OUTPUTS; None where the recipe declares none."""
        return next(iter(self.outputs)) if self.outputs else None

    @property
    def monitor(self) -> str:
        """The validation quantity that picks the best epoch and the best trial (Keras prefixes a metric of a
        model with several outputs with the output's name)."""
        several = self.outputs and len(self.outputs) > 1
        return f"val_{self.judged_output}_{self.metric}" if several else f"val_{self.metric}"

    def weighted_fit(self, data, config: dict, validation) -> dict:
        """model.fit's `class_weight` (the recipe's `class_weight(data, config)`, or none) and `validation_data`,
        its rows weighed as training weighs them, so the loss and the weighted metrics that pick the best epoch
        (and score a trial) judge each class as training does. Unweighted, the best epoch on a 95/5 label was
        the first, which says the majority class for every row (val_accuracy 0.95): the weights were trained
        and then thrown away (the rare class's recall 0.0 where the last epoch's was 0.95)."""
        weights = self.class_weight(data, config) if self.class_weight is not None else None
        if not weights or validation is None:
            return {"class_weight": weights, "validation_data": validation}
        import tensorflow as tf

        table = tf.constant([weights.get(i, 1.0) for i in range(max(weights) + 1)], tf.float32)
        weighed = validation.map(lambda x, y: (x, y, tf.gather(table, tf.cast(y, tf.int32))))
        return {"class_weight": weights, "validation_data": weighed}

    def check_outputs(self, model, predictions=None) -> dict:
        """That `model`'s outputs are OUTPUTS, in order (the first is the one TASK judges); `predictions` of it
        by output name."""
        names = list(getattr(model, "output_names", None) or ())
        if self.outputs and names != list(self.outputs):
            raise KerakitError(f"Recipe {self.name}: the model's outputs are {names}, and OUTPUTS declares "
                               f"{list(self.outputs)}: name each output layer as OUTPUTS does, in that order.")
        if isinstance(predictions, dict):
            return dict(predictions)
        return dict(zip(names, predictions if isinstance(predictions, (list, tuple)) else [predictions]))

    def resolve_config(self, overrides: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Split `key=value` overrides into (config, hyperparameter overrides).

        Keys in the recipe's defaults are config: their value is converted to
        the default's type or rejected. Any other key is returned as a
        candidate hyperparameter, checked later against the search space
        (`check_hparams`), since only building the model reveals it.
        """
        config = dict(self.defaults)
        hparams: dict[str, Any] = {}
        for key, value in (overrides or {}).items():
            if key in config:
                config[key] = coerce(key, value, config[key])
            else:
                hparams[key] = value
        for key in ("epochs", "batch_size"):
            if config[key] < 1:
                raise KerakitError(f"Invalid {key}={config[key]}. Expected an integer >= 1.")
        return config, hparams

    def check_hparams(self, hparams: dict[str, Any], space: list) -> dict[str, Any]:
        """Validate hyperparameter overrides against the search space; return typed values."""
        by_name = {hp.name: hp for hp in space}
        typed = {}
        for key, value in hparams.items():
            if key not in by_name:
                raise KerakitError(
                    f"Unknown override {key!r} for recipe {self.name!r}. "
                    f"Valid config keys: {', '.join(sorted(self.defaults))}. "
                    f"Valid hyperparameters: {', '.join(sorted(by_name)) or '(none)'}."
                )
            typed[key] = _coerce_hparam(key, value, by_name[key])
        return typed

    def build(self, hp, data):
        """`build_model(hp, data)`, with a recipe bug turned into one line naming the recipe and the error."""
        try:
            return self.build_model(hp, data)
        except KerakitError:
            raise
        except Exception as e:
            raise KerakitError(f"Recipe {self.path}: build_model raised {type(e).__name__}: {str(e)[:300]} "
                               "(rerun with --debug for the traceback).") from e

    def summary(self) -> dict:
        return {
            "name": self.name,
            "task": self.task,
            "dataset": self.dataset,
            "description": self.description,
            "path": str(self.path),
        }


def looks_like_path(dataset: str) -> bool:
    """A DATASET that names files, not a TFDS dataset: it has a folder separator or a file suffix."""
    return "/" in dataset or os.sep in dataset or Path(dataset).suffix != "" or Path(dataset).is_dir()


def coerce(key: str, value: Any, default: Any) -> Any:
    """Convert an override (often a CLI string) to the type of its default."""
    kind = type(default)
    if default is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    try:
        if kind is bool:
            return _parse_bool(value)
        if kind is int:
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                return int(value)
        if kind is float:
            if isinstance(value, (int, str)) and not isinstance(value, bool):
                number = float(value)
                if not math.isfinite(number):
                    raise ValueError
                return number
        if kind is str and isinstance(value, (int, float)):
            return str(value)
    except ValueError:
        pass
    raise KerakitError(
        f"Invalid value {key}={value!r}: expected {kind.__name__} (default {key}={default!r})."
    )


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _coerce_hparam(key: str, value: Any, hp) -> Any:
    kind = type(hp).__name__
    if kind in ("Int", "Float"):
        typed = coerce(key, value, 0 if kind == "Int" else 0.0)
        if not hp.min_value <= typed <= hp.max_value:  # the model was designed for this range only
            step = f", step {hp.step}" if getattr(hp, "step", None) else ""
            raise KerakitError(f"Invalid value {key}={typed}: expected {'an integer' if kind == 'Int' else 'a number'} "
                               f"from {hp.min_value} to {hp.max_value}{step} (the recipe's search space).")
    elif kind == "Boolean":
        typed = coerce(key, value, False)
    elif kind == "Choice":
        typed = coerce(key, value, hp.values[0])
        if typed not in hp.values:
            raise KerakitError(
                f"Invalid value {key}={value!r}: expected one of {', '.join(map(repr, hp.values))}."
            )
    else:  # Fixed
        typed = coerce(key, value, hp.value)
    return typed


# ---------------------------------------------------------------- registry


def recipe_dirs() -> list[Path]:
    """Where recipes are found by name, first match wins.

    $KERAKIT_RECIPE_PATH (os.pathsep-separated), ./recipes, and the built-in
    recipes (`builtin_dir("kerakit.recipes")`).
    """
    dirs = [Path(p) for p in os.environ.get("KERAKIT_RECIPE_PATH", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "recipes", builtin_dir("kerakit.recipes")]
    seen, unique = set(), []
    for d in dirs:
        key = d.resolve()
        if key not in seen and d.is_dir():
            seen.add(key)
            unique.append(d)
    return unique


def builtin_dir(package: str) -> Path:
    """The folder of a package kerakit ships as data: `kerakit.recipes` (a checkout's recipes/) or `kerakit.targets`
    (its export/). pyproject maps both into the package, so this one lookup finds them in an installed wheel
    (site-packages/kerakit/recipes/) and in an editable install of a checkout (the checkout's recipes/) alike."""
    try:
        return Path(resources.files(package))
    except ModuleNotFoundError:
        raise KerakitError(f"This install of kerakit lacks {package}, which kerakit ships: it predates shipping it "
                           "as package data. Reinstall kerakit (in a checkout: pip install -e .).") from None


def recipe_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        for path in sorted(d.glob("*.py")):
            if not path.name.startswith("_"):
                found.setdefault(path.stem, path)
    return found


def find_recipe(name_or_path: str | os.PathLike) -> Path:
    text = str(name_or_path)
    given = Path(text)
    if given.exists() and (given.is_dir() or given.suffix.lower() != ".py"):
        raise KerakitError(f"{text!r} is data, not a recipe: write a recipe for it with `kerakit new NAME --from "
                           f"{text}{' --label COLUMN' if given.is_file() else ''}` (it prints a data report first), "
                           "then `kerakit train NAME`.")
    if text.endswith(".py") or os.sep in text or "/" in text:
        path = Path(text)
        if not path.is_file():
            raise KerakitError(f"Recipe file {text!r} does not exist.")
        return path
    files = recipe_files()
    if text not in files:
        raise KerakitError(
            f"Unknown recipe {text!r}. Available: {', '.join(sorted(files)) or '(none found)'}; "
            "or pass a path to a recipe file."
        )
    return files[text]


def load_recipe(name_or_path: "str | os.PathLike | Recipe") -> Recipe:
    """Load a recipe by registry name (`digits_cnn`) or by file path.

    >>> recipe = load_recipe("digits_cnn")
    >>> recipe.task, [i.name for i in recipe.inputs]
    ('classification', ['image'])
    """
    if isinstance(name_or_path, Recipe):
        return name_or_path
    path = find_recipe(name_or_path).resolve()
    module = _import_file(path)
    return _from_module(module, path)


def list_recipes() -> list[dict]:
    """Every recipe found by name, loaded; a broken one is listed with its error."""
    rows = []
    for name, path in recipe_files().items():
        try:
            rows.append(load_recipe(path).summary())
        except KerakitError as e:
            rows.append({"name": name, "task": "?", "dataset": "?", "description": f"BROKEN: {e}", "path": str(path)})
    return rows


def _import_file(path: Path) -> ModuleType:
    module_name = f"kerakit_recipes.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        if utf8_name(path):
            spec.loader.exec_module(module)
        else:
            # A name this Python decoded with surrogates (a non-ASCII path under LANG=C): TensorFlow copies each
            # traced frame's file name into C++ as UTF-8, and one it cannot encode fails tf.data's tracing of the
            # recipe's preprocess ('Concurrent access?'). The code is named by the name's bytes read as UTF-8,
            # and its lines are handed to linecache, where AutoGraph (and tracebacks) read the source.
            source, filename = path.read_bytes(), os.fsencode(path).decode("utf-8", "replace")
            lines = source.decode("utf-8", "replace").splitlines(keepends=True)
            linecache.cache[filename] = (len(source), None, lines, filename)  # mtime None: never re-read
            exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - the recipe's own code
    except SyntaxError as e:
        raise KerakitError(f"Recipe {path}:{e.lineno}: syntax error: {e.msg}.") from e
    except KerakitError:
        raise
    except Exception as e:
        raise KerakitError(
            f"Recipe {path} failed to import: {type(e).__name__}: {e} (rerun with --debug for the traceback)."
        ) from e
    sys.modules[module_name] = module
    return module


def _custom_objects(module: ModuleType, path: Path) -> dict:
    objects = getattr(module, "CUSTOM_OBJECTS", {})
    if not isinstance(objects, dict) or not all(isinstance(k, str) for k in objects):
        raise KerakitError(f"Recipe {path}: CUSTOM_OBJECTS must be a dict of name -> class, e.g. {{'Scale': Scale}}.")
    return objects


def _from_module(module: ModuleType, path: Path) -> Recipe:
    missing = [name for name in REQUIRED if not hasattr(module, name)]
    if missing:
        raise KerakitError(
            f"Recipe {path} does not define {', '.join(missing)}. "
            f"A recipe must define: {', '.join(REQUIRED)} (see kerakit/recipe.py)."
        )
    for fn in ("preprocess", "build_model"):
        if not callable(getattr(module, fn)):
            raise KerakitError(f"Recipe {path}: {fn} must be a function.")
    task = module.TASK
    if task not in TASKS:
        raise KerakitError(f"Recipe {path}: invalid TASK={task!r}. Expected one of {', '.join(TASKS)}.")
    inputs = list(module.INPUTS)
    if not inputs or not all(isinstance(i, Input) for i in inputs):
        raise KerakitError(f"Recipe {path}: INPUTS must be a non-empty list of kerakit.recipe.Input.")
    defaults = {**BASE_DEFAULTS, **getattr(module, "DEFAULTS", {})}
    source = _source(module, path)
    from_files = source is not None or looks_like_path(str(module.DATASET))
    splits = {**(PATH_SPLITS if from_files else DEFAULT_SPLITS), **getattr(module, "SPLITS", {})}
    metric, direction = _metric(module, path, task)
    outputs = _outputs(module, path, task)
    doc = (module.__doc__ or "").strip().splitlines()
    slices = getattr(module, "SLICES", {})
    if not isinstance(slices, dict) or not all(isinstance(k, str) and callable(f) for k, f in slices.items()):
        raise KerakitError(f"Recipe {path}: SLICES must be a dict of name -> function(features, labels) -> bool mask.")
    margin = getattr(module, "SLICE_MARGIN", 0.05)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise KerakitError(f"Recipe {path}: invalid SLICE_MARGIN={margin!r}. Expected a number, e.g. 0.05 (5 points).")
    return Recipe(
        name=getattr(module, "NAME", path.stem),
        path=path,
        description=getattr(module, "DESCRIPTION", doc[0] if doc else ""),
        task=task,
        dataset=module.DATASET,
        inputs=inputs,
        preprocess=module.preprocess,
        build_model=module.build_model,
        defaults=defaults,
        splits=splits,
        class_names=getattr(module, "CLASS_NAMES", None),
        metric=metric,
        metric_direction=direction,
        label_key=getattr(module, "LABEL", next(iter(outputs)) if outputs else "label"),
        representative_sample=getattr(module, "representative_sample", None),
        slices=slices,
        slice_margin=float(margin),
        feature_names=getattr(module, "FEATURE_NAMES", None),
        custom_objects=_custom_objects(module, path),
        series=_series(module, path, inputs) if task == "forecasting" else None,
        source=source if source is not None else ({} if from_files else None),
        outputs=outputs,
        fine_tune=getattr(module, "fine_tune", None),
        class_weight=getattr(module, "class_weight", None),
        module=module,
    )


def _source(module: ModuleType, path: Path) -> dict | None:
    source = getattr(module, "SOURCE", None)
    if source is not None and not isinstance(source, dict):
        raise KerakitError(f"Recipe {path}: SOURCE must be a dict, e.g. dict(label=\"species\", seed=0).")
    if not isinstance(module.DATASET, str):
        raise KerakitError(f"Recipe {path}: DATASET must be a TFDS name or a path (a string), got {module.DATASET!r}.")
    return source


def _outputs(module: ModuleType, path: Path, task: str) -> dict[str, str] | None:
    """OUTPUTS, checked: {output name: "classification" | "regression"}, the first of TASK's task."""
    outputs = getattr(module, "OUTPUTS", None)
    if outputs is None:
        return None
    if (not isinstance(outputs, dict) or not outputs
            or not all(isinstance(k, str) and v in ("classification", "regression") for k, v in outputs.items())):
        raise KerakitError(f"Recipe {path}: OUTPUTS must be a dict of output name -> 'classification' or "
                           f"'regression' in the model's output order, e.g. {{'species': 'classification', "
                           f"'body_mass_g': 'regression'}}; got {outputs!r}.")
    first, first_task = next(iter(outputs.items()))
    if first_task != task:
        raise KerakitError(f"Recipe {path}: TASK={task!r}, but the first of OUTPUTS, {first!r}, is {first_task}: "
                           "TASK and METRIC are the first output's. Put the output the run is judged by first.")
    return dict(outputs)


def _series(module: ModuleType, path: Path, inputs: list) -> Series:
    """A forecasting recipe's WINDOW, HORIZON, SEASON and TIME, checked against each other and its INPUTS."""
    values = {}
    for name, default in (("WINDOW", None), ("HORIZON", 1), ("SEASON", None)):
        value = getattr(module, name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise KerakitError(f"Recipe {path}: a forecasting recipe needs {name} = an integer >= 1, got {value!r}.")
        values[name] = value
    series = Series(values["WINDOW"], values["HORIZON"], values["SEASON"], str(getattr(module, "TIME", "time")))
    if series.horizon > series.season or series.naive_index < 0:
        raise KerakitError(
            f"Recipe {path}: WINDOW={series.window}, HORIZON={series.horizon}, SEASON={series.season}: the seasonal-"
            f"naive baseline needs HORIZON <= SEASON and WINDOW >= SEASON - HORIZON + 1 "
            f"(= {series.season - series.horizon + 1}), so the value one season before the target is in the window.")
    if len(inputs) != 1 or tuple(inputs[0].shape) != (series.window, 1):
        raise KerakitError(f"Recipe {path}: a forecasting recipe has one input of shape (WINDOW, 1) = "
                           f"({series.window}, 1), got {[tuple(i.shape) for i in inputs]}.")
    return series


def _metric(module: ModuleType, path: Path, task: str) -> tuple[str, str]:
    """The recipe's METRIC (checked: one the task computes) and its direction."""
    metric = getattr(module, "METRIC", metrics.TASK_DEFAULTS[task])
    try:
        metrics.check_metric(task, metric)
    except KerakitError as e:
        raise KerakitError(f"Recipe {path}: {e}") from None
    direction = metrics.direction(metric)
    # METRIC_DIRECTION is no longer needed; one that contradicts the metric is a mistake, not a choice.
    declared = getattr(module, "METRIC_DIRECTION", direction)
    if declared != direction:
        raise KerakitError(
            f"Recipe {path}: METRIC_DIRECTION={declared!r} contradicts METRIC={metric!r}, "
            f"which is better when {'higher' if direction == 'max' else 'lower'}. Remove METRIC_DIRECTION."
        )
    return metric, direction
