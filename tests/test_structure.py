"""The package's shape: arrows one way, no import cycle, functions that read as one phase.

Read with `ast` (imports inside functions count too); nothing is imported or run.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "kerakit"
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        found[name] = (path, ast.parse(path.read_text(), str(path)))
    return found


MODULES = _modules()


def _imports(name: str, path: Path, tree: ast.Module) -> set[str]:
    """The kerakit modules `name` imports, at module level or inside functions."""
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".")[: None if path.name == "__init__.py" else -1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in names:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target not in (name, "kerakit"):
                targets.add(target)
    return targets


GRAPH = {name: _imports(name, path, tree) for name, (path, tree) in MODULES.items()}


def _cycles() -> list[list[str]]:
    found, done = [], set()

    def visit(module, stack):
        for nxt in sorted(GRAPH.get(module, ())):
            if nxt in stack:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, stack + [nxt])
        done.add(module)

    for module in sorted(GRAPH):
        if module not in done:
            visit(module, [module])
    return found


def test_no_module_imports_back_up_the_flow():
    assert _cycles() == []


def test_no_function_is_longer_than_one_phase():
    long = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, tree in MODULES.values() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


SOURCES = sorted(name for name in MODULES if name == "kerakit.sources" or name.startswith("kerakit.sources."))


@pytest.mark.parametrize("module, may_import", [
    # The layers everything else stands on know nothing above them.
    ("kerakit.metrics", {"kerakit.errors"}),
    ("kerakit.dtypes", set()),
    ("kerakit.request_log", {"kerakit.errors", "kerakit.runs"}),
    ("kerakit.stats", {"kerakit.errors", "kerakit.request_log"}),  # numbers in, numbers out: no run, model or data
    ("kerakit.files", {"kerakit.errors"}),  # atomic writes, JSON, SHA-256, the writer lock: no layout
    ("kerakit.runs", {"kerakit.errors", "kerakit.files", "kerakit.recipe"}),  # a run loads its own copy of its recipe
    # The user's files become data below everything that trains, exports or serves; a source may write a file of
    # its own atomically (kerakit.files), but knows no run. Sorted: pytest-xdist needs one order.
    *((m, {"kerakit.errors", "kerakit.quiet", "kerakit.files", *SOURCES}) for m in SOURCES),
])
def test_the_bottom_layers_import_only_what_is_below_them(module, may_import):
    assert GRAPH[module] <= may_import


def test_formats_know_no_command_and_commands_know_no_format_internals():
    for name, imports in GRAPH.items():
        if name.startswith("kerakit.formats"):
            assert not {i for i in imports if i.split(".")[1] in
                        ("export", "serve", "bench", "evaluate", "report", "build", "cli", "train", "tune")}, name
    # Outside the registry, only export (conversion) and the loaders of a model's own file reach into a format module.
    reach = {name for name, imports in GRAPH.items() if not name.startswith("kerakit.formats")
             and any(i.startswith("kerakit.formats.") and i != "kerakit.formats.base" for i in imports)}
    # cli: --custom-objects is the Keras format's option; train: reloads the model it saved, as every loader does.
    assert reach <= {"kerakit.export", "kerakit.export.context", "kerakit.evaluate", "kerakit.report",
                     "kerakit.drift", "kerakit.train", "kerakit.cli"}, reach


def test_serve_and_drift_share_the_request_log_not_each_other():
    serve = {name for name in GRAPH if name.startswith("kerakit.serve")}
    assert not any("kerakit.drift" in GRAPH[s] for s in serve)
    assert not any(i.startswith("kerakit.serve") for i in GRAPH["kerakit.drift"])
    assert "kerakit.request_log" in GRAPH["kerakit.drift"]


# What only the export report may touch: the file's name, the run's path to it, and the SHA-256 check of a file.
EXPORT_RESULTS = {"EXPORT_REPORT_FILE", "export_report", "intact"}


def _export_results_touched(tree: ast.Module) -> list[str]:
    """`name:line` of each place a module reads export_report.json itself or judges a file by its SHA-256."""
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.Constant) and node.value == "export_report.json":
            names = [node.value]
        found += [f"{name}:{node.lineno}" for name in names if name in EXPORT_RESULTS | {"export_report.json"}]
    return found


def test_only_the_export_report_reads_export_results_and_judges_still_verified():
    """Export's results are a typed contract: build, bench, deployment and report ask `kerakit.export.report`
    (ExportReport.read / find, ArtifactRow.still_verified) instead of reading export_report.json's keys or
    re-hashing artifacts, so "verified" cannot mean three different things."""
    owners = {"kerakit.runs", "kerakit.export.report"}  # runs names the file and checks a run's own files
    touched = {name: places for name, (_, tree) in MODULES.items() if name not in owners
               and (places := _export_results_touched(tree))}
    assert touched == {}


def _tuner_table() -> tuple[str, set[str]]:
    """The module that defines TUNERS, and the --tuner names it lists (its dict's string keys, or the first
    argument of each entry it builds)."""
    for name, (_, tree) in MODULES.items():
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if any(isinstance(t, ast.Name) and t.id == "TUNERS" for t in targets):
                keys = {k.value for d in ast.walk(node.value) if isinstance(d, ast.Dict) for k in d.keys
                        if isinstance(k, ast.Constant) and isinstance(k.value, str)}
                firsts = {c.args[0].value for c in ast.walk(node.value) if isinstance(c, ast.Call) and c.args
                          and isinstance(c.args[0], ast.Constant) and isinstance(c.args[0].value, str)}
                return name, keys | firsts
    raise AssertionError("no module defines TUNERS")


def _spelled(node: ast.AST) -> set[str]:
    """The string constants `node` is: itself, or the items of a tuple, list or set literal."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}


