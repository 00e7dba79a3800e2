"""TFLite flatbuffers on LiteRT (`ai_edge_litert`): float32, float16, dynamic-range and full-integer int8.

Converted from the serving SavedModel; the model's name, labels and
normalization travel inside the file as a "kerakit" metadata entry, and in
LiteRT's own metadata schema (TFLITE_METADATA: `add_metadata(..., standard=)`) for
readers that know only that: MediaPipe Tasks, the TFLite Support library.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np

from kerakit import files
from kerakit.errors import KerakitError
from kerakit.formats import calibration
from kerakit.formats.base import Format, Option, Predictor, Spec, Variant
from kerakit.formats.savedmodel import SIGNATURE, write_savedmodel

IO_TYPES = ("int8", "uint8", "float32")
# Elementwise ops that may sit between a model's raw inputs and its first
# weighted layer: an in-model Normalization (x - mean) * 1/std, a Rescaling.
PREFIX_OPS = {"SUB", "ADD", "MUL", "DIV", "SQRT", "RSQRT", "MAXIMUM", "MINIMUM", "CAST"}


def _check_io(value) -> str:
    if value not in IO_TYPES:
        raise KerakitError(f"Invalid io={value!r}. Expected one of {', '.join(IO_TYPES)}.")
    return value


# --------------------------------------------------------------------------- conversion

def _check_batch(value) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise KerakitError(f"Invalid batch={value!r}. Expected a positive integer (or leave it out: dynamic batch).")
    return value


def convert(context, spec, path: Path) -> dict | None:
    """Write the .tflite file; for int8, the report's note of the ops kept in float for the CPU delegate."""
    batch, io = spec.option("batch"), spec.option("io")
    recurrent = recurrent_layers(context.model)
    if recurrent and spec.quantization == "int8":  # checked, not tried: the converter dies with SIGSEGV
        raise ValueError(f"full-integer int8 of a recurrent layer ({', '.join(recurrent)}) crashes the TFLite "
                         "converter (TensorFlow 2.21, segfault in calibration): use tflite-dynamic or tflite-fp16 "
                         "with batch = 1, or onnx-int8")
    savedmodel = context.savedmodel() if batch is None else context.intermediate(
        f"savedmodel-batch{batch}", lambda p: write_savedmodel(context.model, context.inputs, context.output_names,
                                                               p, batch=batch))
    note = None
    if spec.quantization == "int8":
        data, note = int8_for_delegate(savedmodel, io, context.inputs, context.calibration)
    else:
        data = tflite_bytes(savedmodel, spec.quantization, io, context.inputs, context.calibration)
    data = add_metadata(data, {**context.metadata, "quantization": spec.quantization}, standard=context.metadata)
    with files.atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return note


def recurrent_layers(model) -> list[str]:
    """Class names of the recurrent layers (LSTM, GRU, Bidirectional, ...) anywhere in a Keras model."""
    import keras

    found, stack = [], list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop()
        if isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional)):
            found.append(type(layer).__name__)
        stack += getattr(layer, "layers", [])
    return sorted(set(found))


def tflite_bytes(savedmodel: Path, quantization: str, io: str, inputs: list[Spec],
                 sample: dict[str, np.ndarray] | None) -> bytes:
    """Convert the SavedModel with `quantization` (full-integer needs `sample`)."""
    import tensorflow as tf

    converter = _converter(savedmodel)
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization == "int8":
        if sample is None:
            raise ValueError("full-integer int8 needs a representative sample (a recipe, or --sample FILE.npz)")
        if calibration.needs_float_inputs(sample):
            prefix = float_prefix(_convert(_converter(savedmodel)))
            if prefix:  # the model's I/O stays float32: the prefix takes the raw features
                return selective_int8(calibrated(savedmodel, sample), "float32", float_nodes=prefix)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: iter(calibration.rows(sample))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = _io_type(io, inputs)
        if io_type != "float32":
            converter.inference_input_type = converter.inference_output_type = getattr(tf, io_type)
    return _convert(converter)


