"""TensorFlow Lite for Microcontrollers: a firmware bundle, verified in TFLM's own interpreter (`tflite-micro`).

The artifact is a directory, `model_int8.tflm/`:

    model.tflite        full-integer int8, batch 1, buffers 16-byte aligned (TFLM reads weights in place)
    model_data.h/.cc    the same bytes as `alignas(16) const unsigned char g_model[]` and `g_model_len`
    model_settings.h    input/output shapes, scales, zero points, class labels, kTensorArenaSize
    README.md           the TFLM calls that use them, with MicroMutableOpResolver holding exactly this model's ops

A directory (not a second `.tflite` file) so the C files travel, and are
hashed, with the model they were generated from. Everything is read back
from TFLM itself: the model must load and run there (an op it has no kernel
for fails the conversion, naming the op, the Keras layer it comes from and
what to use instead); the tensor arena is the smallest one `invoke` succeeds
with; MACs are counted from the graph's conv, depthwise and fully-connected
ops. The host's TFLM has 64-bit pointers, so its arena is a little larger
than a 32-bit microcontroller needs with the same (reference) kernels;
optimized kernels such as CMSIS-NN may ask for scratch space on top, which
`MicroInterpreter::arena_used_bytes()` on the device tells.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from kerakit import files
from kerakit.errors import KerakitError
from kerakit.formats.base import Footprint, Format, Option, Predictor, Spec, Variant

MODEL_FILE = "model.tflite"
IO_TYPES = ("int8", "uint8")
ARENA_START, ARENA_STEP = 4 * 1024, 16  # the arena search starts here, and stops at this resolution (bytes)
ARENA_PROBE = 64 * 2**20  # the arena a model is first tried with: an op TFLM lacks fails at any size
PATCH_OP = "ADD"  # stands in for an op TFLM lacks, so one load can name every missing op
TIMING_NOTE = ("host timing of TFLite Micro's reference kernels on this machine's CPU, one row at a time: "
               "not device timing (estimate a device's from the MACs and its clock)")
# What to build instead of a Keras layer whose op TFLM cannot run in int8.
INSTEAD = {
    "GELU": "use activation='relu' or 'hard_silu'",
    "EXP": "elu, selu, softplus and exponential need int8 EXP: use activation='relu', 'relu6' or 'hard_silu'",
    "LOG": "softplus and log need int8 LOG: use activation='relu' or 'hard_silu'",
    "SELECT": "selu, elu and tf.where select per element: use activation='relu', 'relu6' or 'hard_silu'",
    "TILE": "repeat values with Concatenate or UpSampling2D instead of tf.tile",
    "TOPK_V2": "sort or rank the scores in firmware, not in the model",
    "REDUCE_PROD": "sum logarithms in float on the host, or drop the product",
}
DEFAULT_INSTEAD = ("build it from layers TFLM runs in int8: Conv2D, DepthwiseConv2D/SeparableConv2D, Dense, "
                   "pooling, ReLU/ReLU6/hard_silu, Softmax")
# MicroMutableOpResolver method names that do not follow from the op name (AddCONV_2D -> AddConv2D).
RESOLVER_NAMES = {"BATCH_MATMUL": "BatchMatMul", "CUMSUM": "CumSum", "PADV2": "PadV2",
                  "UNIDIRECTIONAL_SEQUENCE_LSTM": "UnidirectionalSequenceLSTM"}
C_TYPES = {"int8": ("int8_t", "int8"), "uint8": ("uint8_t", "uint8"), "float32": ("float", "f"),
           "int32": ("int32_t", "i32"), "int16": ("int16_t", "i16")}


def _check_io(value) -> str:
    if value not in IO_TYPES:
        raise KerakitError(f"Invalid io={value!r}. Expected one of {', '.join(IO_TYPES)} (microcontrollers take integers).")
    return value


# --------------------------------------------------------------------------- conversion

def convert(context, spec, path: Path) -> None:
    """int8 TFLite at batch 1 from the Keras model, checked in TFLM, written with its firmware files."""
    from kerakit.formats.savedmodel import write_savedmodel
    from kerakit.formats.tflite import add_metadata, recurrent_layers, tflite_bytes

    if recurrent_layers(context.model):  # the int8 converter dies with SIGSEGV on them
        raise ValueError(f"TFLite Micro int8 cannot take recurrent layers ({', '.join(recurrent_layers(context.model))})")
    # A fixed batch of 1 also spares the graph the SHAPE/PACK ops a dynamic Flatten needs.
    savedmodel = context.intermediate("savedmodel-batch1", lambda p: write_savedmodel(
        context.model, context.inputs, context.output_names, p, batch=1))
    data = tflite_bytes(savedmodel, "int8", spec.option("io"), context.inputs, context.calibration)
    data = aligned(add_metadata(data, {**context.metadata, "quantization": "int8", "runtime": "tflite-micro"}))
    check_runs(data, _layer_names(context.model))
    with files.atomic_dir(path) as tmp:
        (tmp / MODEL_FILE).write_bytes(data)
        for name, text in firmware_files(data, context.metadata).items():
            (tmp / name).write_text(text)


def aligned(data: bytes) -> bytes:
    """The flatbuffer with every buffer 16-byte aligned, by TFLM's own re-alignment tool (C++ flatbuffers)."""
    from tflite_micro.tensorflow.lite.micro.tools import tflite_flatbuffer_align_wrapper as align

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.tflite", Path(tmp) / "out.tflite"
        src.write_bytes(data)
        align.align_tflite_model(str(src), str(dst))
        return dst.read_bytes()


