"""Every option a message advises exists on the command that prints it.

Read with `ast`, like tests/test_structure.py; nothing is run. From each command of the CLI (and the CLI's
error handler, which every command goes through) the calls are followed into kerakit: functions by name,
methods of the classes the calling module knows, and the functions a registry entry was given (a format's
`convert=`). Every string in a function reached (messages, log lines, click help; not docstrings) that names
an option (`--out`) must name one of that command's options, unless the option follows `kerakit CMD` in the
same sentence (`rerun `kerakit bench RUN --out DIR``): then it is checked on CMD, which must exist.

Following calls by name reaches more than a command ever runs (build hands export its own run, never a
--sample). UNREACHED lists each such hint by the function holding it, the command and the options, with why
that command never prints it; an entry that no longer matches anything must go. A new hint in a new place
is checked with no entry to hide it. An option spelled through a placeholder (`--{role}`) is not seen.
"""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "kerakit"
OPTION = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)(?![\w])")
# `kerakit CMD ...` up to the end of its sentence or clause: the options there are CMD's.
NAMED = re.compile(r"kerakit ([a-z]+)\b(.*?)(?=\. |; |\.$|$)")
GLOBAL_OPTIONS = {"debug", "help", "version"}  # the group's, valid before any command

_BUILD_OWN_RUN = "build exports its own run: the recipe's data verifies and calibrates, never a --sample, --recipe or random inputs"
_BUILD_OWN_TUNE = "build searches with a built-in --tune (a choice), budget checked by build first, no --cv, --workers or --role"
_RUN_RECORDS_ORDER = ("only a file from elsewhere lacks its Keras output order, and only evaluate (which has --metric-output) "
                      "is handed one; a run's model and its artifacts record it")
_NO_OUT = "_Group.invoke passes takes_out=False for a command without --out: the line without it"
_REPORT_WRITER = "report takes its run's writer lock with has_out=False: the line without --out"
_REBENCH_WRITER = ("runtime.load(RUN) re-benches on a changed machine into the run it reads "
                   "(deployment.measure_here: has_out=False): the line without --out")
