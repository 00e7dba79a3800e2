"""The `kerakit` command line: parses, calls the library, prints.

TensorFlow is imported only inside commands, so `kerakit --help` and argument
errors answer at once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from kerakit.distribute import STRATEGIES
from kerakit.errors import KerakitError
from kerakit.tune import TUNERS, TuneRequest


class _Group(click.Group):
    """Turns a KerakitError, or a full or read-only disk, into one line on stderr and exit status 1
    (traceback with --debug)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as e:
            message = str(e) if isinstance(e, KerakitError) else _disk_error(e, self._takes_out(ctx))
            if message is None or ctx.params.get("debug") or os.environ.get("KERAKIT_DEBUG"):
                raise
            click.echo(f"error: {message}", err=True)
            ctx.exit(1)

    def _takes_out(self, ctx) -> bool:
        """Whether the command that failed has --out (a full disk's line offers another directory only then)."""
        command = self.get_command(ctx, ctx.invoked_subcommand or "")
        return command is not None and any("--out" in p.opts for p in command.params)


class _RegistryHelp(click.Option):
    """An option whose help lists what the format registry holds (`help_from()`), written when help is
    shown: always current, and loading the registry costs `kerakit --help` nothing."""

    def __init__(self, *args, help_from, **kwargs):
        super().__init__(*args, **kwargs)
        self.help_from = help_from

    def get_help_record(self, ctx):
        self.help = self.help_from()
        return super().get_help_record(ctx)


def _format_help() -> str:
    from kerakit import formats

    return f"One artifact by its --format name (repeat or comma-separate): {', '.join(formats.artifact_names())}."


def _threads_help(serve: bool = False) -> str:
    from kerakit import formats

    takes = ", ".join(formats.with_threads())
    if serve:
        return (f"Runtime threads per model, at most the cores available, for a format that takes them ({takes}; "
                "refused for another). Default: the setting `kerakit bench` saved.")
    return f"Thread counts for the formats that take one ({takes})."


def _disk_error(e: BaseException, takes_out: bool = True) -> str | None:
    """The one line for an exception that is the disk's fault, wherever it surfaced (h5py, TensorFlow, ...)."""
    import errno

    text = str(e)
    full = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text
    read_only = getattr(e, "errno", None) == errno.EROFS or "Read-only file system" in text
    if not (full or read_only):
        return _disk_error(e.__cause__, takes_out) if e.__cause__ is not None else None
    where = f" writing {e.filename}" if getattr(e, "filename", None) else ""
    what = "No space left on device" if full else "The file system is read-only"
    instead = " (or pass another --out)" if takes_out else ""
    return (f"{what}{where}. Free space{instead} and rerun the same command: every step "
            "that finished is kept, and an interrupted one resumes or starts again.")


def _parse_overrides(pairs: tuple[str, ...], what: str = "override",
                     form: str = "key=value (e.g. epochs=5)") -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.UsageError(f"Invalid {what} {pair!r}: expected {form}.")
        overrides[key.strip()] = value.strip()
    return overrides