def _io_type(io: str, inputs: list[Spec]) -> str:
    """Integer inputs (token ids) stay as they are; float I/O becomes int8/uint8 unless io=float32."""
    return io if all(np.dtype(s.dtype).kind == "f" for s in inputs) else "float32"


def _converter(savedmodel: Path):
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_saved_model(str(savedmodel), signature_keys=[SIGNATURE])


# Op types LiteRT's int8 quantizer gets wrong, kept in float32. ONE_HOT (a table's category column) is given the
# output scale of what follows while its on and off values keep scales of their own, so the bytes it copies
# meant 4.55 and 1.38 where 1 and 0 were meant: a churn table's int8 file answered no closer to Keras than a
# constant (mean abs error 0.199 on its probabilities), whatever the row.
WRONG_IN_INT8 = ("ONE_HOT",)


def int8_for_delegate(savedmodel: Path, io: str, inputs: list[Spec], sample) -> tuple[bytes, dict]:
    """Full-integer int8 where LiteRT's CPU delegate (XNNPACK) runs every op it runs in float; its report note.

    The ops the delegate refuses in int8 (HARD_SWISH and SOFTMAX, as the
    interpreter reports: `kerakit.formats.delegation`) cut the graph into
    partitions with LiteRT's own int8 kernels between them, which made int8
    slower than float32. Those op types alone are kept in float32 (XNNPACK
    runs them, with QUANTIZE/DEQUANTIZE around them). Ops the delegate refuses
    in the float32 model too (a dynamic batch's shape arithmetic) are named, not changed.
    An input of any size (an image of any height and width) is placed at the sample's row shape.
    """
    from kerakit.formats.delegation import placement

    rows = {k: tuple(v.shape[1:]) for k, v in (sample or {}).items()}
    float_model = _convert(_converter(savedmodel))
    in_float = placement(float_model, rows).not_delegated
    prefix = float_prefix(float_model) if calibration.needs_float_inputs(sample) else []
    model = None

    def int8_but(float_ops) -> bytes:  # the calibrated model (made once) quantized with `float_ops` left float
        nonlocal model
        model = model or calibrated(savedmodel, sample)
        return selective_int8(model, "float32" if prefix else _io_type(io, inputs), float_ops=list(float_ops),
                              float_nodes=prefix)

    kept = {op: n for op, n in in_float.items() if op in WRONG_IN_INT8}  # op type -> how many stayed float
    # XNNPACK runs none of WRONG_IN_INT8 in float either: keeping them float costs no partition.
    data = int8_but(kept) if kept else tflite_bytes(savedmodel, "int8", io, inputs, sample)
    first = found = placement(data, rows)
    for _ in range(3):  # a float op may hand the refusal on to a neighbour; rarely more than once
        refused = _int8_refused(found, in_float)
        if not refused:
            break
        candidate = int8_but([*kept, *refused])
        tried = placement(candidate, rows)
        if sum(_int8_refused(tried, in_float).values()) >= sum(refused.values()):
            break  # float did not help: keep the file as it was, and say what stays outside
        kept.update(refused)
        data, found = candidate, tried
    return data, _delegation_note(first, found, kept, in_float)


def _int8_refused(found, in_float: dict[str, int]) -> dict[str, int]:
    """Ops outside the delegate beyond those the float32 model leaves outside too."""
    return {op: n - in_float.get(op, 0) for op, n in found.not_delegated.items() if n > in_float.get(op, 0)}


