"""The built-in deployment targets, one TOML file each (this file only makes the folder a package).

This folder ships inside kerakit as the package `kerakit.targets` (pyproject's
package-dir), the TOML files as its package data: a wheel carries them, and
`kerakit.export.targets.target_dirs()` finds them with
`importlib.resources.files("kerakit.targets")` in an installed wheel and in
this checkout alike.
"""
