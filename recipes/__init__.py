"""The built-in recipes, one file each (loaded by file path, never imported from here).

This folder ships inside kerakit as the package `kerakit.recipes` (pyproject's
package-dir): a wheel carries these files, and `kerakit.recipe.recipe_dirs()`
finds them with `importlib.resources.files("kerakit.recipes")` in an installed
wheel and in this checkout alike. File names starting with "_" are not recipes.
"""