def _delegation_note(first, final, float_ops: dict[str, int], in_float: dict[str, int]) -> dict:
    def listed(ops: dict[str, int]) -> str:
        return ", ".join(f"{n} {op}" for op, n in ops.items())

    outside = sum(final.not_delegated.values())
    still = _int8_refused(final, in_float)
    summary = (f"{final.partitions} XNNPACK partition(s), " + (f"{outside} op(s) outside ({listed(final.not_delegated)})"
                                                               if outside else "every op in XNNPACK"))
    if outside and not still:
        summary += ", as in the float32 model"
    if float_ops:
        wrong = [op for op in float_ops if op in WRONG_IN_INT8]
        unkerneled = [op for op in float_ops if op not in WRONG_IN_INT8]
        why = ([f"XNNPACK has no int8 kernel for {', '.join(unkerneled)}"] if unkerneled else []) + (
            [f"LiteRT's int8 {', '.join(wrong)} copies values quantized at another scale"] if wrong else [])
        summary += f"; kept in float32: {listed(float_ops)} ({'; '.join(why)})"
    return {"runtime": "LiteRT CPU (XNNPACK delegate)", "float_ops": float_ops, "int8_only": first.to_dict(),
            **final.to_dict(), "not_delegated_in_float32": in_float, "summary": summary}


def float_prefix(model_bytes: bytes) -> list[str]:
    """Output tensor names of the float TFLite model's input-normalization prefix (see `calibration`)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    graph = model.subgraphs[0]
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    constants = {i for i, t in enumerate(graph.tensors)
                 if model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data)}
    ops = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        ops.append((names.get(max(code.builtinCode, code.deprecatedBuiltinCode)), list(op.inputs), list(op.outputs), op))
    prefix = calibration.float_prefix(ops, set(graph.inputs), constants, PREFIX_OPS)
    return [graph.tensors[i].name.decode() for op in prefix for i in op.outputs]


def calibrated(savedmodel: Path, sample) -> bytes:
    """The float model with the sample's value ranges recorded, for `selective_int8`."""
    import tensorflow as tf

    converter = _converter(savedmodel)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: iter(calibration.rows(sample))
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True  # noqa: SLF001 - QuantizationDebugger's own switch
    return _convert(converter)


def selective_int8(calibrated_model: bytes, io_type: str, float_ops=(), float_nodes=()) -> bytes:
    """int8 everywhere but the op types `float_ops` and the ops writing tensors `float_nodes`.

    LiteRT's MLIR quantizer with its denylists, as `tf.lite.experimental.QuantizationDebugger`
    calls it, with int8/uint8/float32 model I/O.
    """
    import tensorflow as tf
    from tensorflow.lite.python import convert as lite_convert

    from kerakit.quiet import muted_stderr

    with muted_stderr():
        return lite_convert.mlir_quantize(calibrated_model, input_data_type=getattr(tf, io_type),
                                          output_data_type=getattr(tf, io_type),
                                          denylisted_ops=list(float_ops) or None,
                                          denylisted_nodes=list(float_nodes) or None)


def _convert(converter) -> bytes:
    from kerakit.quiet import muted_stderr

    try:
        with muted_stderr():
            return converter.convert()
    except Exception as e:
        ops = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", str(e))))
        if "TensorListReserve' op requires element_shape to be static" in str(e):
            raise ValueError(
                "an LSTM/GRU needs a fixed batch for TFLite builtins ('tf.TensorListReserve' op requires "
                "element_shape to be static): set batch = 1 on this artifact in the target's [[artifacts]]") from e
        if ops:
            raise ValueError(f"TensorFlow op(s) {', '.join(ops)} not supported by TFLite builtin ops") from e
        raise


