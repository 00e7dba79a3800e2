"""Export mechanics, one function per format: Keras model in, artifact on disk out.

All formats are traced from one serving function, `{input_name: tensor} ->
{output_name: tensor}`, so SavedModel, TFLite and ONNX expose the same names:
the recipe's input names and the Keras output layers' names, with a dynamic
batch dimension.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from kerakit import runs
from kerakit.export.targets import ArtifactSpec
from kerakit.runtime import Spec

SIGNATURE = "serving_default"


def serving_function(model, inputs: list[Spec], outputs: list[str]):
    """(function, input_signature): dicts of named tensors in and out."""
    import tensorflow as tf

    signature = [{s.name: tf.TensorSpec((None, *s.shape[1:]), s.dtype, name=s.name) for s in inputs}]
    single = len(inputs) == 1

    def serve(features):
        x = features[inputs[0].name] if single else features
        result = model(x, training=False)
        result = result if isinstance(result, (list, tuple)) else [result]
        return {name: tf.identity(t, name=name) for name, t in zip(outputs, result)}

    return serve, signature


def write_savedmodel(model, inputs: list[Spec], outputs: list[str], path: Path) -> None:
    import keras

    fn, signature = serving_function(model, inputs, outputs)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, fn, input_signature=signature)
    with runs.atomic_dir(path) as tmp:
        archive.write_out(str(tmp), verbose=False)


def tflite_bytes(savedmodel: Path, spec: ArtifactSpec, inputs: list[Spec], sample: dict[str, np.ndarray] | None) -> bytes:
    """Convert the SavedModel with the spec's quantization (full-integer needs `sample`)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(savedmodel), signature_keys=[SIGNATURE])
    if spec.quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif spec.quantization == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif spec.quantization == "int8":
        if sample is None:
            raise ValueError("full-integer int8 needs a representative sample (a recipe, or --sample FILE.npz)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(sample)
        prefix = []
        if needs_float_inputs(sample):
            prefix = float_prefix_tflite(_convert(tf.lite.TFLiteConverter.from_saved_model(
                str(savedmodel), signature_keys=[SIGNATURE])))
        if prefix:
            return _selective_int8(converter, prefix, sample)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # Integer inputs (token ids) stay as they are; float I/O becomes int8/uint8 unless io=float32.
        if spec.io != "float32" and all(np.dtype(s.dtype).kind == "f" for s in inputs):
            io_type = tf.int8 if spec.io == "int8" else tf.uint8
            converter.inference_input_type = io_type
            converter.inference_output_type = io_type
    return _convert(converter)


# Elementwise ops that may sit between a model's raw inputs and its first
# weighted layer: an in-model Normalization (x - mean) * 1/std, a Rescaling.
PREFIX_OPS_TFLITE = {"SUB", "ADD", "MUL", "DIV", "SQRT", "RSQRT", "MAXIMUM", "MINIMUM", "CAST"}
PREFIX_OPS_ONNX = {"Sub", "Add", "Mul", "Div", "Sqrt", "Reciprocal", "Max", "Min", "Cast", "Identity"}


def _float_prefix(ops, graph_inputs: set, constants: set, allowed: set) -> list:
    """Ops fed only by graph inputs, constants and earlier prefix ops: (op, outputs) pairs."""
    known, prefix = set(graph_inputs) | set(constants), []
    for op_type, op_inputs, op_outputs, op in ops:
        if op_type in allowed and all(i in known for i in op_inputs) and any(i not in constants for i in op_inputs):
            prefix.append(op)
            known.update(op_outputs)
    return prefix


MAX_FEATURE_RANGE_RATIO = 64.0  # beyond this, one int8 scale leaves the smallest feature < 2 bits


def needs_float_inputs(sample: dict[str, np.ndarray] | None) -> bool:
    """True when some float input's features span very different ranges (raw tabular data).

    Per-feature max |value| over the sample's last axis; images (channels on
    one scale) say no, raw tabular columns (0.001..4000) say yes.
    """
    for values in (sample or {}).values():
        if values.dtype.kind != "f" or values.ndim < 2:
            continue
        scale = np.abs(values.reshape(-1, values.shape[-1])).max(axis=0)
        scale = scale[scale > 0]
        if scale.size > 1 and scale.max() / scale.min() > MAX_FEATURE_RANGE_RATIO:
            return True
    return False


def float_prefix_tflite(model_bytes: bytes) -> list[str]:
    """Output tensor names of the float TFLite model's input-normalization prefix.

    Full-integer quantization gives each input tensor one scale; raw tabular
    features spanning 0.001..4000 lose the small ones entirely (the verifier
    measured a 32-point accuracy drop on breast_cancer_mlp). Keeping this
    prefix in float quantizes the normalized values instead.
    """
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
    prefix = _float_prefix(ops, set(graph.inputs), constants, PREFIX_OPS_TFLITE)
    return [graph.tensors[i].name.decode() for op in prefix for i in op.outputs]


def float_prefix_onnx(path: Path) -> list[str]:
    """Names of the ONNX graph's input-normalization nodes (see `float_prefix_tflite`)."""
    import onnx

    graph = onnx.load(str(path)).graph
    ops = [(n.op_type, list(n.input), list(n.output), n) for n in graph.node]
    prefix = _float_prefix(ops, {i.name for i in graph.input}, {t.name for t in graph.initializer}, PREFIX_OPS_ONNX)
    return [n.name for n in prefix]


def _selective_int8(converter, prefix: list[str], sample) -> bytes:
    """int8 everywhere but the float input prefix; the model's I/O stays float32."""
    import tensorflow as tf

    from kerakit.quiet import muted_stderr

    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=prefix)
    with muted_stderr():
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=_representative(sample), debug_options=options)
        return debugger.get_nondebug_quantized_model()


