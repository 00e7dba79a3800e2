"""The recipe contract: finding, loading, and validating recipes and overrides."""

import pytest

from conftest import FIXTURES, ROOT, copy_recipe
from kerakit.errors import KerakitError
from kerakit.recipe import builtin_dir, coerce, list_recipes, load_recipe

SHIPPED = {
    "digits_cnn": ("classification", "kerakit_digits"),
    "breast_cancer_mlp": ("classification", "kerakit_breast_cancer"),
    "diabetes_mlp": ("regression", "kerakit_diabetes"),
    "mnist_cnn": ("classification", "mnist"),
    "imdb_text": ("classification", "imdb_reviews"),
    "elnino_forecast": ("forecasting", "kerakit_elnino"),
    "digits_select": ("classification", "kerakit_digits"),
}


def test_shipped_recipes_are_listed_with_task_and_dataset():
    rows = {r["name"]: r for r in list_recipes()}
    for name, (task, dataset) in SHIPPED.items():
        assert rows[name]["task"] == task
        assert rows[name]["dataset"] == dataset
        assert rows[name]["description"] and not rows[name]["description"].startswith("BROKEN")


def test_recipe_declares_inputs_classes_metric_and_defaults():
    recipe = load_recipe("digits_cnn")
    assert [(i.name, tuple(i.shape), i.dtype) for i in recipe.inputs] == [("image", (8, 8, 1), "float32")]
    assert recipe.class_names == [str(d) for d in range(10)]
    assert recipe.metric == "accuracy" and recipe.monitor == "val_accuracy"
    assert recipe.defaults["epochs"] == 40 and recipe.defaults["seed"] == 42


def test_recipe_loads_by_path(tmp_path):
    path = copy_recipe("digits_cnn", tmp_path)
    recipe = load_recipe(str(path))
    assert recipe.name == "digits_cnn" and recipe.path == path.resolve()


def test_recipe_path_env_adds_search_dirs(tmp_path, monkeypatch):
    copy_recipe("breast_cancer_mlp", tmp_path).rename(tmp_path / "my_tabular.py")
    monkeypatch.setenv("KERAKIT_RECIPE_PATH", str(tmp_path))
    assert load_recipe("my_tabular").task == "classification"


def test_built_in_recipes_and_targets_are_found_from_any_directory(tmp_path, monkeypatch):
    """No ./recipes or ./export here: what is found is what kerakit ships (the package data a wheel carries)."""
    from kerakit.export.targets import available_targets

    monkeypatch.chdir(tmp_path)
    assert set(SHIPPED) <= {r["name"] for r in list_recipes()}
    assert load_recipe("digits_cnn").path == (ROOT / "recipes" / "digits_cnn.py").resolve()
    assert {"server", "edge", "mcu", "x86"} <= set(available_targets())


def test_an_install_without_the_built_in_data_says_to_reinstall():
    with pytest.raises(KerakitError, match=r"^This install of kerakit lacks kerakit.no_such_data, .* Reinstall kerakit"):
        builtin_dir("kerakit.no_such_data")


def test_unknown_recipe_names_the_available_ones():
    with pytest.raises(KerakitError, match=r"Unknown recipe 'digitz'. Available: .*digits_cnn"):
        load_recipe("digitz")


def test_syntax_error_names_file_and_line():
    with pytest.raises(KerakitError, match=r"broken_syntax.py:5: syntax error"):
        load_recipe(FIXTURES / "broken_syntax.py")


def test_missing_build_model_is_named():
    with pytest.raises(KerakitError, match=r"does not define build_model"):
        load_recipe(FIXTURES / "no_build_model.py")


def test_invalid_task_lists_allowed_tasks():
    with pytest.raises(KerakitError, match=r"invalid TASK='segmentation'. Expected one of classification, regression"):
        load_recipe(FIXTURES / "bad_task.py")


@pytest.mark.parametrize("extra, message", [
    ("SLICES = [1]", "SLICES must be a dict of name -> function"),
    ("SLICES = {'big': 3}", "SLICES must be a dict of name -> function"),
    ("SLICE_MARGIN = '5%'", "invalid SLICE_MARGIN='5%'. Expected a number"),
])
def test_bad_report_declarations_are_named(tmp_path, extra, message):
    recipe = tmp_path / "sliced.py"
    recipe.write_text((ROOT / "recipes" / "digits_cnn.py").read_text() + "\n" + extra + "\n")
    with pytest.raises(KerakitError, match=message):
        load_recipe(recipe)


def test_missing_recipe_file():
    with pytest.raises(KerakitError, match="does not exist"):
        load_recipe(ROOT / "recipes" / "nope.py")


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"epochs": "5"}, {"epochs": 5}),
        ({"epochs": 5.0}, {"epochs": 5}),
        ({"seed": "7", "batch_size": "16"}, {"seed": 7, "batch_size": 16}),
    ],
)
def test_config_overrides_take_the_type_of_the_default(overrides, expected):
    config, hparams = load_recipe("digits_cnn").resolve_config(overrides)
    assert {k: config[k] for k in expected} == expected
    assert all(type(config[k]) is int for k in expected)
    assert hparams == {}