def add_metadata(model_bytes: bytes, metadata: dict, standard: dict | None = None) -> bytes:
    """Embed `metadata` (JSON: name, description, normalization, labels) in the flatbuffer's metadata list, and
    with `standard` (the model's name, description, labels) LiteRT's own description of it too
    (`_standard_bytes`), in one parse and one write of the flatbuffer.

    Stored under the name "kerakit"; LiteRT ignores unknown metadata entries,
    and any flatbuffer reader can get it back (`read_metadata`).
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    _put_metadata(model, "kerakit", json.dumps(metadata, sort_keys=True).encode())
    labels = (standard.get("labels") or []) if standard is not None else []
    if standard is not None:
        _put_metadata(model, STANDARD_METADATA, _standard_bytes(model, standard, labels))
    return _with_labels(bytes(flatbuffer_utils.convert_object_to_bytearray(model)), labels)


def _put_metadata(model, name: str, data: bytes) -> None:
    """`data` as a new buffer of `model` (a flatbuffer object), its metadata entry `name` pointing at it (an
    older entry of that name replaced)."""
    from tensorflow.lite.python import schema_py_generated as schema

    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _text(m.name) != name] + [entry]


# --------------------------------------------------------------------------- LiteRT's metadata schema

STANDARD_METADATA = "TFLITE_METADATA"  # the model's metadata entry that holds a ModelMetadata (metadata_schema.fbs)
LABELS_FILE = "labels.txt"
MIN_PARSER_VERSION = "1.0.0"  # every field written here is in the schema's first version
_UINT8, _FLOAT32 = 3, 0       # schema.fbs TensorType
_IMAGE_PROPERTIES, _FEATURE_PROPERTIES = 2, 1  # the ContentProperties union's members
_RGB, _GRAYSCALE = 1, 2       # ColorSpaceType
_TENSOR_AXIS_LABELS = 2       # AssociatedFileType


def _standard_bytes(model, metadata: dict, labels: list[str]) -> bytes:
    """The ModelMetadata flatbuffer of `model`: the model described in LiteRT's metadata schema
    (metadata_schema.fbs, file identifier M001), stored (`add_metadata`) in the flatbuffer's metadata list under TFLITE_METADATA, which MediaPipe Tasks and the TFLite Support library read:
    the model's name and description; an image input (uint8, height x width x 3 or 1) as an RGB or grayscale image
    of that default size whose values range over 0-255 (Stats), read as raw pixels, with no normalization to apply;
    each output by name, and a class output's labels as labels.txt (TENSOR_AXIS_LABELS), packed into the file as
    a zip archive appended after the flatbuffer, as the TFLite Support metadata populator packs it. Neither the
    graph nor its buffers change: LiteRT ignores metadata entries and bytes past the model.

    tflite-support's own writers are not used: their last release (0.4.4) requires protobuf < 4, which this
    TensorFlow's stack is past, and MediaPipe 1.2's wheel lacks the compiled module its writers import.
    """
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(_model_metadata(builder, model, metadata, labels), file_identifier=b"M001")
    return bytes(builder.Output())


def _with_labels(data: bytes, labels: list[str]) -> bytes:
    """The model's bytes with labels.txt zipped after them, as the TFLite Support populator packs it."""
    if not labels:
        return data
    archive = io.BytesIO(data)
    with zipfile.ZipFile(archive, "a") as packed:  # appended after the model, as the populator does
        info = zipfile.ZipInfo(LABELS_FILE, date_time=(1980, 1, 1, 0, 0, 0))  # fixed: the same model, the same bytes
        packed.writestr(info, "\n".join(labels) + "\n")
    return archive.getvalue()


def _model_metadata(builder, model, metadata: dict, labels: list[str]) -> int:
    """ModelMetadata{name, description, subgraph_metadata: [its one subgraph], min_parser_version}."""
    graph = model.subgraphs[0]
    names = {}  # tensor index -> the signature's name of it ("image", "probabilities")
    for signature in model.signatureDefs or []:
        names.update({t.tensorIndex: _text(t.name) for t in [*signature.inputs, *signature.outputs]})
    classes = len(labels)
    inputs = [_tensor_metadata(builder, names.get(i, _text(graph.tensors[i].name)), graph.tensors[i], None)
              for i in graph.inputs]
    outputs = [_tensor_metadata(builder, names.get(i, _text(graph.tensors[i].name)), graph.tensors[i],
                                labels if classes and _last_dim(graph.tensors[i]) == classes else None)
               for i in graph.outputs]
    strings = [builder.CreateString(str(metadata.get(k) or "")) for k in ("name", "description")]
    version = builder.CreateString(MIN_PARSER_VERSION)
    subgraph = _table(builder, [(2, _vector(builder, inputs)), (3, _vector(builder, outputs))])
    return _table(builder, [(0, strings[0]), (1, strings[1]), (3, _vector(builder, [subgraph])), (7, version)])