def _layer_names(model) -> set[str]:
    names, stack = set(), list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop()
        names.add(layer.name)
        stack += getattr(layer, "layers", [])
    return names


# --------------------------------------------------------------------------- the graph

def read_graph(data: bytes):
    """The flatbuffer as TFLM's schema objects (`ModelT`)."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(data), 0))


def _op_names() -> dict[int, str]:
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def code_name(code) -> str:
    """The op name of an operator code: CONV_2D, ..., or a custom op's own name."""
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    name = _op_names().get(builtin, str(builtin))
    return (code.customCode or b"CUSTOM").decode() if name == "CUSTOM" else name


def op_name(model, op) -> str:
    return code_name(model.operatorCodes[op.opcodeIndex])


def graph_ops(model) -> list[str]:
    """The distinct ops of the model, in order of first use."""
    return list(dict.fromkeys(op_name(model, op) for g in model.subgraphs for op in g.operators or []))


def count_macs(model) -> int:
    """Multiply-accumulates of one inference: CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV.

    Pooling, softmax and elementwise ops are not counted (a small share in a CNN).
    """
    total = 0
    for graph in model.subgraphs:
        for op in graph.operators or []:
            name = op_name(model, op)
            shape = lambda i: [int(d) for d in graph.tensors[i].shape]  # noqa: E731
            if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"):
                continue
            weights = shape(op.inputs[1])
            if name == "CONV_2D":          # out [1, h, w, c_out] x kernel [c_out, kh, kw, c_in]
                total += math.prod(shape(op.outputs[0])) * math.prod(weights[1:])
            elif name == "DEPTHWISE_CONV_2D":  # out [1, h, w, c] x kernel [1, kh, kw, c]
                total += math.prod(shape(op.outputs[0])) * weights[1] * weights[2]
            elif name == "FULLY_CONNECTED":    # out [rows, units] x weights [units, in]
                total += math.prod(shape(op.outputs[0])) * weights[1]
            else:                              # input [1, h, w, c_in] x kernel [c_out, kh, kw, c_in]
                total += math.prod(shape(op.inputs[2])) * math.prod(weights[:3])
    return total


def _layer_of(model, graph, op, known: set[str]) -> str | None:
    """The Keras layer an op comes from, read from its tensors' names (`model_1/dense_2_1/Gelu/...`)."""
    for index in [*op.outputs, *op.inputs]:
        if index < 0:
            continue
        parts = graph.tensors[index].name.decode().split(";")[0].split("/")[1:-1]
        stripped = [re.sub(r"_\d+$", "", p) for p in parts]  # the export trace adds _1 to each scope
        if known:
            found = [s if s in known else p for p, s in zip(parts, stripped) if s in known or p in known]
            if found:
                return "/".join(found)
        elif stripped:
            return stripped[0]
    return None


