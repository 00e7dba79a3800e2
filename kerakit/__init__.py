"""kerakit: recipes -> trained, exported, verified Keras models.

>>> import kerakit
>>> run = kerakit.train("digits_cnn", epochs=3)
>>> kerakit.evaluate(run.path)["accuracy"]

Names load lazily, so `import kerakit` (and `kerakit --help`) does not import TensorFlow.
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "train": "kerakit.train",
    "evaluate": "kerakit.evaluate",
    "load_recipe": "kerakit.recipe",
    "list_recipes": "kerakit.recipe",
    "Recipe": "kerakit.recipe",
    "Input": "kerakit.recipe",
    "Run": "kerakit.runs",
    "KerakitError": "kerakit.errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kerakit' has no attribute {name!r}")