def _load_tensorflow_quietly(start_devices: bool = True) -> None:
    """Import TensorFlow (and start its devices) without its C++ start-up log lines.

    Multi-worker training must create its strategy before TensorFlow starts
    its devices: `start_devices=False`.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kerakit.quiet import muted_stderr

    with muted_stderr():
        import tensorflow as tf

        if start_devices:
            tf.config.list_logical_devices()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.version_option(package_name="kerakit")
@click.pass_context
def cli(ctx, debug: bool) -> None:
    """kerakit: recipes -> trained, exported, verified Keras models.

    \b
    kerakit recipes                         list recipes
    kerakit data photos/                    a data report of your own files (a table or class folders)
    kerakit new shapes --from photos/       write recipes/shapes.py for them
    kerakit train digits_cnn epochs=5       train a recipe (key=value overrides)
    kerakit tune digits_cnn --tuner hyperband --max-epochs 9   search hyperparameters
    kerakit cv digits_cnn --folds 5         k-fold cross-validation: mean ± std of the metric
    kerakit evaluate runs/demo              test-split metrics of a run
    kerakit export runs/demo --target edge  export and verify deployment artifacts
    kerakit bench runs/demo                 latency of every format side by side
    kerakit serve runs/demo                 inference: KServe v2 (HTTP, gRPC) and TF Serving REST
    kerakit build digits_cnn --target server,edge   train, export, verify, bench, report
    kerakit report runs/demo                model card: HTML + Markdown
    kerakit build digits_cnn --track --register digits   ... logged to MLflow, verified artifacts registered
    kerakit track runs/demo                 send a finished run to MLflow (what a server that was down missed)
    kerakit drift runs/demo --data runs/demo/requests.jsonl   inputs vs training data
    """


def _custom_objects_option(command):
    """`--custom-objects MODULE` (repeatable) for commands that load a .keras file; kept in the environment,
    so worker processes (`serve --workers`) load the same classes."""
    def remember(ctx, param, modules):
        if modules:
            from kerakit.formats.keras import CUSTOM_OBJECTS_ENV

            current = [m for m in os.environ.get(CUSTOM_OBJECTS_ENV, "").split(",") if m]
            os.environ[CUSTOM_OBJECTS_ENV] = ",".join(dict.fromkeys([*current, *modules]))

    return click.option("--custom-objects", multiple=True, metavar="MODULE", expose_value=False, callback=remember,
                        help="Module defining custom Keras classes the model needs (repeatable), e.g. my_pkg.layers.")(command)


def _needs_tensorflow(ctx, start_devices: bool = True) -> None:
    if ctx.find_root().params.get("debug"):
        os.environ["KERAKIT_DEBUG"] = "1"
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


def _track_option(command):
    """`--track`: log to MLflow ($MLFLOW_TRACKING_URI, else MLflow's local store); unset, the recipe's default."""
    return click.option("--track", is_flag=True, default=None,
                        help="Log to MLflow: $MLFLOW_TRACKING_URI, else ./mlflow.db (MLflow's local default).")(command)


@cli.command("train", context_settings={"ignore_unknown_options": False})
@_custom_objects_option
@click.argument("recipe")
@click.argument("overrides", nargs=-1)
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/RECIPE-TIMESTAMP). Rerun with the same --out to resume.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="default", show_default=True, help="tf.distribute strategy; multi-worker reads TF_CONFIG.")
@click.option("--data-dir", help="TFDS data directory (default $TFDS_DATA_DIR or ~/tensorflow_datasets).")
@click.option("--hparams", type=click.Path(dir_okay=False), help="JSON of hyperparameter values, e.g. a search's best_hparams.json.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@_track_option
@click.pass_context
def train_cmd(ctx, recipe, overrides, out, strategy, data_dir, hparams, overwrite, track) -> None:
    """Train RECIPE (a name or a .py path) with key=value overrides."""
    from kerakit.train import train

    overrides = _parse_overrides(overrides)
    _needs_tensorflow(ctx, start_devices=strategy != "multi-worker")
    run = train(recipe, out, strategy=strategy, data_dir=data_dir, hparams=hparams,
                overwrite=overwrite, track=track, **overrides)
    if run.is_finished:
        _print_metrics(run.metrics)


def _request_options(request_type):
    """The options of a command whose request dataclass spells them once: each field's flag, help, default,
    bounds or choices in its metadata (kerakit.tune.TuneRequest)."""
    import dataclasses

    def add(command):
        for f in reversed(dataclasses.fields(request_type)):
            meta = f.metadata
            if "flag" not in meta:
                continue
            if isinstance(f.default, bool):  # --overwrite sets True; --no-retrain sets False
                option = click.option(meta["flag"], f.name, flag_value=not f.default, default=f.default, help=meta["help"])
            else:
                kind = (click.Choice(meta["choices"]) if "choices" in meta else click.IntRange(min=meta["min"])
                        if "min" in meta else click.Path(file_okay=False) if meta.get("dir") else meta.get("type"))
                option = click.option(meta["flag"], f.name, type=kind, default=f.default, metavar=meta.get("metavar"),
                                      show_default=f.default is not None, help=meta["help"])
            command = option(command)
        return command

    return add


@cli.command("tune")
@_custom_objects_option
@click.argument("recipe")
@click.argument("overrides", nargs=-1)
@_request_options(TuneRequest)
@click.pass_context
def tune_cmd(ctx, recipe, overrides, **options) -> None:
    """Search RECIPE's hyperparameters with keras-tuner (key=value fixes a value for the whole search)."""
    from kerakit.tune import search

    request = TuneRequest(recipe, _parse_overrides(overrides), **options)
    request.check()
    if not request.workers:
        _needs_tensorflow(ctx)
    result = search(request)
    if request.role == "worker":
        return
    _print_trials(result)
    if result.run is not None and result.run.is_finished:
        _print_metrics(result.run.metrics)


def _print_trials(result) -> None:
    from rich.console import Console
    from rich.table import Table

    trials = result.trials
    names = [k for k in dict.fromkeys(k for t in trials for k in t) if k not in ("trial", "status", "score", "epochs")]
    table = Table("trial", "status", "score", "epochs", *names, title=f"search -> {result.path}", box=None)
    for t in trials:
        score = f"{t['score']:.4f}" if t["score"] is not None else "-"
        table.add_row(t["trial"], t["status"].lower(), score, str(t.get("epochs") or ""),
                      *(f"{t[n]:.4g}" if isinstance(t.get(n), float) else str(t.get(n, "")) for n in names))
    Console(width=max(120, Console().width)).print(table)
    print(f"best hyperparameters: {result.best_hparams} -> {result.path / 'best_hparams.json'}")


@cli.command("cv")
@_custom_objects_option
@click.argument("recipe")
@click.argument("overrides", nargs=-1)
@click.option("--folds", default=5, show_default=True, type=click.IntRange(min=2), help="Number of folds (K).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Directory (default runs/RECIPE-cvK; RUN/cv puts the figure in RUN's report). Rerun to resume.")
@click.option("--data-dir", help="TFDS data directory.")
@click.option("--hparams", type=click.Path(dir_okay=False), help="JSON of hyperparameter values, e.g. best_hparams.json.")
@click.option("--overwrite", is_flag=True, help="Start over in --out.")
@_track_option
@click.pass_context
def cv_cmd(ctx, recipe, overrides, folds, out, data_dir, hparams, overwrite, track) -> None:
    """K-fold cross-validation of RECIPE: one run per fold, then the mean ± std of its metric.

    Folds come from the train and val splits together (stratified for
    classification, contiguous forward-chaining for a time series); the test
    split is left alone. Rerun the same command to resume after an interruption.
    """
    from kerakit.cv import cross_validate

    overrides = _parse_overrides(overrides)
    _needs_tensorflow(ctx)
    summary = cross_validate(recipe, out, folds=folds, data_dir=data_dir, hparams=hparams, overwrite=overwrite,
                             track=track, **overrides)
    _print_cv(summary)


def _print_cv(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = summary["rows"]
    table = Table(*rows[0], title=f"cross-validation -> {summary['path']}", box=None)
    for r in rows:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()))
    Console(width=max(120, Console().width)).print(table)
    print(f"{summary['metric']} {summary['mean']:.4f} ± {summary['std']:.4f} (mean ± std over {summary['folds']} "
          f"{summary['scheme']} folds; test: {summary['test_mean']:.4f} ± {summary['test_std']:.4f})")