_OWN_HPARAMS = "tune and build hand train the best_hparams.json their search wrote"
_RESEND = "track_run starts its tracker with resend=`kerakit track RUN`, said instead of 'rerun with --track'"
UNREACHED = {
    ("kerakit.bench:bench", "build", ("batch", "threads")): "build passes its own BENCH_BATCHES and BENCH_THREADS",
    ("kerakit.cli:_disk_error", "recipes", ("out",)): _NO_OUT,
    ("kerakit.cli:_disk_error", "evaluate", ("out",)): _NO_OUT,
    ("kerakit.cli:_disk_error", "report", ("out",)): _NO_OUT,
    ("kerakit.cli:_disk_error", "track", ("out",)): _NO_OUT,
    ("kerakit.cli:_disk_error", "data", ("out",)): _NO_OUT,
    ("kerakit.cli:_disk_error", "new", ("out",)): _NO_OUT,
    ("kerakit.cli:_disk_error", "drift", ("out",)): _NO_OUT,
    ("kerakit.cli:_disk_error", "serve", ("out",)): _NO_OUT,
    ("kerakit.files:ensure_writable_dir", "report", ("out",)): _REPORT_WRITER,
    ("kerakit.files:_acquire", "report", ("out",)): _REPORT_WRITER,
    **{(f"kerakit.files:{f}", c, ("out",)): _REBENCH_WRITER
       for f in ("ensure_writable_dir", "_acquire") for c in ("evaluate", "drift", "serve")},
    ("kerakit.export.source:_from_sample", "build", ("sample",)): _BUILD_OWN_RUN,
    ("kerakit.export.source:_more_sample_rows", "build", ("sample",)): _BUILD_OWN_RUN,
    ("kerakit.export.source:_random", "build", ("recipe", "sample")): _BUILD_OWN_RUN,
    ("kerakit.sample:Sample.labels_by_output", "build", ("sample",)): _BUILD_OWN_RUN,
    ("kerakit.sample:read_sample", "build", ("sample",)): _BUILD_OWN_RUN,
    ("kerakit.formats.onnx:quantize", "build", ("sample",)): _BUILD_OWN_RUN,
    ("kerakit.formats.openvino:quantize", "build", ("sample",)): _BUILD_OWN_RUN,
    ("kerakit.formats.tflite:tflite_bytes", "build", ("sample",)): _BUILD_OWN_RUN,
    ("kerakit.export:export", "build", ("format",)): "build refuses an empty --target itself (_check_targets) and "
                                                     "passes no --format",
    ("kerakit.export.targets:format_target", "build", ("format",)): "build passes no --format",
    ("kerakit.runtime:example_inputs", "build", ("input-shape",)): "build benches a run: its inputs come from the "
                                                                   "run's test split (bench._inputs)",
    ("kerakit.runtime:metric_output", "train", ("metric-output",)): _RUN_RECORDS_ORDER,
    ("kerakit.runtime:metric_output", "tune", ("metric-output",)): _RUN_RECORDS_ORDER,
    ("kerakit.runtime:metric_output", "cv", ("metric-output",)): _RUN_RECORDS_ORDER,
    ("kerakit.runtime:metric_output", "build", ("metric-output",)): _RUN_RECORDS_ORDER,
    ("kerakit.runtime:metric_output", "report", ("metric-output",)): _RUN_RECORDS_ORDER,
    ("kerakit.runtime:metric_output", "drift", ("metric-output",)): _RUN_RECORDS_ORDER,
    ("kerakit.train:_load_hparams", "tune", ("hparams",)): _OWN_HPARAMS,
    ("kerakit.train:_load_hparams", "build", ("hparams",)): _OWN_HPARAMS,
    ("kerakit.tracking:Tracker.start", "track", ("track",)): _RESEND,
    ("kerakit.tracking:Tracker._call", "track", ("track",)): _RESEND,
    ("kerakit.tune:TuneRequest.check", "build", ("cv", "oracle", "role", "workers")): _BUILD_OWN_TUNE,
    ("kerakit.tune:_check_request", "build", ("cv", "tuner")): _BUILD_OWN_TUNE,
    ("kerakit.tuners:_import", "build", ("tuner",)): _BUILD_OWN_TUNE,
    ("kerakit.tuners:make_tuner", "build", ("tuner",)): _BUILD_OWN_TUNE,
}


# --------------------------------------------------------------------------- the package, read

def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(), str(path))
    return found