def test_no_tuner_is_told_apart_by_its_name_outside_the_tuner_table():
    """A tuner's differences (its budget argument, cross-validation, its keras-tuner class) are fields of its
    TUNERS entry, so adding a tuner, or running a custom Oracle, never means finding `== "hyperband"` branches."""
    table, names = _tuner_table()
    assert {"random", "hyperband"} <= names, names
    found = []
    for module, (path, tree) in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                spelled = set().union(*map(_spelled, [node.left, *node.comparators]))
            elif isinstance(node, ast.MatchValue):
                spelled = _spelled(node.value)
            else:
                continue
            found += [f"{module}:{node.lineno} compares {name!r}" for name in sorted(spelled & names)]
    assert found == [], f"compare the fields of {table}.TUNERS' entries instead: {found}"


def _format_names() -> set[str]:
    """The format names kerakit registers: its `kerakit.formats` entry points, read from pyproject.toml."""
    import tomllib

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    return set(project["entry-points"]["kerakit.formats"])


def _outside_formats():
    return ((name, path, tree) for name, (path, tree) in MODULES.items() if not name.startswith("kerakit.formats"))


def test_no_module_outside_formats_names_a_format():
    """The format travels as an object: a module outside `formats/` that wrote "onnx" would be deciding for
    a format. The Keras reference model (the row every artifact is compared with, the model training
    saves) is the one name the rest of kerakit may say."""
    names = _format_names() - {"keras"}
    assert {"onnx", "tflite", "savedmodel"} <= names  # what this test is guarding is read from the right place
    named = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.value!r}" for _, path, tree in _outside_formats()
             for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and node.value in names]
    assert named == []


# Finding a format from a file happens where a user hands one in; everywhere else the `Format` is passed on.
SNIFFERS = {"for_path", "match", "detect_format"}
MAY_SNIFF = {
    ("kerakit.runtime", "load"), ("kerakit.runtime", "detect_format"),  # runtime.load(PATH), the public API
    ("kerakit.bench", "expand"),                                         # bench's ARTIFACTS, once each
    ("kerakit.serve.models", "__post_init__"),                           # a ModelEntry of a path with no format
    ("kerakit.serve.models", "discover"),                                # serve --model-dir's directories
    ("kerakit.evaluate", "evaluate"),                                    # evaluate PATH
}


def _sniffs(tree: ast.Module) -> list[tuple[str, int]]:
    """(enclosing function, line) of each `formats.for_path(...)`, `formats.match(...)`, `runtime.detect_format(...)`."""
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            call = child.func if isinstance(child, ast.Call) else None
            if (isinstance(call, ast.Attribute) and call.attr in SNIFFERS and isinstance(call.value, ast.Name)
                    and call.value.id in ("formats", "runtime")):
                found.append((function, child.lineno))
            visit(child, inner)

    visit(tree, "<module>")
    return found


def test_only_where_a_user_hands_in_a_path_is_its_format_found_from_the_file():
    sniffing = [f"{path.relative_to(PACKAGE.parent)}:{line} in {function}" for name, path, tree in _outside_formats()
                for function, line in _sniffs(tree) if (name, function) not in MAY_SNIFF]
    assert sniffing == []
    assert any(_sniffs(MODULES["kerakit.bench"][1]))  # the detector finds the calls it is meant to


def _public_names(tree: ast.Module) -> set[str]:
    """The names a module defines at its top level (functions, classes, constants), not those it imports."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return {name for name in names if not name.startswith("_")}


def test_the_file_primitives_have_one_owner_and_are_reached_through_it():
    """How a file is written (atomic paths, JSON, hashes, the writer lock) is `kerakit.files` alone: runs.py does
    not hand its names on, and no module, benchmark or test reaches them as `runs.write_json` & co."""
    primitives = _public_names(MODULES["kerakit.files"][1])
    assert {"write_json", "atomic_path", "sha256", "writer", "LOCK_FILE"} <= primitives
    runs_tree = MODULES["kerakit.runs"][1]
    imported = {alias.asname or alias.name for node in ast.walk(runs_tree) if isinstance(node, ast.ImportFrom)
                and node.module == "kerakit.files" for alias in node.names}
    assert not imported & primitives, f"kerakit/runs.py imports {sorted(imported & primitives)} from kerakit.files"
    root, through_runs = PACKAGE.parent, []
    for path in sorted([*PACKAGE.rglob("*.py"), *(root / "bench").glob("*.py"), *(root / "tests").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and node.attr in primitives and isinstance(node.value, ast.Name)
                    and node.value.id == "runs"):
                through_runs.append(f"{path.relative_to(root)}:{node.lineno} runs.{node.attr}")
            elif isinstance(node, ast.ImportFrom) and node.module == "kerakit.runs":
                through_runs += [f"{path.relative_to(root)}:{node.lineno} from kerakit.runs import {alias.name}"
                                 for alias in node.names if alias.name in primitives]
    assert not through_runs, "call these through kerakit.files:\n" + "\n".join(through_runs)