@cli.command("evaluate")
@_custom_objects_option
@click.argument("target", type=click.Path())
@click.argument("overrides", nargs=-1)
@click.option("--recipe", help="Recipe whose test split to use (needed for a .keras file outside a run).")
@click.option("--data-dir", help="TFDS data directory.")
@click.option("--split", default="test", show_default=True, help="Which split to evaluate.")
@click.option("--sample", type=click.Path(dir_okay=False), help="For a model outside a run: .npz of inputs by name and labels ('label', or 'label:OUTPUT' per output).")
@click.option("--metric-output", help="The output the metric is computed on (default: the first Keras output).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.pass_context
def evaluate_cmd(ctx, target, overrides, recipe, data_dir, split, sample, metric_output, as_json) -> None:
    """Test-split metrics of a run or any artifact (.keras, .onnx, .tflite, SavedModel dir)."""
    from kerakit.evaluate import evaluate

    overrides = _parse_overrides(overrides)
    _needs_tensorflow(ctx)
    metrics = evaluate(target, recipe=recipe, data_dir=data_dir, split=split, sample=sample,
                       metric_output=metric_output, **overrides)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        _print_metrics(metrics)


@cli.command("export")
@_custom_objects_option
@click.argument("source", type=click.Path())
@click.option("--target", "targets", multiple=True, help="Target name or TOML path (repeat or comma-separate): server, edge, mcu, x86, ...")
@click.option("--format", "formats", multiple=True, cls=_RegistryHelp, help_from=_format_help)
@click.option("--out", type=click.Path(file_okay=False), help="Output directory (default RUN/export).")
@click.option("--recipe", help="For a .keras file outside a run: the recipe whose data verifies and calibrates.")
@click.option("--sample", type=click.Path(dir_okay=False), help="For a .keras file outside a run: .npz of inputs by name (+ 'label').")
@click.option("--data-dir", help="TFDS data directory.")
@click.option("--opset", type=int, help="ONNX opset for --format onnx* (targets set their own).")
@click.pass_context
def export_cmd(ctx, source, targets, formats, out, recipe, sample, data_dir, opset) -> None:
    """Export a run or a .keras file for deployment targets; verify every artifact (exit 1 if any fails)."""
    from kerakit.export import VerificationFailed, export

    split = lambda values: [v.strip() for value in values for v in value.split(",") if v.strip()]  # noqa: E731
    targets, formats = split(targets), split(formats)
    if not targets and not formats:
        targets = ["server"]
    _needs_tensorflow(ctx)
    try:
        report = export(source, targets, formats, out=out, recipe=recipe, sample=sample, data_dir=data_dir,
                        opset=opset)
    except VerificationFailed as e:  # the table shows what failed; then the error line and exit 1
        _print_export(e.report)
        raise
    _print_export(report)


@cli.command("build")
@_custom_objects_option
@click.argument("recipe")
@click.argument("overrides", nargs=-1)
@click.option("--target", "targets", default="server,edge", show_default=True, help="Export targets, comma-separated (names or TOML paths).")
@click.option("--tune", "tuner", type=click.Choice(list(TUNERS)), help="Search hyperparameters first, then train the best.")
@click.option("--max-trials", default=10, show_default=True, type=click.IntRange(min=1), help="With --tune.")
@click.option("--max-epochs", type=click.IntRange(min=1), help="With --tune hyperband: the most epochs one trial trains.")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/RECIPE). Rerun to resume.")
@click.option("--overwrite", is_flag=True, help="Start over in --out: search (with --tune) and train again, then export and bench.")
@click.option("--bench-runs", default=100, show_default=True, type=click.IntRange(min=5), help="Timed calls per artifact and setting.")
@click.option("--data-dir", help="TFDS data directory.")
@_track_option
@click.option("--register", metavar="NAME", help="Register each verified artifact as a version of model NAME in "
              "MLflow's registry (implies --track); a failed one never is.")