MODULES = _modules()
FUNCTIONS: dict[str, tuple[str, ast.AST, "str | None"]] = {}  # "module:name" or "module:Class.name"
for _module, _tree in MODULES.items():
    for _node in _tree.body:
        if isinstance(_node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            FUNCTIONS[f"{_module}:{_node.name}"] = (_module, _node, None)
        elif isinstance(_node, ast.ClassDef):
            for _sub in _node.body:
                if isinstance(_sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    FUNCTIONS[f"{_module}:{_node.name}.{_sub.name}"] = (_module, _sub, _node.name)
METHODS: dict[str, set[str]] = {}  # method name -> "module:Class.method"
for _qualname, (_, _, _class) in FUNCTIONS.items():
    if _class is not None:
        METHODS.setdefault(_qualname.rpartition(".")[2], set()).add(_qualname)


def _package_of(module: str) -> list[str]:
    is_package = (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()
    return module.split(".") if is_package else module.split(".")[:-1]


def _bindings(module: str, nodes) -> dict[str, tuple]:
    """Names the imports among `nodes` bind: ("module", name) or ("def", module, name)."""
    bound = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            bound.update({a.asname: ("module", a.name) for a in node.names if a.asname and a.name in MODULES})
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package_of(module)
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if not base.startswith("kerakit"):
                continue
            for a in node.names:
                full = f"{base}.{a.name}"
                bound[a.asname or a.name] = ("module", full) if full in MODULES else ("def", base, a.name)
    return bound


MODULE_BINDINGS = {m: _bindings(m, tree.body) for m, tree in MODULES.items()}
PACKAGES = {m for m in MODULES if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").exists()}
DEFINED = {m: {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
           for m, tree in MODULES.items()}


def _defined(module: str, name: str) -> set[str]:
    """The functions `module.name` is: a function, a class's constructor, or what the module re-exports."""
    if f"{module}:{name}" in FUNCTIONS:
        return {f"{module}:{name}"}
    found = {f"{module}:{name}.{m}" for m in ("__init__", "__post_init__")} & FUNCTIONS.keys()
    bound = MODULE_BINDINGS.get(module, {}).get(name)
    if not found and bound and bound[0] == "def" and bound[1] != module:
        return _defined(bound[1], bound[2])
    return found


def _registered() -> dict[str, set[tuple[str, str]]]:
    """keyword -> {(the module of the class called, function)}: `Format(..., convert=convert)` at module level,
    so that `fmt.convert(...)` reaches each format's `convert`."""
    found: dict[str, set[tuple[str, str]]] = {}
    for module, tree in MODULES.items():
        for statement in tree.body:
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for call in ast.walk(statement):
                if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
                    continue
                bound = MODULE_BINDINGS[module].get(call.func.id)
                owner = bound[1] if bound and bound[0] == "def" else module
                for kw in call.keywords:
                    if isinstance(kw.value, ast.Name) and f"{module}:{kw.value.id}" in FUNCTIONS:
                        found.setdefault(kw.arg, set()).add((owner, f"{module}:{kw.value.id}"))
    return found


REGISTERED = _registered()


def _calls(qualname: str) -> set[str]:
    """What `qualname` may call (or hand on: a function named without calling it counts too)."""
    module, function, cls = FUNCTIONS[qualname]
    local = {**MODULE_BINDINGS[module],
             **_bindings(module, [n for n in ast.walk(function) if isinstance(n, (ast.Import, ast.ImportFrom))])}
    known = {module} | {b[1] for b in local.values()}
    known |= {b[1] for m in list(known) if m in PACKAGES for b in MODULE_BINDINGS[m].values()}  # re-exported
    found = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            bound = local.get(node.id)
            if bound and bound[0] == "def":
                found |= _defined(bound[1], bound[2])
            elif node.id in DEFINED[module]:
                found |= _defined(module, node.id)
        elif isinstance(node, ast.Attribute) and not node.attr.startswith("__"):
            owner = node.value
            bound = local.get(owner.id) if isinstance(owner, ast.Name) else None
            if bound and bound[0] == "module":
                found |= _defined(bound[1], node.attr)
            elif isinstance(owner, ast.Name) and owner.id in ("self", "cls") and cls:
                found |= {f"{module}:{cls}.{node.attr}"} & FUNCTIONS.keys()
            else:  # an object of a class (or a registry entry) the module knows
                found |= {q for q in METHODS.get(node.attr, ()) if q.partition(":")[0] in known}
                found |= {f for owner_module, f in REGISTERED.get(node.attr, ()) if owner_module in known}
    return found


def _reached(roots: set[str]) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        qualname = todo.pop()
        if qualname not in seen:
            seen.add(qualname)
            todo.extend(_calls(qualname) - seen)
    return seen


def _texts(function: ast.AST):
    """(line, text) of each string in `function`: an f-string whole (a placeholder's own strings in place, the
    rest as `{}`); docstrings and a bare option (an argv element: `["--role", "worker"]`) left out."""
    docstrings = {id(n.body[0].value) for n in ast.walk(function)
                  if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    inside = set()

    def part(value) -> str:
        if isinstance(value, ast.Constant):
            return value.value if isinstance(value.value, str) else "{}"
        return "".join(c.value for c in ast.walk(value) if isinstance(c, ast.Constant) and isinstance(c.value, str)) \
            or "{}"

    for node in ast.walk(function):
        if isinstance(node, ast.JoinedStr) and id(node) not in inside:
            inside |= {id(n) for n in ast.walk(node)}
            yield node.lineno, "".join(part(v) for v in node.values)
    for node in ast.walk(function):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings | inside \
                and not OPTION.fullmatch(node.value.strip()):
            yield node.lineno, node.value


# --------------------------------------------------------------------------- the CLI, loaded

def _commands() -> dict[str, tuple[str, set[str]]]:
    """command -> (its function's qualname, its options without dashes)."""
    from kerakit.cli import cli

    functions = {}
    for node in MODULES["kerakit.cli"].body:
        for decorator in getattr(node, "decorator_list", ()):
            if isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", None) == "command":
                functions[decorator.args[0].value] = f"kerakit.cli:{node.name}"
    return {name: (functions[name], {o.lstrip("-") for p in command.params for o in [*p.opts, *p.secondary_opts]
                                     if o.startswith("--")} | GLOBAL_OPTIONS)
            for name, command in cli.commands.items()}


def _findings() -> tuple[dict[tuple, str], list[str]]:
    """({(function, command, options): a text}, for options the command lacks; unknown `kerakit CMD`s)."""
    commands = _commands()
    wrong: dict[tuple, set[str]] = {}
    shown: dict[tuple, str] = {}
    unknown = []
    for command, (root, options) in commands.items():
        for qualname in sorted(_reached({root, "kerakit.cli:_Group.invoke"})):
            for line, text in _texts(FUNCTIONS[qualname][1]):
                for named, span in NAMED.findall(text):
                    if named not in commands:
                        if f"`kerakit {named}" in text:
                            unknown.append(f"{qualname}:{line} `kerakit {named}`: {text[:120]}")
                        continue
                    missing = set(OPTION.findall(span)) - commands[named][1]
                    if missing:
                        unknown.append(f"{qualname}:{line} kerakit {named} has no --{', --'.join(sorted(missing))}")
                for option in OPTION.findall(NAMED.sub("", text)):
                    if option not in options:
                        wrong.setdefault((qualname, command), set()).add(option)
                        shown[(qualname, command)] = f"{qualname.partition(':')[0]}:{line}: {text[:140]}"
    return {(q, c, tuple(sorted(o))): shown[(q, c)] for (q, c), o in wrong.items()}, sorted(set(unknown))


FINDINGS, UNKNOWN = _findings()


def test_every_option_a_message_advises_is_an_option_of_the_command_that_prints_it():
    wrong = {key: text for key, text in FINDINGS.items() if key not in UNREACHED}
    assert wrong == {}, "\n".join(f"`kerakit {c}` has no --{', --'.join(o)} ({text})"
                                  for (_, c, o), text in wrong.items())


def test_a_command_a_message_names_exists_with_the_options_it_is_given():
    assert UNKNOWN == []


def test_every_exemption_still_matches_a_hint_and_says_why():
    assert [key for key in UNREACHED if key not in FINDINGS] == []
    assert all(len(why) > 10 for why in UNREACHED.values())


@pytest.mark.parametrize("text, named, options", [
    ("Rerun `kerakit bench RUN --out DIR` to measure it again.", "bench", ["out"]),
    ("Pass a writable --out DIR.", None, ["out"]),
    ("tfds build mnist --data_dir DIR", None, []),
])
def test_the_reading_of_a_message(text, named, options):
    """What the checks above see in a message: the command it names and the options it advises."""
    found = NAMED.findall(text)
    assert (found[0][0] if found else None) == named
    assert OPTION.findall(found[0][1] if found else text) == options