def _tensor_metadata(builder, name: str, tensor, labels: list[str] | None) -> int:
    """TensorMetadata: an image input as ImageProperties (colour space, default size) with Stats 0-255; any other
    tensor as FeatureProperties; `labels` as an associated labels.txt."""
    shape = [int(d) for d in (tensor.shape if tensor.shape is not None else [])]
    image = tensor.type == _UINT8 and len(shape) == 4 and shape[-1] in (1, 3)
    name_at = builder.CreateString(name)
    stats = None
    if image:
        stats = _table(builder, [(0, _floats(builder, [255.0])), (1, _floats(builder, [0.0]))])
        size = _table(builder, [(0, shape[2], "uint32"), (1, shape[1], "uint32")])  # width, height
        properties = _table(builder, [(0, _RGB if shape[-1] == 3 else _GRAYSCALE, "int8"), (1, size)])
        content = _table(builder, [(0, _IMAGE_PROPERTIES, "uint8"), (1, properties)])
    else:
        content = _table(builder, [(0, _FEATURE_PROPERTIES, "uint8"), (1, _table(builder, []))])
    files_at = None
    if labels:
        file_name, about = builder.CreateString(LABELS_FILE), builder.CreateString("The class of each score.")
        files_at = _vector(builder, [_table(builder, [(0, file_name), (1, about), (2, _TENSOR_AXIS_LABELS, "int8")])])
    fields = [(0, name_at), (3, content)] + ([(5, stats)] if stats else []) + ([(6, files_at)] if files_at else [])
    return _table(builder, fields)


def _table(builder, fields: list[tuple]) -> int:
    """A table of (slot, offset) fields, or (slot, value, scalar type) ones; everything it points to built first."""
    builder.StartObject(1 + max((f[0] for f in fields), default=-1))
    for slot, value, *kind in fields:
        if kind:
            getattr(builder, f"Prepend{kind[0].capitalize()}Slot")(slot, value, 0)
        else:
            builder.PrependUOffsetTRelativeSlot(slot, value, 0)
    return builder.EndObject()


