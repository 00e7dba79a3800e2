"""Deployment targets: `export/<name>.toml` files that say what to build and how to judge it.

    description = "Edge: full-integer int8 and float16 TFLite, int8 ONNX."
    layouts = []                        # "tfserving", "triton"

    [[artifacts]]
    format = "tflite"                   # a registered format: savedmodel | tflite | onnx | ...
    quantization = "int8"               # one the format offers: none | float16 | dynamic | int8
    io = "int8"                         # a per-format option (tflite: io; onnx: opset, cpus)

    [verify]
    atol = 1e-4                         # float formats: |artifact - keras| <= atol + rtol * |keras|
    rtol = 1e-5
    max_metric_drop = 0.01              # quantized formats: accuracy may drop by at most 1 point
    max_metric_rel_increase = 0.05      # ... an error metric (mae) may grow by at most 5 %
    samples = 512                       # held-out inputs for the numeric comparison

    [budget]                            # optional: the device's resources (KB = 1024 bytes, MB = 1024 KB)
    ram_kb = 256                        # what a format measures as working memory (TFLM: the tensor arena)
    flash_kb = 1024                     # the model's bytes
    size_mb = 5                         # any format: the artifact's size on disk
    latency_ms = 20                     # any format: p50 of one row (batch 1) in its runtime, on this machine

Formats, their quantizations and options come from the format registry
(`kerakit.formats`). Targets are found by name in ./export and in the
export/ folder shipped with kerakit, or by path.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kerakit import formats
from kerakit.errors import KerakitError
from kerakit.recipe import builtin_dir

VERIFY_KEYS = {"atol", "rtol", "max_metric_drop", "max_metric_rel_increase", "samples"}
BUDGET_KEYS = {"ram_kb", "flash_kb", "size_mb", "latency_ms"}
BUDGET_UNITS = {"ram_kb": "KB", "flash_kb": "KB", "size_mb": "MB", "latency_ms": "milliseconds"}
TARGET_KEYS = {"description", "layouts", "artifacts", "verify", "budget"}


@dataclass(frozen=True)
class Verify:
    atol: float = 1e-4
    rtol: float = 1e-5
    max_metric_drop: float = 0.01
    max_metric_rel_increase: float = 0.05
    samples: int = 512  # held-out inputs for the numeric comparison (half validation, half test)


@dataclass(frozen=True)
class Budget:
    """A device's resources; None: not limited. RAM and flash (KB, 1024 bytes) are checked against each format's
    `Footprint`; the file's size (MB, 1024 KB) and its batch-1 latency (p50, ms, measured at export on the
    exporting machine) against any format's artifact."""

    ram_kb: float | None = None
    flash_kb: float | None = None
    size_mb: float | None = None
    latency_ms: float | None = None

    @property
    def footprint_declared(self) -> bool:
        """RAM or flash: what only a format that measures its footprint can be held to."""
        return self.ram_kb is not None or self.flash_kb is not None


@dataclass(frozen=True)
class ArtifactSpec:
    """One artifact to build: a format, one of its quantizations, and its own options (opset, io, ...)."""

    format: str
    quantization: str = "none"
    options: tuple[tuple[str, Any], ...] = ()

    def option(self, key: str) -> Any:
        """The artifact's value for one of its format's options, or that option's default."""
        return dict(self.options).get(key, formats.get(self.format).options[key].default)

    @property
    def name(self) -> str:
        """`tflite-int8`, `onnx`, ...: the --format name, also the row name in reports."""
        return formats.get(self.format).variant(self.quantization).artifact

    @property
    def filename(self) -> str:
        """`savedmodel`, `model_fp32.tflite`, `model_int8.tflite`, `model.onnx`, ..."""
        return formats.get(self.format).variant(self.quantization).filename

    @property
    def quantized(self) -> bool:
        return self.quantization != "none"


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    artifacts: tuple[ArtifactSpec, ...]
    layouts: tuple[str, ...] = ()
    verify: Verify = field(default_factory=Verify)
    path: Path | None = None
    budget: Budget = field(default_factory=Budget)


def target_dirs() -> list[Path]:
    """Where targets are found by name, first match wins: ./export, then the built-in ones (a checkout's export/,
    shipped in the package as kerakit.targets)."""
    dirs = [Path.cwd() / "export", builtin_dir("kerakit.targets")]
    return [d for i, d in enumerate(dirs) if d.is_dir() and d.resolve() not in {x.resolve() for x in dirs[:i]}]


def available_targets() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in target_dirs():
        for path in sorted(d.glob("*.toml")):
            found.setdefault(path.stem, path)
    return found


