"""OpenVINO IR on the OpenVINO runtime (CPU): `model.openvino/` holds `model.xml` and `model.bin`.

Three variants, float weights stored as float32 (`save_model(compress_to_fp16=False)`):

- `openvino` (quantization "none"): f32 inference, verified at the target's float tolerance.
- `openvino-bf16`: the same IR with bf16 as its inference precision hint, recorded in the IR's
  rt_info (`kerakit.inference_precision`) and applied when kerakit compiles it. bf16 changes the
  numbers, so export judges it like a quantized format, by the task metric. On a CPU without
  bf16 (no AVX512_BF16 / AMX) OpenVINO runs it in f32; `Predictor.precision` says what it runs.
- `openvino-int8`: NNCF post-training quantization of the f32 IR (`nncf.quantize`, calibrated on the
  recipe's calibration rows like the other int8 files): FakeQuantize nodes before each convolution and
  matrix multiplication, int8 weights; OpenVINO's CPU plugin runs those ops in u8/i8 (VNNI, AMX where
  present) and the rest in f32. Judged by the task metric. On the issue-28 Xeon (AVX-512 VNNI, AMX),
  MobileNetV3-Small b32 ran at 0.57x OpenVINO f32's time and 0.84-0.88x LiteRT int8's.

The IR is converted from the serving SavedModel (default) or from the float ONNX file
(`source = "onnx"` in a target). Runtime settings: `threads` (INFERENCE_NUM_THREADS, 0 = OpenVINO's
choice) and `hint` (PERFORMANCE_HINT: latency | throughput); `kerakit bench` sweeps both.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from kerakit import files
from kerakit.errors import KerakitError
from kerakit.formats import calibration
from kerakit.formats.base import Format, Option, Predictor, Spec, Variant

XML, BIN = "model.xml", "model.bin"
SOURCES = ("savedmodel", "onnx")
HINTS = ("latency", "throughput")
PRECISIONS = {"none": "f32", "bf16": "bf16", "int8": "f32"}  # quantization -> inference precision hint (int8:
                                                             # the ops NNCF leaves float run in f32)
RUN_PRECISIONS = ("f32", "bf16")
RT_INFO = ["kerakit", "inference_precision"]


def import_openvino():
    """`openvino`, with its usage telemetry off.

    `import openvino` and every `convert_model` send usage events to Google
    Analytics (the openvino-telemetry package) unless a consent file says no,
    from a forked process: kerakit never phones home for its user, and a fork
    taken while a run's writer lock is held keeps that lock for as long as the
    child lives (the next `kerakit bench` in the same process found its run
    "in use"). OpenVINO's converter falls back to its own no-op stub when
    openvino_telemetry cannot be imported, which a None entry in sys.modules
    makes so.
    """
    import sys

    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[assignment]
    import openvino

    return openvino


def check_source(source) -> str:
    if source not in SOURCES:
        raise KerakitError(f"Invalid source={source!r} for openvino. Expected one of {', '.join(SOURCES)}.")
    return source


# --------------------------------------------------------------------------- conversion

def convert(context, spec, path: Path) -> dict | None:
    ov = import_openvino()

    if spec.option("source") == "onnx":
        from kerakit.formats.onnx import DEFAULT_OPSET, write_onnx

        source = context.intermediate(f"float-{DEFAULT_OPSET}.onnx",
                                      lambda p: write_onnx(context.savedmodel(), DEFAULT_OPSET, p))
    else:
        source = context.savedmodel()
    try:
        model = ov.convert_model(str(source))
    except Exception as e:  # OpenVINO's report spans lines and starts with a C++ check; name the ops in one
        raise ValueError(conversion_error(str(e), "ONNX" if source.suffix == ".onnx" else "TensorFlow")) from None
    note = None
    if spec.quantization == "int8":
        model = quantize(model, context.calibration)
        quantized = sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        note = {"runtime": "OpenVINO CPU", "fake_quantize": quantized,
                "summary": f"NNCF int8: {quantized} FakeQuantize node(s) before convolutions and matrix "
                           f"multiplications, which run u8/i8; other ops f32"}
    model.set_rt_info(PRECISIONS[spec.quantization], RT_INFO)
    with files.atomic_dir(path) as tmp:
        ov.save_model(model, str(tmp / XML), compress_to_fp16=False)  # float weights stay f32
    return note


def import_nncf():
    """`nncf`, with its usage telemetry off (openvino_telemetry made unimportable, as in `import_openvino`)."""
    import sys

    import_openvino()
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[assignment]
    import nncf

    return nncf


def quantize(model, sample: dict[str, np.ndarray] | None):
    """NNCF post-training int8 of an f32 `ov.Model`, calibrated on `sample` one row at a time.

    Every calibration row is used (`subset_size`; kerakit's sample is a few hundred rows). NNCF puts its
    FakeQuantize nodes at the inputs of convolutions and matrix multiplications only, so a model's
    input-normalization prefix stays float without being told (`calibration.needs_float_inputs`' concern):
    on breast_cancer_mlp the first FakeQuantize sits after the normalization, ignoring the prefix
    explicitly gave the same IR.
    """
    if sample is None:
        raise ValueError("int8 needs a representative sample (a recipe, or --sample FILE.npz)")
    nncf = import_nncf()

    dtypes = {port.get_any_name(): port.get_element_type().to_dtype() for port in model.inputs}
    rows = [{name: value.astype(dtypes.get(name, value.dtype), copy=False) for name, value in row.items()}
            for row in calibration.rows(sample)]
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's rich progress bars, drawn on stdout
        return nncf.quantize(model, nncf.Dataset(rows), subset_size=len(rows))


def conversion_error(text: str, source: str = "TensorFlow") -> str:
    """OpenVINO's conversion report as one line naming the ops it could not convert.

    >>> conversion_error("Check 'false' failed at src/.../unconverted_ops_report.cpp:151:\\n"
    ...                  "-- No conversion rule found for operations: AsString, StringToHashBucketFast\\n...")
    'TensorFlow op(s) AsString, StringToHashBucketFast not supported by OpenVINO (no conversion rule)'
    """
    import re

    parts = []
    for pattern, why in ((r"No conversion rule found for operations: ([^\n]+)", "no conversion rule"),
                         (r"Conversion is failed for: ([^\n]+)", "conversion failed")):
        found = re.search(pattern, text)
        ops = [op.strip() for op in found[1].split(",") if op.strip()] if found else []
        if ops:
            parts.append(f"{source} op(s) {', '.join(ops)} not supported by OpenVINO ({why})")
    extension = re.search(r"openvino-tokenizers package provides conversion extension\(s\): ([^.\n]+)", text)
    if parts and extension:
        parts.append(f"the openvino-tokenizers package converts {extension[1].strip()}")
    if parts:
        return "; ".join(parts)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Check '")]
    return f"OpenVINO cannot convert the model: {(lines or [text.strip() or 'no message'])[0][:300]}"


# --------------------------------------------------------------------------- runtime

class OpenVinoPredictor(Predictor):
    """A `model.openvino/` IR compiled for the CPU, with one infer request reused for every call.

    threads: INFERENCE_NUM_THREADS (0 = OpenVINO's choice); hint: "latency" | "throughput";
    precision: "f32" | "bf16" overrides the precision recorded in the IR.
    """

    format = "openvino"

    def __init__(self, path: Path, threads: int = 0, hint: str = "latency", precision: str | None = None):
        super().__init__(path)
        ov = import_openvino()

        if hint not in HINTS:
            raise KerakitError(f"Invalid hint={hint!r}. Expected one of {', '.join(HINTS)}.")
        if precision not in (None, *RUN_PRECISIONS):
            raise KerakitError(f"Invalid precision={precision!r}. Expected one of {', '.join(RUN_PRECISIONS)}.")
        core = ov.Core()
        try:
            model = core.read_model(str(Path(path) / XML))
        except Exception as e:  # OpenVINO raises RuntimeError for unreadable IR
            raise KerakitError(f"Cannot load OpenVINO model {str(path)!r}: {str(e)[:200]} (truncated or corrupt?).") from e
        requested = precision or (model.get_rt_info(RT_INFO).astype(str) if model.has_rt_info(RT_INFO) else "f32")
        config = {"PERFORMANCE_HINT": hint.upper(), "INFERENCE_PRECISION_HINT": requested}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, "CPU", config)
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # what the CPU runs: f32, bf16
        self.requested_precision = requested
        self.inputs = [_spec(p) for p in model.inputs]
        self.outputs = [_spec(p) for p in model.outputs]
        self._request = self.compiled.create_infer_request()
        self._tensor = ov.Tensor
        self._input_names = [s.name for s in self.inputs]
        self._output_names = [s.name for s in self.outputs]

    def _run(self, batch):
        request, tensor = self._request, self._tensor
        for i, name in enumerate(self._input_names):  # shared memory: no copy of the inputs
            request.set_input_tensor(i, tensor(np.ascontiguousarray(batch[name]), shared_memory=True))
        request.infer()
        # The request's output buffers are reused by the next call: hand back copies.
        return {name: request.get_output_tensor(i).data.copy() for i, name in enumerate(self._output_names)}


def _spec(port) -> Spec:
    shape = tuple(None if d.is_dynamic else d.get_length() for d in port.get_partial_shape())
    return Spec(port.get_any_name(), shape, np.dtype(port.get_element_type().to_dtype()).name)


def settings(threads: list[int]) -> dict[str, dict]:
    """Both performance hints x thread counts (0: OpenVINO's own choice)."""
    return {f"hint={hint},threads={t or 'auto'}": {"hint": hint, "threads": t}
            for hint in HINTS for t in sorted({0, *threads})}


FORMAT = Format(
    name="openvino",
    suffix=".openvino",
    marker=XML,
    predictor=OpenVinoPredictor,
    variants=(Variant("none", "openvino", "model.openvino"),
              Variant("bf16", "openvino-bf16", "model_bf16.openvino"),
              Variant("int8", "openvino-int8", "model_int8.openvino")),
    options={"source": Option("savedmodel", check_source, f"what the IR is converted from: {' | '.join(SOURCES)}")},
    convert=convert,
    runtime_options=("threads", "hint", "precision"),
    settings=settings,
    libraries=("openvino", "nncf", "tensorflow", "tf2onnx", "onnx"),  # IR from the SavedModel or the float ONNX;
                                                                       # nncf quantizes int8
    preference=60,
)
