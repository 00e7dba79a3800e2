"""kerakit: recipes -> trained, exported, verified Keras models.

    import kerakit
    run = kerakit.train("digits_cnn", epochs=3)
    kerakit.evaluate(run.path)["accuracy"]

Importing kerakit (and `kerakit --help`) does not import TensorFlow: each
command imports it when it needs it.
"""

from kerakit.cv import cross_validate
from kerakit.errors import KerakitError
from kerakit.evaluate import evaluate  # the functions shadow their modules' names on purpose
from kerakit.recipe import Input, Recipe, list_recipes, load_recipe
from kerakit.runs import Run
from kerakit.train import train
from kerakit.tune import tune

__version__ = "0.1.0"

__all__ = ["Input", "KerakitError", "Recipe", "Run", "cross_validate", "evaluate", "list_recipes", "load_recipe", "train", "tune"]
