"""The `kerakit` command line: parses, calls the library, prints.

TensorFlow is imported only inside commands, so `kerakit --help` and argument
errors answer at once.
"""

from __future__ import annotations

import json
import os
import sys

import click

from kerakit.errors import KerakitError

STRATEGIES = ("default", "mirrored", "multi-worker")  # kerakit.distribute.STRATEGIES, without its import cost


class _Group(click.Group):
    """Turns a KerakitError into one line on stderr and exit status 1 (traceback with --debug)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KerakitError as e:
            if ctx.params.get("debug") or os.environ.get("KERAKIT_DEBUG"):
                raise
            click.echo(f"error: {e}", err=True)
            ctx.exit(1)


def _parse_overrides(pairs: tuple[str, ...]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.UsageError(f"Invalid override {pair!r}: expected key=value (e.g. epochs=5).")
        overrides[key.strip()] = value.strip()
    return overrides


def _load_tensorflow_quietly(start_devices: bool = True) -> None:
    """Import TensorFlow and start its devices with stderr muted.

    TF 2.21 logs through C++ absl before Python can configure it (oneDNN
    notices, "could not find cuda drivers", cuInit failures), ignoring
    TF_CPP_MIN_LOG_LEVEL. A Python exception still surfaces after stderr is
    restored; `--debug` skips the muting. Multi-worker training must create
    its strategy before TensorFlow starts its devices: `start_devices=False`.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        import tensorflow as tf

        if start_devices:
            tf.config.list_logical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.version_option(package_name="kerakit")
@click.pass_context
def cli(ctx, debug: bool) -> None:
    """kerakit: recipes -> trained, exported, verified Keras models.

    \b
    kerakit recipes                         list recipes
    kerakit train digits_cnn epochs=5       train a recipe (key=value overrides)
    kerakit evaluate runs/demo              test-split metrics of a run
    """


def _needs_tensorflow(ctx, start_devices: bool = True) -> None:
    if not ctx.find_root().params.get("debug"):
        _load_tensorflow_quietly(start_devices)


@cli.command("recipes")
@click.pass_context
def recipes_cmd(ctx) -> None:
    """List the recipes found by name (./recipes, $KERAKIT_RECIPE_PATH, bundled)."""
    _needs_tensorflow(ctx)
    from rich.console import Console
    from rich.table import Table

    from kerakit.recipe import list_recipes

    table = Table("name", "task", "dataset", "description", box=None, pad_edge=False)
    for r in list_recipes():
        table.add_row(r["name"], r["task"], r["dataset"], r["description"])
    Console(width=max(140, Console().width)).print(table)


@cli.command("train", context_settings={"ignore_unknown_options": False})
@click.argument("recipe")
@click.argument("overrides", nargs=-1)
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/RECIPE-TIMESTAMP). Rerun with the same --out to resume.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="default", show_default=True, help="tf.distribute strategy; multi-worker reads TF_CONFIG.")
@click.option("--data-dir", help="TFDS data directory (default $TFDS_DATA_DIR or ~/tensorflow_datasets).")
@click.option("--hparams", type=click.Path(dir_okay=False), help="JSON of hyperparameter values, e.g. a search's best_hparams.json.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@click.pass_context
def train_cmd(ctx, recipe, overrides, out, strategy, data_dir, hparams, overwrite) -> None:
    """Train RECIPE (a name or a .py path) with key=value overrides."""
    from kerakit.train import train

    overrides = _parse_overrides(overrides)
    _needs_tensorflow(ctx, start_devices=strategy != "multi-worker")
    run = train(recipe, out, strategy=strategy, data_dir=data_dir, hparams=hparams,
                overwrite=overwrite, **overrides)
    if run.is_finished:
        _print_metrics(run.metrics)


@cli.command("evaluate")
@click.argument("target", type=click.Path())
@click.argument("overrides", nargs=-1)
@click.option("--recipe", help="Recipe whose test split to use (needed for a .keras file outside a run).")
@click.option("--data-dir", help="TFDS data directory.")
@click.option("--split", default="test", show_default=True, help="Which split to evaluate.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.pass_context
def evaluate_cmd(ctx, target, overrides, recipe, data_dir, split, as_json) -> None:
    """Test-split metrics of a run directory or a .keras file."""
    from kerakit.evaluate import evaluate

    overrides = _parse_overrides(overrides)
    _needs_tensorflow(ctx)
    metrics = evaluate(target, recipe=recipe, data_dir=data_dir, split=split, **overrides)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        _print_metrics(metrics)


def _print_metrics(metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    headline = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    console.print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in headline.items()))
    if "per_class" in metrics:
        table = Table("class", "precision", "recall", "f1", "support", box=None)
        for row in metrics["per_class"]:
            table.add_row(row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"]))
        console.print(table)
        names = metrics["class_names"]
        matrix = Table("true \\ pred", *names, box=None, title="confusion matrix")
        for name, row in zip(names, metrics["confusion_matrix"]):
            matrix.add_row(name, *(str(v) for v in row))
        console.print(matrix)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="kerakit")


if __name__ == "__main__":
    main()