# --------------------------------------------------------------------------- TFLM itself

@contextlib.contextmanager
def _native_output():
    """Capture what TFLM's C++ prints (file descriptors 1 and 2) into the list it yields."""
    import ctypes

    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    sys.stderr.flush()
    libc.fflush(None)
    captured: list[str] = []
    with tempfile.TemporaryFile() as sink:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield captured
        finally:
            libc.fflush(None)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace"))


def _interpreter(data: bytes, arena: int, invoke: bool = True):
    """A TFLM interpreter that has run once on zeros; raises RuntimeError (TFLM's log in the message) if not."""
    from tflite_micro import runtime as tflm

    with _native_output() as log:
        try:
            interpreter = tflm.Interpreter.from_bytes(data, arena_size=arena)
            if invoke:
                for i in range(len(read_inputs(data))):
                    details = interpreter.get_input_details(i)
                    interpreter.set_input(np.zeros(details["shape"], details["dtype"]), i)
                interpreter.invoke()
            failed = None
        except (RuntimeError, ValueError) as e:
            failed = e
    if failed is not None:
        raise RuntimeError(f"{failed}\n{log[0] if log else ''}") from failed
    return interpreter


def read_inputs(data: bytes) -> list[int]:
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    graph = schema.Model.GetRootAsModel(bytearray(data), 0).Subgraphs(0)
    return [graph.Inputs(i) for i in range(graph.InputsLength())]


def check_runs(data: bytes, known_layers: set[str] = frozenset()) -> None:
    """Raise one line naming every op TFLM cannot run, its Keras layer(s) and what to use instead."""
    try:
        _interpreter(data, ARENA_PROBE)
        return
    except RuntimeError as e:
        log = str(e)
    model = read_graph(data)
    missing = _missing_ops(data, log)
    if missing:
        raise ValueError("TFLite Micro has no kernel for " + _name_ops(model, missing, known_layers))
    failed = re.search(r"(?:^|\n)([^\n]*)\nNode (\w+) \(number (\d+)\) failed to (?:prepare|invoke)", log)
    if failed:
        why = failed.group(1).split(" ", 1)[-1].strip()
        raise ValueError(f"TFLite Micro cannot run {_name_ops(model, [failed.group(2)], known_layers, int(failed.group(3)))}"
                         f" ({why})")
    raise ValueError(f"TFLite Micro cannot load the model: {log.strip().splitlines()[-1] if log.strip() else 'no reason given'}")


def _missing_ops(data: bytes, log: str) -> list[str]:
    """Every op TFLM has no kernel for: TFLM names the first; patch it to a known op and load again."""
    import flatbuffers

    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    missing: list[str] = []
    patched = read_graph(data)
    for _ in range(len(patched.operatorCodes)):
        found = re.search(r"Didn't find op for (?:builtin|custom) opcode '([^']+)'", log)
        if not found or found.group(1) in missing:
            break
        missing.append(found.group(1))
        for code in patched.operatorCodes:
            if code_name(code) in missing:
                code.builtinCode = code.deprecatedBuiltinCode = getattr(schema.BuiltinOperator, PATCH_OP)
                code.customCode = None
        builder = flatbuffers.Builder(1024)
        builder.Finish(patched.Pack(builder), file_identifier=b"TFL3")
        try:
            _interpreter(bytes(builder.Output()), ARENA_PROBE, invoke=False)
            break
        except RuntimeError as e:
            log = str(e)
    return missing


def _name_ops(model, ops: list[str], known: set[str], only: int | None = None) -> str:
    """`GELU (Keras layer dense_1): use ...; TILE (...)`: each op, where it comes from, what to do."""
    named = []
    for name in ops:
        layers = sorted({layer for graph in model.subgraphs for i, op in enumerate(graph.operators or [])
                         if op_name(model, op) == name and (only is None or i == only)
                         and (layer := _layer_of(model, graph, op, known))})
        where = f" (Keras layer {', '.join(layers)})" if layers else ""
        named.append(f"{name}{where}: {INSTEAD.get(name, DEFAULT_INSTEAD)}")
    return "; ".join(named)