def load_target(name_or_path: "str | os.PathLike") -> Target:
    """A target by name (`edge`) or by path to its TOML file."""
    text = str(name_or_path)
    if text.endswith(".toml") or os.sep in text:
        path = Path(text)
        if not path.is_file():
            raise KerakitError(f"Target file {text!r} does not exist.")
    else:
        targets = available_targets()
        if text not in targets:
            raise KerakitError(f"Unknown target {text!r}. Available: {', '.join(sorted(targets)) or '(none)'}.")
        path = targets[text]
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise KerakitError(f"Target {path}: invalid TOML: {e}.") from None
    return parse_target(raw, path.stem, path)


def parse_target(raw: dict, name: str, path: Path | None = None) -> Target:
    where = f"Target {path or name}"
    _check_keys(raw, TARGET_KEYS, where)
    verify = _parse_verify(raw.get("verify", {}), f"{where} [verify]")
    artifacts = tuple(parse_artifact(a, where) for a in raw.get("artifacts", ()))
    if not artifacts:
        raise KerakitError(f"{where} lists no [[artifacts]].")
    layouts = tuple(raw.get("layouts", ()))
    known = [f.layout for f in formats.all_formats() if f.layout]
    for layout in layouts:
        if layout not in known:
            raise KerakitError(f"{where}: invalid layout={layout!r}. Expected one of {', '.join(known)}.")
        needed = formats.for_layout(layout).name
        if not any(a.format == needed for a in artifacts):
            raise KerakitError(f"{where}: the {layout} layout needs an {needed} artifact.")
    budget = _parse_budget(raw.get("budget", {}), f"{where} [budget]")
    unmeasured = sorted({a.format for a in artifacts if not formats.get(a.format).measure})
    if budget.footprint_declared and unmeasured:
        measured = ", ".join(f.name for f in formats.all_formats() if f.measure)
        raise KerakitError(f"{where}: a [budget] needs formats that measure their RAM and flash ({measured}); "
                           f"{', '.join(unmeasured)} do(es) not. Put them in another target.")
    return Target(name, raw.get("description", ""), artifacts, layouts, verify, path, budget)


def _parse_budget(raw: dict, where: str) -> Budget:
    _check_keys(raw, BUDGET_KEYS, where, allowed_text="flash_kb, ram_kb (formats that measure their footprint: "
                f"{', '.join(f.name for f in formats.all_formats() if f.measure)}); latency_ms, size_mb (any format)")
    for key, value in raw.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise KerakitError(f"{where}: invalid {key}={value!r}. Expected a number of {BUDGET_UNITS[key]} > 0.")
    return Budget(**{k: float(v) for k, v in raw.items()})


def _parse_verify(raw: dict, where: str) -> Verify:
    _check_keys(raw, VERIFY_KEYS, where)
    values = {}
    for key, value in raw.items():
        kind = type(getattr(Verify, key))
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
        if not ok or (kind is int and (not float(value).is_integer() or value < 1)):
            expected = "an integer >= 1" if kind is int else "a number >= 0"
            raise KerakitError(f"{where}: invalid {key}={value!r}. Expected {expected}.")
        values[key] = kind(value)
    return Verify(**values)


def parse_artifact(raw: dict, where: str = "artifact") -> ArtifactSpec:
    if not isinstance(raw, dict):
        raise KerakitError(f"{where} [[artifacts]] must be a table.")
    names = [f.name for f in formats.all_formats() if f.convert]
    name = raw.get("format")
    if name not in names:
        raise KerakitError(f"{where}: invalid format={name!r}. Expected one of {', '.join(names)}.")
    fmt = formats.get(name)
    _check_keys(raw, {"format", "quantization", *fmt.options}, f"{where} [[artifacts]] ({name})")
    quantization = raw.get("quantization", "none")
    if quantization not in fmt.quantizations:
        raise KerakitError(
            f"{where}: invalid quantization={quantization!r} for {name}. Expected one of {', '.join(fmt.quantizations)}."
        )
    options = tuple((k, fmt.options[k].check(raw[k])) for k in sorted(fmt.options) if k in raw)
    return ArtifactSpec(name, quantization, options)


def format_target(name: str, opset: int | None = None) -> Target:
    """A one-artifact target for `--format NAME` (`opset` applies to formats that take one)."""
    fmt, quantization = formats.for_artifact(name)
    options = (("opset", fmt.options["opset"].check(opset)),) if opset is not None and "opset" in fmt.options else ()
    return Target(name, f"--format {name}", (ArtifactSpec(fmt.name, quantization, options),))


def _check_keys(raw: dict, allowed: set, where: str, allowed_text: str = "") -> None:
    if not isinstance(raw, dict):
        raise KerakitError(f"{where} must be a table.")
    unknown = set(raw) - allowed
    if unknown:
        raise KerakitError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}. "
                           f"Allowed: {allowed_text or ', '.join(sorted(allowed))}.")
