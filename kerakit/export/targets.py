"""Deployment targets: `export/<name>.toml` files that say what to build and how to judge it.

    description = "Edge: full-integer int8 and float16 TFLite, int8 ONNX."
    layouts = []                        # "tfserving", "triton"

    [[artifacts]]
    format = "tflite"                   # savedmodel | tflite | onnx
    quantization = "int8"               # none | float16 | dynamic | int8
    io = "int8"                         # full-integer TFLite I/O: int8 | uint8 | float32

    [verify]
    atol = 1e-4                         # float formats: |artifact - keras| <= atol + rtol * |keras|
    rtol = 1e-5
    max_metric_drop = 0.01              # quantized formats: accuracy may drop by at most 1 point
    max_metric_rel_increase = 0.05      # ... an error metric (mae) may grow by at most 5 %

Targets are found by name in ./export and in the export/ folder shipped with
kerakit, or by path.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from kerakit.errors import KerakitError

QUANTIZATIONS = {
    "savedmodel": ("none",),
    "tflite": ("none", "float16", "dynamic", "int8"),
    "onnx": ("none", "dynamic", "int8"),
}
TFLITE_IO = ("int8", "uint8", "float32")
MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 13, 18, 17  # 13: per-channel QDQ; 18: tf2onnx 1.17's newest
LAYOUTS = ("tfserving", "triton")
ARTIFACT_KEYS = {"format", "quantization", "io", "opset"}
VERIFY_KEYS = {"atol", "rtol", "max_metric_drop", "max_metric_rel_increase", "samples"}
TARGET_KEYS = {"description", "layouts", "artifacts", "verify"}

# `--format NAME` shorthands, and the file stem each artifact gets.
FORMAT_NAMES = {
    "savedmodel": ("savedmodel", "none"),
    "tflite": ("tflite", "none"),
    "tflite-fp16": ("tflite", "float16"),
    "tflite-dynamic": ("tflite", "dynamic"),
    "tflite-int8": ("tflite", "int8"),
    "onnx": ("onnx", "none"),
    "onnx-dynamic": ("onnx", "dynamic"),
    "onnx-int8": ("onnx", "int8"),
}


@dataclass(frozen=True)
class Verify:
    atol: float = 1e-4
    rtol: float = 1e-5
    max_metric_drop: float = 0.01
    max_metric_rel_increase: float = 0.05
    samples: int = 512  # held-out inputs for the numeric comparison


@dataclass(frozen=True)
class ArtifactSpec:
    format: str
    quantization: str = "none"
    io: str = "int8"
    opset: int = DEFAULT_OPSET

    @property
    def name(self) -> str:
        """`tflite-int8`, `onnx`, ...: the --format name, also the row name in reports."""
        for name, (fmt, quant) in FORMAT_NAMES.items():
            if (fmt, quant) == (self.format, self.quantization):
                return name
        raise AssertionError(self)

    @property
    def filename(self) -> str:
        """`savedmodel`, `model_fp32.tflite`, `model_int8.tflite`, `model.onnx`, `model_int8.onnx`, ..."""
        if self.format == "savedmodel":
            return "savedmodel"
        if self.format == "tflite":
            return f"model_{ {'none': 'fp32', 'float16': 'fp16'}.get(self.quantization, self.quantization) }.tflite"
        return "model.onnx" if self.quantization == "none" else f"model_{self.quantization}.onnx"

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


def target_dirs() -> list[Path]:
    dirs = [Path.cwd() / "export", Path(__file__).resolve().parent.parent.parent / "export"]
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
    verify_raw = raw.get("verify", {})
    _check_keys(verify_raw, VERIFY_KEYS, f"{where} [verify]")
    verify = Verify(**{k: type(getattr(Verify, k))(v) for k, v in verify_raw.items()})
    layouts = tuple(raw.get("layouts", ()))
    for layout in layouts:
        if layout not in LAYOUTS:
            raise KerakitError(f"{where}: invalid layout={layout!r}. Expected one of {', '.join(LAYOUTS)}.")
    artifacts = tuple(parse_artifact(a, where) for a in raw.get("artifacts", ()))
    if not artifacts:
        raise KerakitError(f"{where} lists no [[artifacts]].")
    if "tfserving" in layouts and not any(a.format == "savedmodel" for a in artifacts):
        raise KerakitError(f"{where}: the tfserving layout needs a savedmodel artifact.")
    if "triton" in layouts and not any(a.format == "onnx" for a in artifacts):
        raise KerakitError(f"{where}: the triton layout needs an onnx artifact.")
    return Target(name, raw.get("description", ""), artifacts, layouts, verify, path)


def parse_artifact(raw: dict, where: str = "artifact") -> ArtifactSpec:
    _check_keys(raw, ARTIFACT_KEYS, f"{where} [[artifacts]]")
    fmt = raw.get("format")
    if fmt not in QUANTIZATIONS:
        raise KerakitError(f"{where}: invalid format={fmt!r}. Expected one of {', '.join(QUANTIZATIONS)}.")
    quantization = raw.get("quantization", "none")
    if quantization not in QUANTIZATIONS[fmt]:
        raise KerakitError(
            f"{where}: invalid quantization={quantization!r} for {fmt}. Expected one of {', '.join(QUANTIZATIONS[fmt])}."
        )
    io = raw.get("io", "int8")
    if io not in TFLITE_IO:
        raise KerakitError(f"{where}: invalid io={io!r}. Expected one of {', '.join(TFLITE_IO)}.")
    return ArtifactSpec(fmt, quantization, io, check_opset(raw.get("opset", DEFAULT_OPSET)))


def check_opset(opset) -> int:
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise KerakitError(f"Invalid opset={opset!r}. Expected an integer from {MIN_OPSET} to {MAX_OPSET}.")
    return opset


def format_target(name: str, opset: int | None = None) -> Target:
    """A one-artifact target for `--format NAME`."""
    if name not in FORMAT_NAMES:
        raise KerakitError(f"Invalid format={name!r}. Expected one of {', '.join(FORMAT_NAMES)}.")
    fmt, quantization = FORMAT_NAMES[name]
    spec = ArtifactSpec(fmt, quantization)
    if opset is not None:
        spec = replace(spec, opset=check_opset(opset))
    return Target(name, f"--format {name}", (spec,))


def _check_keys(raw: dict, allowed: set, where: str) -> None:
    if not isinstance(raw, dict):
        raise KerakitError(f"{where} must be a table.")
    unknown = set(raw) - allowed
    if unknown:
        raise KerakitError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}. Allowed: {', '.join(sorted(allowed))}.")