def _vector(builder, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _floats(builder, values: list[float]) -> int:
    builder.StartVector(4, len(values), 4)
    for value in reversed(values):
        builder.PrependFloat32(value)
    return builder.EndVector()


def _last_dim(tensor) -> int | None:
    return int(tensor.shape[-1]) if tensor.shape is not None and len(tensor.shape) else None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_metadata(path: Path) -> dict | None:
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == "kerakit":
            return json.loads(bytes(model.buffers[entry.buffer].data).decode())
    return None


# --------------------------------------------------------------------------- runtime

class LiteRTPredictor(Predictor):
    """A `.tflite` file on LiteRT, through its serving signature.

    int8/uint8 inputs and outputs of a float model are (de)quantized with the
    tensor's own scale and zero point, so callers pass and get float arrays.

    An interpreter is never resized after its first invoke: each input shape gets
    its own interpreter, sized before its first call (`_Sized`), which is what a
    fresh runtime computes. A LiteRT interpreter invoked at batch 1 and then
    resized to 128 rows answered an int8 attention model differently from a fresh
    one on 1-42 % of rows, from run to run (issue 23, on an AVX2 EPYC); that path
    is simply never taken. A dynamic batch runs in power-of-two slices (100 rows:
    64 + 32 + 4), so a server's varying batch sizes need at most one interpreter
    per power of two, not one per row count.
    """

    format = "tflite"
    MAX_SIZES = 24  # interpreters kept (the oldest dropped): 9 batch sizes x a few image sizes

    def __init__(self, path: Path, threads: int | None = None):
        super().__init__(path)
        self._threads = threads
        try:
            self._model = path.read_bytes()
            first = _Sized(self._model, threads, None)
        except (ValueError, RuntimeError) as e:
            raise KerakitError(f"Cannot load TFLite model {str(path)!r}: {str(e)[:200]} (truncated or corrupt?).") from e
        in_details, out_details = first.details
        self._in, self._out = in_details, out_details
        self._quantize = {k: _quantizer(d) for k, d in in_details.items()}
        self._dequantize = {k: _dequantizer(d) for k, d in out_details.items()}
        # `run` takes what `validate` returned (already the tensor's dtype): only quantized I/O needs a step.
        self._steps_in = any(_scale(d) for d in in_details.values())
        self._steps_out = any(_scale(d) for d in out_details.values())
        # Callers see float tensors where the file quantized a float model's I/O; dims the model
        # leaves open (shape_signature -1: the batch, an image of any size) are None.
        self.inputs = [Spec(k, _signature(d), _float_view(d)) for k, d in sorted(in_details.items())]
        self.outputs = [Spec(k, _signature(d), _float_view(d)) for k, d in sorted(out_details.items())]
        self._names = [s.name for s in self.inputs]
        self._dynamic_batch = bool(self.inputs) and self.inputs[0].shape[:1] == (None,)
        # A one-input model remembers the interpreter its last call's shape ran on (`_run`'s hot path: looking
        # it up by shapes cost 0.7 us a call, 8 % of digits_cnn int8's 9 us at batch 1).
        self._one = self._names[0] if len(self._names) == 1 else None
        self._last_shape, self._last_call = None, None
        # Interpreters by input shapes (in `_names` order). The first one is allocated at the file's own
        # shapes, unless that is a placeholder size (1x1 for an image of any size) the model cannot take.
        self._sized: dict[tuple, _Sized] = {}
        if first.shapes is not None:
            self._sized[first.shapes] = first
        if all(None not in s.shape[1:] for s in self.inputs):
            from kerakit.quiet import muted_stderr

            with muted_stderr():  # the first invoke creates the XNNPACK delegate and says so on stderr
                self._run({s.name: _blank((s.shape[0] or 1, *s.shape[1:]), s.dtype) for s in self.inputs})

    def keras_outputs(self) -> list[str] | None:
        return (read_metadata(self.path) or {}).get("outputs")

    @property
    def quantized_io(self) -> bool:
        return self._steps_in

    def _run(self, batch):
        """Quantize, run on the interpreter sized for these shapes (power-of-two slices of a dynamic batch),
        dequantize."""
        feeds = {k: self._quantize[k](v) for k, v in batch.items()} if self._steps_in else batch
        if self._one is not None and feeds[self._one].shape == self._last_shape:  # the hot path: 0.1 us
            raw = self._last_call(feeds)
        else:
            raw = self._run_sized(feeds)
        if not self._steps_out:
            return raw
        return {k: self._dequantize[k](v) for k, v in raw.items()}

    def _run_sized(self, feeds: dict) -> dict:
        n = len(feeds[self._names[0]]) if self._names else 0
        if self._dynamic_batch and n & (n - 1):  # not a power of two
            parts, start = [], 0
            for size in _powers_of_two(n):
                parts.append(self._invoke({k: v[start:start + size] for k, v in feeds.items()}))
                start += size
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return self._invoke(feeds)

    def _invoke(self, feeds: dict) -> dict:
        shapes = tuple([feeds[k].shape for k in self._names])  # a list: a generator costs 0.3 us more
        sized = self._sized.get(shapes) or self._new_size(feeds, shapes)
        if self._one is not None:  # the next call of this shape goes straight to this interpreter
            self._last_shape, self._last_call = shapes[0], sized.call
        return sized.call(feeds)

    def _new_size(self, feeds: dict, shapes: tuple) -> "_Sized":
        """A fresh interpreter allocated for `shapes` before its first invoke."""
        try:
            sized = _Sized(self._model, self._threads, {self._in[k]["index"]: feeds[k].shape for k in self._names})
        except RuntimeError as e:  # named by the op that cannot be prepared at these shapes
            from kerakit.formats.delegation import blocking_op

            why = blocking_op(self._model, {k: tuple(feeds[k].shape) for k in self._names}, e)
            raise KerakitError(f"{self.path.name} cannot run these inputs: {why[:300]}") from None
        if len(self._sized) >= self.MAX_SIZES:
            self._sized.pop(next(iter(self._sized)))
        self._sized[shapes] = sized
        return sized


class _Sized:
    """One LiteRT interpreter allocated for one set of input shapes, and never resized after.

    `sizes`: {input tensor index: shape} to resize to before allocating; None: the file's own shapes.
    `shapes` is None where the file's own shapes cannot be allocated (a placeholder size).
    """

    def __init__(self, model: bytes, threads: int | None, sizes: dict | None):
        from ai_edge_litert.interpreter import Interpreter

        from kerakit.quiet import muted_stderr

        with muted_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            self.interpreter = Interpreter(model_content=model, num_threads=threads)
        signatures = self.interpreter.get_signature_list()
        if signatures:
            key = SIGNATURE if SIGNATURE in signatures else next(iter(signatures))
            runner = self.interpreter.get_signature_runner(key)
            self.details = runner.get_input_details(), runner.get_output_details()
            self.subgraph = self.interpreter._interpreter.GetSubgraphIndexFromSignature(key)
        else:  # a model converted without signatures: use tensor order and names
            self.details = ({d["name"]: d for d in self.interpreter.get_input_details()},
                            {d["name"]: d for d in self.interpreter.get_output_details()})
            self.subgraph = 0
        self.wrapper = self.interpreter._interpreter  # what SignatureRunner drives, minus its per-call resize
        for index, shape in (sizes or {}).items():
            self.wrapper.ResizeInputTensor(index, np.array(shape, np.int32), False, self.subgraph)
        self.shapes: tuple | None = None
        try:
            self.wrapper.AllocateTensors(self.subgraph)
        except RuntimeError:
            if sizes is not None:
                raise
            return
        if sizes is None:
            self.shapes = tuple(tuple(int(n) for n in d["shape"]) for _, d in sorted(self.details[0].items()))
        else:
            self.shapes = tuple(tuple(s) for s in sizes.values())
        self.call = _bound_call(self.wrapper, self.subgraph, *self.details)


def _bound_call(wrapper, subgraph: int, inputs: dict, outputs: dict):
    """`feeds -> outputs` on one interpreter with its methods and tensor indices bound once.

    The bare LiteRT call (SetTensor, Invoke, GetTensor) of digits_cnn int8 at batch 1 is about 9 us; looking up
    the same methods and indices per call, with a dict of details per tensor, added 1-2 us. SetTensor copies a
    non-contiguous array correctly by itself and GetTensor returns an array of its own.
    """
    set_tensor, invoke, get_tensor = wrapper.SetTensor, wrapper.Invoke, wrapper.GetTensor
    feeds_at = [(name, d["index"]) for name, d in inputs.items()]
    outputs_at = [(name, d["index"]) for name, d in outputs.items()]
    if len(feeds_at) == 1 and len(outputs_at) == 1:
        [(name, index)], [(out, out_index)] = feeds_at, outputs_at

        def call_one(feeds: dict) -> dict:
            set_tensor(index, feeds[name], subgraph)
            invoke(subgraph)
            return {out: get_tensor(out_index, subgraph)}

        return call_one

    def call(feeds: dict) -> dict:
        for name, index in feeds_at:
            set_tensor(index, feeds[name], subgraph)
        invoke(subgraph)
        return {name: get_tensor(index, subgraph) for name, index in outputs_at}

    return call


def _powers_of_two(n: int) -> list[int]:
    """100 -> [64, 32, 4]: n as a sum of distinct powers of two, largest first."""
    return [1 << b for b in range(n.bit_length() - 1, -1, -1) if n >> b & 1]


def _signature(detail) -> tuple:
    """The shape the model accepts: shape_signature's -1s as None (the batch is None where it has none)."""
    signature = detail.get("shape_signature")
    if signature is None or len(signature) != len(detail["shape"]) or not len(signature):
        return (None, *map(int, detail["shape"][1:])) if len(detail["shape"]) else ()
    return tuple(None if int(d) < 0 else int(d) for d in signature)


def _scale(detail) -> bool:
    """Whether a tensor is int8/uint8 standing for floats (a scale to apply)."""
    return detail["dtype"] in (np.int8, np.uint8) and bool(detail["quantization"][0])


def _float_view(detail) -> str:
    if np.dtype(detail["dtype"]).kind in "SO":  # a string tensor: text in, as every runtime takes it
        return "object"
    return "float32" if _scale(detail) else np.dtype(detail["dtype"]).name


def _blank(shape: tuple, dtype: str) -> np.ndarray:
    """A warm-up input: zeros, or empty strings for a string input."""
    return np.full(shape, "", dtype=object) if dtype == "object" else np.zeros(shape, dtype)


def _quantizer(detail):
    """value -> what the input tensor takes: a float batch scaled, rounded, clipped and cast in place
    (one float32 buffer, no temporaries), anything else cast as it is."""
    dtype = np.dtype(detail["dtype"])
    if not _scale(detail):
        return lambda value: value.astype(dtype, copy=False)
    scale, zero_point = detail["quantization"]
    info, scale, zero_point = np.iinfo(dtype), np.float32(scale), np.float32(zero_point)
    low, high = np.float32(info.min), np.float32(info.max)

    def quantize(value: np.ndarray) -> np.ndarray:
        if value.dtype.kind != "f":
            return value.astype(dtype, copy=False)
        scaled = np.divide(value, scale, dtype=np.float32)
        scaled += zero_point
        np.rint(scaled, out=scaled)
        np.maximum(scaled, low, out=scaled)  # np.clip's Python-level checks cost more than both ufuncs
        np.minimum(scaled, high, out=scaled)
        return scaled.astype(dtype)

    return quantize


def _dequantizer(detail):
    """raw output -> float32 for a quantized output (one float32 buffer), as it is otherwise."""
    if not _scale(detail):
        return lambda value: value
    scale, zero_point = (np.float32(v) for v in detail["quantization"])

    def dequantize(value: np.ndarray) -> np.ndarray:
        out = np.subtract(value, zero_point, dtype=np.float32)  # the cast and the subtraction in one pass
        out *= scale
        return out

    return dequantize


FORMAT = Format(
    name="tflite",
    suffix=".tflite",
    predictor=LiteRTPredictor,
    variants=(Variant("none", "tflite", "model_fp32.tflite"),
              Variant("float16", "tflite-fp16", "model_fp16.tflite"),
              Variant("dynamic", "tflite-dynamic", "model_dynamic.tflite"),
              Variant("int8", "tflite-int8", "model_int8.tflite")),
    options={"io": Option("int8", _check_io, "full-integer model inputs/outputs: int8 | uint8 | float32"),
             "batch": Option(None, _check_batch, "a fixed batch size (LSTM/GRU need one for builtin ops); "
                                                 "default: dynamic")},
    convert=convert,
    runtime_options=("threads",),
    triton_platform="tensorflow_tflite",
    repository_files=("model.tflite",),
    libraries=("tensorflow", "ai-edge-litert"),
    preference=20,
)