@click.pass_context
def build_cmd(ctx, recipe, overrides, targets, tuner, max_trials, max_epochs, out, overwrite, bench_runs, data_dir,
              track, register) -> None:
    """Train (or tune, then train), export and verify, bench every artifact, write the report (exit 1 if an artifact fails)."""
    from kerakit.build import BuildFailed, build

    overrides = _parse_overrides(overrides)
    _needs_tensorflow(ctx)
    try:
        result = build(recipe, targets.split(","), out, tune=tuner, max_trials=max_trials, max_epochs=max_epochs,
                       bench_runs=bench_runs, data_dir=data_dir, track=track, register=register, overwrite=overwrite,
                       **overrides)
    except BuildFailed as e:  # the table shows what failed; then the error line and exit 1
        _print_deployment(e.result["deployment"], e.result["report"])
        raise
    _print_deployment(result["deployment"], result["report"])


@cli.command("report")
@_custom_objects_option
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--data-dir", help="TFDS data directory.")
@click.pass_context
def report_cmd(ctx, run, data_dir) -> None:
    """Write RUN/report/index.html and model_card.md (metrics, figures, deployment table)."""
    from kerakit.report import report

    _needs_tensorflow(ctx)
    result = report(run, data_dir=data_dir, log=lambda m: None)
    _print_deployment(result["deployment"], result)


@cli.command("track")
@click.argument("run", type=click.Path(file_okay=False))
def track_cmd(run) -> None:
    """Send a finished RUN to MLflow: what a tracking server that was down missed (nothing twice)."""
    from kerakit.tracking import track_run

    run_id = track_run(run)
    if run_id is None:
        raise KerakitError(f"Nothing of {run} was sent to MLflow (the line above says why).")
    print(f"{run} -> MLflow run {run_id}")