def _convert(converter) -> bytes:
    from kerakit.quiet import muted_stderr

    try:
        with muted_stderr():
            return converter.convert()
    except Exception as e:
        ops = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", str(e))))
        if ops:
            raise ValueError(f"TensorFlow op(s) {', '.join(ops)} not supported by TFLite builtin ops") from e
        raise


def _representative(sample: dict[str, np.ndarray]):
    n = len(next(iter(sample.values())))

    def generate():
        for i in range(n):
            yield {name: values[i : i + 1] for name, values in sample.items()}

    return generate


def add_tflite_metadata(model_bytes: bytes, metadata: dict) -> bytes:
    """Embed `metadata` (JSON: name, description, normalization, labels) in the flatbuffer's metadata list.

    Stored under the name "kerakit"; LiteRT ignores unknown metadata entries,
    and any flatbuffer reader can get it back (`read_tflite_metadata`).
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata, sort_keys=True).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = "kerakit"
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != b"kerakit" and m.name != "kerakit"] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_tflite_metadata(path: Path) -> dict | None:
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == "kerakit":
            return json.loads(bytes(model.buffers[entry.buffer].data).decode())
    return None


def write_onnx(savedmodel: Path, opset: int, path: Path) -> None:
    """tf2onnx from the serving SavedModel, as `python -m tf2onnx.convert --saved-model` does.

    Not `from_keras` (broken with Keras 3) and not `from_function`: that one
    turns tensors a layer captured (an adapted Normalization's mean and
    variance) into extra graph inputs. The SavedModel path freezes them.
    """
    from tf2onnx import convert, tf_loader

    from kerakit.quiet import muted_stderr

    with muted_stderr():
        graph_def, inputs, outputs, tables, renames = tf_loader.from_saved_model(
            str(savedmodel), None, None, None, [SIGNATURE], None, False,
            return_initialized_tables=True, return_tensors_to_rename=True)
        proto, _ = convert._convert_common(
            graph_def, name=path.stem, opset=opset, input_names=inputs, output_names=outputs,
            tensors_to_rename=renames, initialized_tables=tables, continue_on_error=True)
    _check_onnx_ops(proto, opset)
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"  # tf2onnx names it unk__NN
    _save_onnx(proto, path)


def _check_onnx_ops(proto, opset: int) -> None:
    """tf2onnx logs unsupported TensorFlow ops and emits them as they are; make that an error."""
    import onnx

    unknown = sorted({n.op_type for n in proto.graph.node
                      if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type, max_inclusive_version=opset)})
    if unknown:
        raise ValueError(f"TensorFlow op(s) {', '.join(unknown)} not supported by tf2onnx at opset {opset}")


def quantize_onnx(fp32: Path, spec: ArtifactSpec, sample: dict[str, np.ndarray] | None, path: Path) -> None:
    """ONNX Runtime quantization: static QDQ (calibrated on `sample`) or dynamic."""
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        out = Path(tmp) / "quantized.onnx"
        if spec.quantization == "dynamic":
            quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8, per_channel=True)
        else:
            if sample is None:
                raise ValueError("static int8 needs a representative sample (a recipe, or --sample FILE.npz)")

            class Reader(CalibrationDataReader):
                def __init__(self):
                    n = len(next(iter(sample.values())))
                    self._batches = iter([{k: v[i : i + 1] for k, v in sample.items()} for i in range(n)])

                def get_next(self):
                    return next(self._batches, None)

            quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                            nodes_to_exclude=float_prefix_onnx(prepared) if needs_float_inputs(sample) else [])
        runs.copy_file(out, path)


def _save_onnx(proto, path: Path) -> None:
    import onnx

    with runs.atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