@pytest.mark.parametrize("key, value", [("epochs", "many"), ("epochs", "2.5"), ("batch_size", "0")])
def test_config_override_of_wrong_type_or_range_is_rejected(key, value):
    with pytest.raises(KerakitError, match=rf"{key}"):
        load_recipe("digits_cnn").resolve_config({key: value})


def test_unknown_keys_are_candidate_hyperparameters_checked_against_the_space():
    import keras_tuner

    recipe = load_recipe("digits_cnn")
    _, hparams = recipe.resolve_config({"filters": "16", "colour": "red"})
    hp = keras_tuner.HyperParameters()
    recipe.build_model(hp, None)
    assert recipe.check_hparams({"filters": "16"}, hp.space) == {"filters": 16}
    with pytest.raises(KerakitError, match=r"Unknown override 'colour'.*Valid config keys: .*epochs.*Valid hyperparameters: .*filters"):
        recipe.check_hparams(hparams, hp.space)
    with pytest.raises(KerakitError, match=r"filters='wide': expected int"):
        recipe.check_hparams({"filters": "wide"}, hp.space)


# ---------------------------------------------------------------- the recipe's metric

def test_task_default_metric_and_its_direction():
    assert (load_recipe("diabetes_mlp").metric, load_recipe("diabetes_mlp").metric_direction) == ("mae", "min")
    assert load_recipe("diabetes_mlp").monitor == "val_mae"
    assert load_recipe("digits_cnn").metric_direction == "max"


@pytest.mark.parametrize("extra, metric, direction", [
    ("METRIC = 'macro_f1'", "macro_f1", "max"),
    ("METRIC = 'macro_f1'\nMETRIC_DIRECTION = 'max'", "macro_f1", "max"),
])
def test_a_recipe_may_choose_another_metric_the_task_computes(tmp_path, extra, metric, direction):
    recipe = tmp_path / "f1.py"
    recipe.write_text((ROOT / "recipes" / "digits_cnn.py").read_text() + "\n" + extra + "\n")
    loaded = load_recipe(recipe)
    assert (loaded.metric, loaded.metric_direction, loaded.monitor) == (metric, direction, f"val_{metric}")


@pytest.mark.parametrize("base, extra, message", [
    ("digits_cnn", "METRIC = 'auc'", r"Invalid METRIC='auc' for a classification recipe\. "
                                     r"Expected one of accuracy, macro_f1 \(default accuracy\)"),
    ("diabetes_mlp", "METRIC = 'accuracy'", r"Invalid METRIC='accuracy' for a regression recipe\. "
                                            r"Expected one of mae, mse, rmse, r2"),
    ("diabetes_mlp", "METRIC_DIRECTION = 'max'", r"METRIC_DIRECTION='max' contradicts METRIC='mae', "
                                                 r"which is better when lower"),
])
def test_a_metric_the_task_does_not_compute_is_refused_at_load(tmp_path, base, extra, message):
    recipe = tmp_path / "bad_metric.py"
    recipe.write_text((ROOT / "recipes" / f"{base}.py").read_text() + "\n" + extra + "\n")
    with pytest.raises(KerakitError, match=rf"bad_metric.py: {message}"):
        load_recipe(recipe)


# ---------------------------------------------------------------- override coercion

@pytest.mark.parametrize("value, default, expected", [
    ("5", 3, 5),
    (5.0, 3, 5),
    ("0.5", 0.1, 0.5),
    (2, 0.1, 2.0),
    ("1e-3", 0.1, 0.001),
    ("true", False, True),
    ("Off", True, False),
    ("1", False, True),
    (7, "name", "7"),
    ("anything", None, "anything"),  # no default type: kept as given
    ("x", "y", "x"),
])
def test_coerce_converts_to_the_type_of_the_default(value, default, expected):
    got = coerce("key", value, default)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("value, default, message", [
    ("2.5", 3, r"Invalid value key='2.5': expected int \(default key=3\)"),
    (2.5, 3, r"Invalid value key=2.5: expected int"),
    (True, 3, r"Invalid value key=True: expected int"),  # a bool is not a count
    ("nan", 0.1, r"Invalid value key='nan': expected float"),
    ("inf", 0.1, r"Invalid value key='inf': expected float"),
    ("maybe", False, r"Invalid value key='maybe': expected bool \(default key=False\)"),
    ([1], "name", r"Invalid value key=\[1\]: expected str"),
])
def test_coerce_rejects_what_does_not_convert_naming_value_and_default(value, default, message):
    with pytest.raises(KerakitError, match=message):
        coerce("key", value, default)


def test_resolve_config_keeps_defaults_and_splits_off_candidate_hyperparameters():
    recipe = load_recipe("digits_cnn")
    defaults = dict(recipe.defaults)
    config, hparams = recipe.resolve_config({"patience": "3", "filters": "16"})
    assert config == {**defaults, "patience": 3}
    assert hparams == {"filters": "16"}  # typed later, against the search space
    assert recipe.defaults == defaults, "resolving does not change the recipe's defaults"
    assert recipe.resolve_config() == (defaults, {})


@pytest.mark.parametrize("key", ["epochs", "batch_size"])
def test_resolve_config_needs_at_least_one_epoch_and_example(key):
    with pytest.raises(KerakitError, match=rf"Invalid {key}=0. Expected an integer >= 1"):
        load_recipe("digits_cnn").resolve_config({key: 0})