def _print_deployment(rows: list[dict], written: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from kerakit.report import FOOTPRINT_HEADERS, footprint_cells

    console = Console(width=max(120, Console().width))
    devices = any(r.get("footprint") for r in rows)
    if rows:
        table = Table("artifact", "size", *(FOOTPRINT_HEADERS if devices else []), "metric", "change", "p50 ms b1",
                      "samples/s b32", "verdict", title="deployment", box=None)
        for r in rows:
            size = "-" if r["size_bytes"] is None else f"{r['size_bytes'] / 1024:.0f} KiB"
            p50 = "-" if r["p50_ms_batch1"] is None else f"{r['p50_ms_batch1']:.3f}" + (" †" if r.get("timing_note") else "")
            table.add_row(r["artifact"], size, *(footprint_cells(r.get("footprint")) if devices else []),
                          "-" if r["metric"] is None else f"{r['metric']:.4f}",
                          "" if r["verdict"] == "reference" or r["metric_change"] is None else f"{r['metric_change']:+.4f}",
                          p50, "-" if r["throughput_batch32"] is None else f"{r['throughput_batch32']:,.0f}", r["verdict"])
        console.print(table)
    for r in rows:
        if r.get("timing_note"):
            console.print(f"† {r['artifact']}: {r['timing_note']}", markup=False)
    for flag in written["flags"]:
        console.print(f"flag: {flag}", markup=False)
    console.print(f"report: {written['html']}  (Markdown: {written['markdown']})", markup=False)


@cli.command("data")
@click.argument("path", type=click.Path())
@click.option("--label", help="The label column (a table): enables the label checks (conflicts, leakage, imbalance); several, comma-separated, are each checked (--label species,body_mass_g).")
@click.option("--sep", help="The separator of a CSV file (default: detected among , ; tab |).")
@click.option("--encoding", help="The text encoding of a CSV file (default: detected; e.g. latin-1).")
@click.option("--decimal", type=click.Choice([".", ","]), help="The decimal mark of numbers in a CSV file (default: detected).")
@click.option("--type", "types", multiple=True, metavar="COLUMN=TYPE", help="A column's type instead of the inferred one (repeatable): number, category, boolean, text, date, identifier.")
@click.option("--group", help="Keep every row of one value of this column in one split (patient, customer, ...).")
@click.option("--time", help="Split by this column's time order: the earliest rows train, the latest test.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the split.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the report as JSON to this file.")
def data_cmd(path, label, sep, encoding, decimal, types, group, time, seed, json_path) -> None:
    """A data report of PATH before training: types, splits and the flags that break models."""
    from kerakit.sources import data_report

    types = _parse_overrides(types, "--type", "COLUMN=TYPE (e.g. zip_code=category)")
    report = data_report(path, label, sep=sep, encoding=encoding, decimal=decimal, types=types, seed=seed,
                         group=group, time=time)
    if json_path:
        from kerakit import files

        files.write_json(json_path, report)
    _print_data_report(report)


@cli.command("new")
@click.argument("name")
@click.option("--from", "source", required=True, type=click.Path(), help="The data: a table file (CSV/TSV, Parquet, JSON Lines) or a folder with one subfolder per class.")
@click.option("--label", help="The label column of a table; several, comma-separated, for a model with one output each (--label species,body_mass_g).")
@click.option("--task", type=click.Choice(["classification", "regression"]), help="Default: regression for a number label, else classification (one label only).")
@click.option("--out-dir", default="recipes", show_default=True, type=click.Path(file_okay=False), help="Where the recipe file goes.")
@click.option("--force", is_flag=True, help="Overwrite an existing recipe file of that name.")
def new_cmd(name, source, label, task, out_dir, force) -> None:
    """Write recipes/NAME.py for your own data (after its data report), then `kerakit build NAME` works."""
    from kerakit import files
    from kerakit.sources import new_recipe

    target = Path(out_dir) / f"{name}.py"
    if target.exists() and not force:
        raise KerakitError(f"{target} exists: pick another NAME, or pass --force to overwrite it.")
    report, text = new_recipe(name, source, label, task)
    _print_data_report(report)
    with files.atomic_path(target) as tmp:
        tmp.write_text(text)
    click.echo(f"Recipe written to {target} (yours to edit). Next: kerakit build {name} --target server,edge")


def _print_data_report(report: dict) -> None:
    if "classes" in report:
        click.echo(f"data: {report['read_as']}; classes: {', '.join(report['classes'])}")
    else:
        labels = ", ".join(f"{c!r} ({task})" for c, task in report.get("tasks", {}).items())
        click.echo(f"data: {report['read_as']}" + (f", label{'s' if len(report['tasks']) > 1 else ''} {labels}"
                                                   if labels else ""))
    if "columns" in report:
        _print_columns(report["columns"])
    if "images" in report:
        images = report["images"]
        sizes = " ".join(f"{k} {images[k]['min']}-{images[k]['max']} (median {images[k]['median']})"
                         for k in ("width", "height") if k in images)
        click.echo(f"images: {sizes}; modes {', '.join(f'{m} {n}' for m, n in images['modes'].items())}")
    splits = "; ".join(f"{name} {s['rows']}" + (" (" + ", ".join(f"{k} {v}" for k, v in s["classes"].items()) + ")"
                                                 if "classes" in s else "") for name, s in report["splits"].items())
    click.echo(f"split: {report['split_rule']}\n  {splits}")
    for flag in report["flags"]:
        examples = f" [rows/values: {', '.join(map(str, flag['examples']))}]" if flag["examples"] else ""
        click.echo(f"flag: {flag['check']}: {flag['message']}{examples}")
    click.echo(f"{len(report['flags'])} flag(s)" if report["flags"] else "no flags")


def _print_columns(columns: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("column", "type", "missing", "distinct", "min", "median", "max", box=None)
    for c in columns:
        table.add_row(c["column"], c["type"], str(c["missing"]), str(c["distinct"]),
                      *(f"{c[k]:.4g}" if k in c else "" for k in ("min", "median", "max")))
    Console(width=max(120, Console().width)).print(table)


@cli.command("drift")
@_custom_objects_option
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="A `kerakit serve` request log (.jsonl), or model inputs (.npz by input name, .npy, .csv).")
@click.option("--psi", "psi_threshold", default=0.2, show_default=True, type=click.FloatRange(min=0), help="Population stability index above which a series drifts.")
@click.option("--ks", "ks_threshold", default=0.2, show_default=True, type=click.FloatRange(0, 1), help="Kolmogorov-Smirnov statistic above which a series drifts.")
@click.option("--data-dir", help="TFDS data directory (for the training data of a run that has no data_profile.json).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def drift_cmd(ctx, run, data, psi_threshold, ks_threshold, data_dir, as_json) -> None:
    """Compare new inputs (or a server request log) with RUN's training data; exit 3 on drift."""
    from kerakit.drift import drift

    _needs_tensorflow(ctx)
    result = drift(run, data, psi_threshold=psi_threshold, ks_threshold=ks_threshold, data_dir=data_dir)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("series", "PSI", "KS", "train median", "new median", "drift",
                      title=f"drift: {result['described']} vs training data", box=None)
        def median(value, missing) -> str:  # and the share of rows missing, where a column has gaps
            shown = "-" if value is None else f"{value:.4g}"
            return f"{shown} ({missing:.1%} missing)" if missing else shown

        for r in result["series"]:
            table.add_row(r["series"], f"{r['psi']:.3f}", f"{r['ks']:.3f}",
                          median(r["reference_median"], r["reference_missing"]),
                          median(r["new_median"], r["new_missing"]), "DRIFT" if r["drift"] else "")
        for r in result["categories"]:  # the share of the category that moved most, in train and now
            m, value = r["moved"], "other" if r["moved"]["value"] is None else repr(r["moved"]["value"])
            table.add_row(f"{r['input']} categories", f"{r['psi']:.3f}", "-", f"{value} {m['reference']:.0%}",
                          f"{value} {m['new']:.0%}", "DRIFT" if r["drift"] else "")
        p = result["predictions"]
        if p:
            table.add_row("predictions", f"{p['psi']:.3f}", f"{p['ks']:.3f}" if "ks" in p else "-", "", "",
                          "DRIFT" if p["drift"] else "")
        Console(width=max(120, Console().width)).print(table)
        if result["profiled_now"]:
            click.echo("training data profiled now: the run has no data_profile.json of this kerakit")
        verdict = (f"drift in {len(result['drifted'])} series: {', '.join(result['drifted'])}" if result["drift"]
                   else "no drift")
        click.echo(f"{verdict} (thresholds PSI {psi_threshold}, KS {ks_threshold})")
    if result["drift"]:
        ctx.exit(3)


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise click.BadParameter(f"{text!r}: expected comma-separated positive integers, e.g. 1,8,32.", param_hint=option)
    return values


@cli.command("bench")
@_custom_objects_option
@click.argument("artifacts", nargs=-1, required=True, type=click.Path())
@click.option("--batch", "batches", default="1,8,32", show_default=True, help="Batch sizes to sweep.")
@click.option("--threads", default="1,2", show_default=True, cls=_RegistryHelp, help_from=_threads_help)
@click.option("--runs", "runs_", default=200, show_default=True, type=click.IntRange(min=5), help="Most timed calls per artifact and setting.")
@click.option("--precision", default=0.03, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Stop timing a figure once its p50 is known within +-this fraction (95 %, bootstrap over blocks).")
@click.option("--budget", "budget_s", default=1.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="... or after this many seconds of timing it.")
@click.option("--warmup", default=20, show_default=True, type=click.IntRange(min=0), help="Untimed calls first.")
@click.option("--no-sweep", "--no-onnx-sweep", "no_sweep", is_flag=True, help="Skip comparing runtime settings (ONNX: optimization level x threads; OpenVINO: hint x threads) "
              "and, for a run, writing its deployment.json.")
@click.option("--out", type=click.Path(file_okay=False), help="Where bench.json and bench.png go (default RUN/bench).")
@click.option("--data-dir", help="TFDS data directory.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS", help="Size of an input whose dimensions the model leaves open, batch first (repeatable), e.g. image=1x64x64x3.")
@click.pass_context
def bench_cmd(ctx, artifacts, batches, threads, runs_, precision, budget_s, warmup, no_sweep, out, data_dir,
              input_shapes) -> None:
    """Latency/throughput of ARTIFACTS side by side (files, SavedModels, or a run = all its formats)."""
    from kerakit.bench import bench
    from kerakit.runtime import parse_input_shapes

    batches, threads = _int_list(batches, "--batch"), _int_list(threads, "--threads")
    shapes = parse_input_shapes(input_shapes)
    _needs_tensorflow(ctx)
    result = bench(artifacts, batches=batches, threads=threads, runs_=runs_, warmup=warmup, precision=precision,
                   budget_s=budget_s, sweep=not no_sweep, data_dir=data_dir, out=out, input_shapes=shapes)
    _print_bench(result)


def _print_bench(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("artifact", "batch", "threads", "p50 ms", "±", "p90 ms", "p99 ms", "mean ms", "samples/s", "calls",
                  title=f"bench -> {result['out']}", box=None)
    for r in sorted(result["rows"], key=lambda r: (r["batch"], str(r["threads"]), r["p50_ms"])):
        table.add_row(r["artifact"], str(r["batch"]), str(r["threads"]), f"{r['p50_ms']:.3f}", _precision(r),
                      f"{r['p90_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['mean_ms']:.3f}", f"{r['throughput_per_s']:,.0f}",
                      str(r["calls"]))
    console = Console(width=max(120, Console().width))
    console.print(table)
    console.print(f"inputs: {result['inputs_from']}; peak RSS {result['peak_rss_mb']:.0f} MiB")
    for name, note in result.get("notes", {}).items():
        console.print(f"{name}: {note}", markup=False)
    console.print(f"± = half-width of the p50's 95 % interval (bootstrap over blocks of calls); "
                  f"{result['seconds']:.0f} s in all")
    for name, sweep in result.get("sweep", {}).items():
        console.print(f"{name}: best {sweep['best']} (now its default when the file is loaded)"
                      + (f"; could not tell it from {', '.join(sweep['tied'])}" if sweep.get("tied") else ""), markup=False)
    for batch, c in result.get("deployment", {}).items():
        console.print(_deploy_line(batch, c), markup=False)
    if result.get("deployment"):
        console.print("(written to the run's deployment.json: what `kerakit serve RUN` and runtime.load(RUN) use)")


def _deploy_line(batch, c: dict) -> str:
    """A pick, the precision it reached, the next artifact's figure, and whether the measurement decided it."""
    line = f"deploy at batch {batch}: {c['artifact']} ({c['setting']}) {c['p50_ms']:.3f} ms {_precision(c)}"
    if c["beat"]:
        beat = c["beat"][0]
        line += (f"; next {beat['artifact']} ({beat['setting']}) "
                 + (f"is {beat['ratio']:.2f}x slower" if beat["ratio"] >= 1 else f"takes {beat['ratio']:.2f}x its time"))
    if not c.get("decided", True):
        line += f"; could not decide (intervals overlap {', '.join(c['tied'])}): the simpler setting"
    return line


def _precision(stats: dict) -> str:
    return f"±{stats['precision']:.1%}" if stats.get("precision") is not None else "-"


def _print_export(report) -> None:
    from rich.console import Console
    from rich.table import Table

    metric = (report.keras_metric or {}).get("name") or "metric"
    rows = report.artifacts
    from kerakit.report import FOOTPRINT_HEADERS, footprint_cells

    with_ratio = any("size_vs_tflite_fp32" in r for r in rows)
    devices = any(r.get("footprint") for r in rows)
    columns = ["artifact", "size", *(["vs tflite fp32"] if with_ratio else []), *(FOOTPRINT_HEADERS if devices else []),
               "max abs err", metric, "change", "verdict"]
    table = Table(*columns, title=f"export -> {report.out}", box=None)
    keras_metric = report.keras_metric
    if keras_metric:
        table.add_row("keras", "", *([""] if with_ratio else []), *([""] * 3 if devices else []), "",
                      f"{keras_metric['value']:.4f}", "", "reference")
    for r in rows:
        size = f"{r['size_bytes'] / 1024:.0f} KiB" if "size_bytes" in r else "-"
        ratio = [f"{r['size_vs_tflite_fp32']:.3f}x" if "size_vs_tflite_fp32" in r else "-"] if with_ratio else []
        ratio += footprint_cells(r.get("footprint")) if devices else []
        err = f"{r['max_abs_error']:.2e}" if r.get("max_abs_error") is not None else "-"
        value = f"{r['metric']:.4f}" if r.get("metric") is not None else "-"
        change = f"{r['metric_change']:+.4f}" if r.get("metric_change") is not None else "-"
        verdict = r["verdict"] if r["verdict"] == "verified" else f"FAILED: {'; '.join(r.get('reasons', []))}"
        table.add_row(r["artifact"], size, *ratio, err, value, change, verdict)
    Console(width=max(120, Console().width)).print(table)
    for layout in report.layouts:
        print(f"{layout['layout']}: {layout.get('path') or 'not written: ' + layout['reason']}")


def _print_metrics(metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    headline = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    console.print(("" if "output" not in metrics else f"output={metrics['output']}  ")
                  + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in headline.items()))
    for name, values in metrics.get("outputs", {}).items():
        console.print(f"  {name}: " + "  ".join(f"{k}={v:.4f}" for k, v in values.items() if isinstance(v, float)))
    if "baselines" in metrics:  # a tabular recipe's (kerakit.baselines)
        found = metrics["baselines"]
        console.print(f"baselines (trained on the same {found['train_examples']} training rows; {found['rows']}):",
                      markup=False)
        for name, values in found.items():
            if isinstance(values, dict):
                console.print(f"  {name}: " + "  ".join(f"{k}={v:.4f}" for k, v in values.items()))
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


@cli.command("serve")
@_custom_objects_option
@click.argument("source", required=False, metavar="[ARTIFACT_OR_RUN]", type=click.Path())
@click.option("--name", help="Model name in URLs (default: the run's recipe, else the file name).")
@click.option("--model-dir", type=click.Path(file_okay=False), help="Also serve every NAME/VERSION/model.* in DIR (Triton/TF Serving layout).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 exposes the server to the network).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--grpc-port", default=8001, show_default=True, type=click.IntRange(0, 65535), help="KServe v2 gRPC (inference.GRPCInferenceService) on the same host.")
@click.option("--no-grpc", is_flag=True, help="Serve no gRPC.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Server processes, each with its own copy of the models.")
@click.option("--max-batch", default=1, show_default=True, type=click.IntRange(min=1), help="Dynamic batching: merge concurrent requests up to this many rows (1 = off).")
@click.option("--batch-wait-ms", default=1.0, show_default=True, type=click.FloatRange(min=0), help="How long a batch waits for more requests.")
@click.option("--max-batch-rows", default=1024, show_default=True, type=click.IntRange(min=1), help="Most rows in one request (413 above; max_batch_size in /config).")
@click.option("--threads", type=click.IntRange(min=0), cls=_RegistryHelp, help_from=lambda: _threads_help(serve=True))
@click.option("--max-body-mb", default=4.0, show_default=True, type=click.FloatRange(min=0.001), help="Largest request body accepted, after decompression (413 above).")
@click.option("--max-elements", default=1_000_000, show_default=True, type=click.IntRange(min=1), help="Most numbers in one request (413 above).")
@click.option("--keep-alive-s", default=5.0, show_default=True, type=click.FloatRange(min=0.1), help="Close idle HTTP connections after this long.")
@click.option("--header-timeout-s", default=10.0, show_default=True, type=click.FloatRange(min=0.1), help="A request's headers must arrive within this (408 and closed; also a gRPC connection's handshake).")
@click.option("--body-timeout-s", default=10.0, show_default=True, type=click.FloatRange(min=0.1), help="Longest wait between two reads of a request body (408 and closed).")
@click.option("--max-connections", type=click.IntRange(min=1), help="Open connections per listener (HTTP, gRPC); a new one past it gets 503 (gRPC: refused). Default 1000, or what ulimit -n allows.")
@click.option("--max-queue", default=256, show_default=True, type=click.IntRange(min=1), help="Inference requests queued or running at once (503 with Retry-After above; gRPC UNAVAILABLE).")
@click.option("--max-concurrent-rpcs", default=1024, show_default=True, type=click.IntRange(min=1), help="gRPC calls in flight (RESOURCE_EXHAUSTED above).")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), help="Request log (JSON lines) for `kerakit drift` (default RUN/requests.jsonl when serving a run's model).")
@click.option("--no-log", is_flag=True, help="Write no request log.")
@click.option("--log-inputs", is_flag=True, help="Log raw input values too, not only per-row summary statistics.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS", help="Warm-up size of an input whose dimensions the model leaves open, batch first (repeatable), e.g. image=1x64x64x3.")
@click.option("--rebench", is_flag=True, help="A run benched on another machine (other ISA flags, fewer cores): re-bench its verified artifacts here first (at most 10 s) rather than pick by rule.")
@click.pass_context
def serve_cmd(ctx, source, name, model_dir, host, port, grpc_port, no_grpc, workers, max_batch, batch_wait_ms,
              max_batch_rows, threads, max_body_mb, max_elements, keep_alive_s, header_timeout_s, body_timeout_s,
              max_connections, max_queue, max_concurrent_rpcs, log_path, no_log, log_inputs, input_shapes,
              rebench) -> None:
    """Serve models: KServe v2 over HTTP and gRPC (Triton and KServe clients), TF Serving REST, /metrics."""
    from kerakit import runs
    from kerakit.runtime import parse_input_shapes
    from kerakit.serve import ServeOptions, resolve, serve

    shapes = parse_input_shapes(input_shapes)

    entries = resolve(source, name, model_dir, rebench=rebench)
    if log_path is None and not no_log and source is not None:
        run = runs.find_run(entries[0].path)
        log_path = str(run.request_log) if run is not None else None
    from kerakit import formats
    from kerakit.serve.models import check_threads

    check_threads(entries, threads)  # before anything starts
    if any(formats.get(e.format).needs_tensorflow for e in entries):
        _needs_tensorflow(ctx)
    grpc_host = f"[{host}]" if ":" in host else host
    options = ServeOptions(max_body_bytes=int(max_body_mb * 1024 * 1024), max_elements=max_elements,
                           max_batch=max_batch, max_batch_rows=max_batch_rows, batch_wait_ms=batch_wait_ms,
                           threads=threads, log_path=None if no_log else log_path, log_inputs=log_inputs,
                           grpc_address=None if no_grpc else f"{grpc_host}:{grpc_port}", input_shapes=shapes,
                           max_queue=max_queue, max_concurrent_rpcs=max_concurrent_rpcs, max_connections=max_connections,
                           header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s)
    serve(entries, options, host=host, port=port, workers=workers, keep_alive_s=keep_alive_s,
          announce=lambda m: click.echo(m, err=True))


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="kerakit")


if __name__ == "__main__":
    main()