def minimum_arena(data: bytes) -> int:
    """The smallest tensor arena (bytes, to ARENA_STEP) TFLM loads and invokes the model with.

    Each size is tried in a child process (`_runs_in_child`): below the minimum, TFLM's error path can abort the
    process ("All temp buffers must be freed before calling ResetTempAllocations()": breast_cancer_mlp's SUB
    failed to prepare at a few hundred bytes, and the abort took the whole export with it, silently, since its
    message went where TFLM's log is captured)."""
    low, high = 0, ARENA_START
    while not _runs_in_child(data, high):
        low, high = high, high * 2
        if high > ARENA_PROBE:
            check_runs(data)  # not an arena problem: name the op
            raise ValueError(f"TFLite Micro could not run the model with a {ARENA_PROBE // 2**20} MB arena")
    while high - low > ARENA_STEP:
        middle = (low + high) // 2 // ARENA_STEP * ARENA_STEP
        low, high = (low, middle) if _runs_in_child(data, middle) else (middle, high)
    return high


def _runs_in_child(data: bytes, size: int) -> bool:
    """Whether TFLM loads and invokes the model with a `size`-byte arena, asked in a forked child: a failure
    that aborts, as TFLM's does on some too-small arenas, is then a "no" and not the end of this process. The
    child runs TFLM only (no TensorFlow, no Python thread of the parent's) and leaves by os._exit."""
    if not hasattr(os, "fork"):  # not POSIX: in this process, as before
        try:
            _interpreter(data, size)
            return True
        except RuntimeError:
            return False
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: nothing it prints is wanted, and it never returns into the parent's code
        code = 1
        try:
            import faulthandler

            faulthandler.disable()  # an abort here is an answer, not a crash to report (pytest enables it)
            quiet = os.open(os.devnull, os.O_WRONLY)
            os.dup2(quiet, 1)
            os.dup2(quiet, 2)
            _interpreter(data, size)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def firmware_arena(minimum: int) -> int:
    """What model_settings.h tells firmware to allocate: the measured minimum, rounded up to whole KiB."""
    return -(-minimum // 1024) * 1024


# --------------------------------------------------------------------------- firmware files

def _identifier(name: str, fallback: str) -> str:
    camel = "".join(w[:1].upper() + w[1:] for w in re.split(r"[^0-9A-Za-z]+", name) if w)
    return camel if camel and not camel[0].isdigit() else fallback


def resolver_method(op: str) -> str:
    """`DEPTHWISE_CONV_2D` -> `AddDepthwiseConv2D`: the MicroMutableOpResolver call that registers it."""
    words = [w if re.fullmatch(r"\d+D|V\d+", w) else w.capitalize() for w in op.split("_")]
    return "Add" + RESOLVER_NAMES.get(op, "".join(words))


def _tensors(interpreter, names: list[str], kind: str) -> list[dict]:
    details = getattr(interpreter, f"get_{kind}_details")
    found = []
    for i, name in enumerate(names):
        d = details(i)
        q = d["quantization_parameters"]
        dtype = np.dtype(d["dtype"]).name
        found.append({"index": i, "name": name, "id": _identifier(name, f"{kind.capitalize()}{i}"), "dtype": dtype,
                      "shape": [int(s) for s in d["shape"]], "scale": float(q["scales"][0]) if len(q["scales"]) else 0.0,
                      "zero_point": int(q["zero_points"][0]) if len(q["zero_points"]) else 0})
    return found


def firmware_files(data: bytes, metadata: dict) -> dict[str, str]:
    """model_data.h/.cc, model_settings.h and README.md for the (aligned, TFLM-checked) model bytes."""
    minimum = minimum_arena(data)
    interpreter = _interpreter(data, ARENA_PROBE)
    model = read_graph(data)
    names = io_names(model)
    facts = {"name": metadata.get("name") or "model", "labels": metadata.get("labels") or [],
             "inputs": _tensors(interpreter, names[0], "input"), "outputs": _tensors(interpreter, names[1], "output"),
             "ops": graph_ops(model), "arena_minimum": minimum, "arena": firmware_arena(minimum),
             "flash": len(data), "macs": count_macs(model)}
    return {"model_data.h": _model_data_h(facts), "model_data.cc": _model_data_cc(data, facts),
            "model_settings.h": _model_settings_h(facts), "README.md": _readme(facts)}


def _guard(facts: dict, file: str) -> str:
    return re.sub(r"[^0-9A-Z]+", "_", f"KERAKIT_{facts['name']}_{file}".upper()).strip("_") + "_"


def _model_data_h(facts: dict) -> str:
    guard = _guard(facts, "model_data_h")
    return (f"// {facts['name']}: the int8 TFLite model for TensorFlow Lite Micro. Generated by kerakit.\n"
            f"#ifndef {guard}\n#define {guard}\n\n"
            "extern const unsigned char g_model[];  // 16-byte aligned: TFLM reads the weights in place\n"
            "extern const unsigned int g_model_len;\n\n"
            f"#endif  // {guard}\n")


def _model_data_cc(data: bytes, facts: dict) -> str:
    rows = [", ".join(f"0x{b:02x}" for b in data[i : i + 16]) for i in range(0, len(data), 16)]
    body = ",\n  ".join(rows)
    return (f"// {facts['name']}: {len(data)} bytes of model.tflite. Generated by kerakit; do not edit.\n"
            '#include "model_data.h"\n\n'
            f"alignas(16) const unsigned char g_model[] = {{\n  {body}\n}};\n"
            f"const unsigned int g_model_len = {len(data)};\n")


def _tensor_lines(t: dict, kind: str) -> list[str]:
    ctype = C_TYPES.get(t["dtype"], (t["dtype"], ""))[0]
    dims = ", ".join(map(str, t["shape"]))
    lines = [f"// {kind} {t['index']} \"{t['name']}\": {ctype} [{dims}]"
             + (". real = (q - zero_point) * scale" if t["scale"] else ""),
             f"constexpr int k{t['id']}Index = {t['index']};",
             f"constexpr int k{t['id']}Dims[] = {{{dims}}};",
             f"constexpr int k{t['id']}Elements = {math.prod(t['shape'])};"]
    if t["scale"]:
        lines += [f"constexpr float k{t['id']}Scale = {t['scale']!r}f;",
                  f"constexpr int k{t['id']}ZeroPoint = {t['zero_point']};"]
    return lines + [""]


def _model_settings_h(facts: dict) -> str:
    guard = _guard(facts, "model_settings_h")
    lines = [f"// {facts['name']}: what firmware needs to run it in TensorFlow Lite Micro. Generated by kerakit.",
             f"#ifndef {guard}", f"#define {guard}", "",
             "// Tensor arena to allocate (16-byte aligned): the smallest arena TFLM ran this model with on the",
             f"// exporting host ({facts['arena_minimum']} bytes, 64-bit pointers), rounded up to whole KiB. Measured",
             "// with the reference kernels: optimized ones (CMSIS-NN) may need scratch space on top; on the device,",
             "// interpreter.arena_used_bytes() after AllocateTensors() tells.",
             f"constexpr int kTensorArenaSize = {facts['arena']};", "",
             f"// MicroMutableOpResolver<kOpCount> with exactly these ops: {', '.join(facts['ops'])}.",
             f"constexpr int kOpCount = {len(facts['ops'])};",
             f"// Multiply-accumulates per inference (conv, depthwise, fully connected): {facts['macs']:,}.",
             f"constexpr long long kMacsPerInference = {facts['macs']}LL;", ""]
    for t in facts["inputs"]:
        lines += _tensor_lines(t, "input")
    for t in facts["outputs"]:
        lines += _tensor_lines(t, "output")
    if facts["labels"]:
        labels = ", ".join(json.dumps(str(label)) for label in facts["labels"])
        lines += [f"constexpr int kNumClasses = {len(facts['labels'])};",
                  f"constexpr const char* kClassLabels[kNumClasses] = {{{labels}}};", ""]
    return "\n".join(lines + [f"#endif  // {guard}", ""])


def readme_code(facts: dict) -> str:
    """The C++ of README.md: set up the interpreter with exactly the model's ops, then one inference."""
    adds = "\n".join(f"  resolver.{resolver_method(op)}();" for op in facts["ops"])
    var = lambda t, suffix: t["id"][0].lower() + t["id"][1:] + suffix  # noqa: E731  (imageIn: never a keyword)
    ctype, member = (lambda t: C_TYPES[t["dtype"]][0]), (lambda t: C_TYPES[t["dtype"]][1])
    params = ", ".join([f"const {ctype(t)}* {var(t, 'In')}" for t in facts["inputs"]]
                       + [f"{ctype(t)}* {var(t, 'Out')}" for t in facts["outputs"]])
    copy_in = "\n".join(f"  std::memcpy(interpreter->input(k{t['id']}Index)->data.{member(t)}, {var(t, 'In')}, "
                        f"k{t['id']}Elements * sizeof({ctype(t)}));" for t in facts["inputs"])
    copy_out = "\n".join(f"  std::memcpy({var(t, 'Out')}, interpreter->output(k{t['id']}Index)->data.{member(t)}, "
                         f"k{t['id']}Elements * sizeof({ctype(t)}));" for t in facts["outputs"])
    return f"""#include <cstdint>
#include <cstring>

#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

#include "model_data.h"
#include "model_settings.h"

namespace {{
alignas(16) uint8_t tensor_arena[kTensorArenaSize];
tflite::MicroInterpreter* interpreter = nullptr;
}}  // namespace

// Once at start-up: the op resolver with exactly this model's {len(facts['ops'])} ops, then the arena.
bool SetupModel() {{
  static tflite::MicroMutableOpResolver<kOpCount> resolver;
{adds}
  static tflite::MicroInterpreter static_interpreter(tflite::GetModel(g_model), resolver, tensor_arena,
                                                     kTensorArenaSize);
  interpreter = &static_interpreter;
  return interpreter->AllocateTensors() == kTfLiteOk;
}}

// One inference on quantized inputs (see model_settings.h for each tensor's scale and zero point).
bool RunModel({params}) {{
{copy_in}
  if (interpreter->Invoke() != kTfLiteOk) return false;
{copy_out}
  return true;
}}
"""


def _readme(facts: dict) -> str:
    first = facts["inputs"][0]
    return f"""# {facts['name']} for TensorFlow Lite Micro

Generated by `kerakit export` and verified in TFLite Micro's own interpreter
against the Keras model (figures in the export's `export_report.json`).

| file | what |
|---|---|
| `model.tflite` | the full-integer int8 model, batch 1 ({facts['flash']:,} bytes of flash) |
| `model_data.h`, `model_data.cc` | the same bytes as `alignas(16) const unsigned char g_model[]`, and `g_model_len` |
| `model_settings.h` | input/output shapes, scales and zero points, class labels, `kTensorArenaSize` |

- Tensor arena: {facts['arena']:,} bytes (`kTensorArenaSize`): the smallest arena TFLM ran the model
  with on the exporting host was {facts['arena_minimum']:,} bytes, with 64-bit pointers and the
  reference kernels. A 32-bit microcontroller needs no more with those kernels; optimized ones
  (CMSIS-NN) may ask for scratch space on top: `interpreter->arena_used_bytes()` after
  `AllocateTensors()` on the device tells.
- Flash: {facts['flash']:,} bytes of model, plus TFLM's own code for the kernels below.
- {facts['macs']:,} multiply-accumulates per inference (conv, depthwise and fully-connected ops).
- Ops, registered with `MicroMutableOpResolver<{len(facts['ops'])}>`: {', '.join(facts['ops'])}.
- Inputs are what the recipe's `preprocess` gives, quantized: `q = round(x / k{first['id']}Scale) + k{first['id']}ZeroPoint`.

```cpp
{readme_code(facts)}```

These files compile on their own; linking needs the TensorFlow Lite Micro
library built for your board (https://github.com/tensorflow/tflite-micro, or
your vendor's port of it).
"""


# --------------------------------------------------------------------------- runtime

def model_file(path: Path) -> Path:
    return Path(path) / MODEL_FILE


def io_names(model) -> tuple[list[str], list[str]]:
    """Input and output names in TFLM's index order: the serving signature's names where there is one."""
    graph = model.subgraphs[0]
    by_tensor = {}
    for signature in model.signatureDefs or []:
        for t in [*(signature.inputs or []), *(signature.outputs or [])]:
            by_tensor[t.tensorIndex] = t.name.decode()
    name = lambda i: by_tensor.get(i) or graph.tensors[i].name.decode()  # noqa: E731
    return [name(i) for i in graph.inputs], [name(i) for i in graph.outputs]


class MicroPredictor(Predictor):
    """A `.tflm` bundle's model in TFLM's Python interpreter, with the arena firmware is told to allocate.

    TFLM runs batch 1: rows are run one at a time. int8/uint8 inputs and outputs
    are (de)quantized with each tensor's scale and zero point, as for LiteRT.
    """

    format = "tflite-micro"

    def __init__(self, path: Path):
        super().__init__(path)
        if not model_file(path).is_file():
            raise KerakitError(f"{str(path)!r} has no {MODEL_FILE}: not a TFLite Micro bundle.")
        data = model_file(path).read_bytes()
        try:
            self._interpreter = _interpreter(data, firmware_arena(minimum_arena(data)))
        except (RuntimeError, ValueError) as e:
            raise KerakitError(f"Cannot run {str(path)!r} in TFLite Micro: {str(e).splitlines()[0]}") from None
        model = read_graph(data)
        in_names, out_names = io_names(model)
        self._in = {t["name"]: t for t in _tensors(self._interpreter, in_names, "input")}
        self._out = {t["name"]: t for t in _tensors(self._interpreter, out_names, "output")}
        view = lambda t: "float32" if t["scale"] and t["dtype"] in ("int8", "uint8") else t["dtype"]  # noqa: E731
        self.inputs = [Spec(n, (None, *t["shape"][1:]), view(t)) for n, t in sorted(self._in.items())]
        self.outputs = [Spec(n, (None, *t["shape"][1:]), view(t)) for n, t in sorted(self._out.items())]

    def _run(self, batch):
        it = self._interpreter
        feeds = {name: _quantize(value, self._in[name]) for name, value in batch.items()}
        rows = len(next(iter(feeds.values())))
        raw = {name: np.empty((rows, *t["shape"][1:]), t["dtype"]) for name, t in self._out.items()}
        for row in range(rows):
            for name, value in feeds.items():
                it.set_input(value[row : row + 1], self._in[name]["index"])
            it.invoke()
            for name, t in self._out.items():
                raw[name][row] = it.get_output(t["index"])[0]
        return {name: _dequantize(value, self._out[name]) for name, value in raw.items()}


def _quantize(value: np.ndarray, t: dict) -> np.ndarray:
    if t["dtype"] in ("int8", "uint8") and t["scale"] and value.dtype.kind == "f":
        info = np.iinfo(t["dtype"])
        return np.clip(np.round(value / t["scale"] + t["zero_point"]), info.min, info.max).astype(t["dtype"])
    return value.astype(t["dtype"], copy=False)


def _dequantize(value: np.ndarray, t: dict) -> np.ndarray:
    if t["dtype"] in ("int8", "uint8") and t["scale"]:
        return (value.astype(np.float32) - t["zero_point"]) * np.float32(t["scale"])
    return value


def measure(path: Path) -> Footprint:
    """Tensor arena (measured in TFLM), flash (the model's bytes) and MACs (from the graph) of a bundle."""
    data = model_file(path).read_bytes()
    minimum = minimum_arena(data)
    model = read_graph(data)
    return Footprint(ram_bytes=firmware_arena(minimum), flash_bytes=len(data), macs=count_macs(model),
                     ram_label="tensor arena",
                     details={"arena_minimum_bytes": minimum, "ops": graph_ops(model),
                              "measured": "smallest arena TFLite Micro invokes the model with on this host "
                                          "(64-bit), rounded up to whole KiB; flash: the model's bytes"})


FORMAT = Format(
    name="tflite-micro",
    suffix=".tflm",
    marker=MODEL_FILE,
    predictor=MicroPredictor,
    variants=(Variant("int8", "tflite-micro-int8", "model_int8.tflm"),),
    options={"io": Option("int8", _check_io, "model inputs/outputs: int8 | uint8")},
    convert=convert,
    measure=measure,
    timing_note=TIMING_NOTE,
    fixed_threads="1",
    libraries=("tensorflow", "tflite-micro"),
    preference=50,
)
