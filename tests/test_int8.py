"""int8 artifacts in the form their runtime runs fast: checked with the runtimes' and onnx's own views of the files.

LiteRT: every op of an edge int8 file runs inside XNNPACK (one partition from
the model's input to its output), or the op is named in the export report with
why; the ops XNNPACK refuses in int8 stay float. ONNX: QDQ with the signedness
ORT's x86 kernels take (uint8 activations, int8 weights), 7-bit weights
without VNNI.
"""

import keras
import numpy as np
import onnx
import pytest
from ai_edge_litert.interpreter import Interpreter
from onnx import numpy_helper

from kerakit.export import VerificationFailed, export
from kerakit.formats.onnx import int8_form


def _litert_graph(path):
    """The nodes LiteRT's default CPU interpreter holds after applying XNNPACK, and the model's I/O tensors."""
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    nodes = interpreter._get_ops_details()
    io = ({d["index"] for d in interpreter.get_input_details()}, {d["index"] for d in interpreter.get_output_details()})
    return nodes, io


def _delegates(nodes):
    return [n for n in nodes if n["op_name"] == "DELEGATE"]


@pytest.fixture(scope="module")
def hard_swish_export(tmp_path_factory):
    """A small MobileNetV3-style net (HARD_SWISH, softmax), exported as edge int8 and float32 TFLite."""
    tmp = tmp_path_factory.mktemp("hardswish")
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, activation="hard_swish")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="hard_swish")(x)
    x = keras.layers.Conv2D(16, 1, activation="hard_swish")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs)
    model.save(tmp / "net.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp / "sample.npz", image=rng.random((64, 16, 16, 3), dtype=np.float32))
    try:  # random weights and unlabelled rows: its int8 verdict may fail; the file is what these tests read
        report = export(tmp / "net.keras", formats=["tflite-int8", "tflite"], sample=tmp / "sample.npz",
                        out=tmp / "out", log=lambda m: None)
    except VerificationFailed as e:
        report = e.report
    return tmp / "out", report


def test_int8_hard_swish_net_runs_in_one_xnnpack_partition_from_input_to_output(hard_swish_export):
    out, report = hard_swish_export
    nodes, (inputs, outputs) = _litert_graph(out / "model_int8.tflite")
    [delegate] = _delegates(nodes)  # one partition: no LiteRT builtin kernel between XNNPACK's
    assert inputs <= set(delegate["inputs"]) and outputs <= set(delegate["outputs"]), delegate
    assert len(_delegates(_litert_graph(out / "model_fp32.tflite")[0])) == 1
    # What XNNPACK refuses in int8 is float32 in the file, and the report counts it.
    hard_swish = [n for n in nodes if n["op_name"] == "HARD_SWISH"]
    assert len(hard_swish) == 3 and all(t == np.float32 for n in hard_swish for t in n["result_types"])
    convs = [n for n in nodes if n["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    assert len(convs) == 4 and all(n["result_types"] == [np.int8] for n in convs)  # the MACs stay int8
    note = report.row("tflite-int8")["conversion"]
    assert note["float_ops"] == {"HARD_SWISH": 3, "SOFTMAX": 1}
    assert note["int8_only"]["not_delegated"] == {"HARD_SWISH": 3, "SOFTMAX": 1}
    assert note["not_delegated"] == {} and note["delegate_partitions"] == 1
    assert "kept in float32: 3 HARD_SWISH, 1 SOFTMAX (XNNPACK has no int8 kernel" in note["summary"]
    assert Interpreter(model_path=str(out / "model_int8.tflite")).get_input_details()[0]["dtype"] == np.int8


def test_digits_int8_tflite_is_cut_only_where_float32_is_and_names_those_ops(digits_export):
    out, report = digits_export
    nodes, (_, outputs) = _litert_graph(out / "model_int8.tflite")
    float_nodes, _ = _litert_graph(out / "model_fp32.tflite")
    # digits_cnn's Flatten of a dynamic batch computes a shape (SHAPE..RESHAPE) XNNPACK never takes, in float too.
    assert len(_delegates(nodes)) == len(_delegates(float_nodes)) == 2
    assert any(outputs <= set(d["outputs"]) for d in _delegates(nodes))  # the softmax runs inside XNNPACK
    [softmax] = [n for n in nodes if n["op_name"] == "SOFTMAX"]
    assert softmax["result_types"] == [np.float32]
    note = report.row("tflite-int8")["conversion"]
    shape_ops = {"PACK": 1, "RESHAPE": 1, "SHAPE": 1, "STRIDED_SLICE": 1}
    assert note["float_ops"] == {"SOFTMAX": 1}
    assert note["not_delegated"] == note["not_delegated_in_float32"] == shape_ops
    assert "4 op(s) outside (1 PACK, 1 RESHAPE, 1 SHAPE, 1 STRIDED_SLICE), as in the float32 model" in note["summary"]


def test_onnx_int8_is_qdq_with_the_signedness_ort_x86_kernels_take(digits_export):
    out, report = digits_export
    graph = onnx.load(out / "model_int8.onnx").graph
    initializers = {t.name: t for t in graph.initializer}
    form = int8_form(cpus="any")  # the edge target names no CPUs: the portable form, whatever this machine has
    activation = {"uint8": onnx.TensorProto.UINT8, "int8": onnx.TensorProto.INT8}[form["activations"]]
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert quantize and all(initializers[n.input[2]].data_type == activation for n in quantize)
    weights = [numpy_helper.to_array(initializers[n.input[0]]) for n in graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in initializers
               and initializers[n.input[0]].dims and len(initializers[n.input[0]].dims) > 1]
    weighted = [n for n in onnx.load(out / "model.onnx").graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    assert len(weights) == len(weighted) and all(w.dtype == np.int8 for w in weights)  # every Conv and Dense
    widest = max(int(np.abs(w.astype(np.int16)).max()) for w in weights)
    assert widest <= 64 if form["reduce_range"] else widest > 64  # 7-bit weights only where saturation threatens
    conversion = report.row("onnx-int8")["conversion"]
    assert conversion["form"] == form["form"] and conversion["cpus"] == "any"
    assert conversion["saturation"]["worst_pair_sum"] == 2 * 255 * 64 <= 32767  # safe on AVX2 without VNNI too
    assert conversion["verified_on"] in ("x86", "x86-vnni", "aarch64")


def test_an_int8_onnx_is_portable_unless_its_target_names_vnni_cpus(hard_swish_export, tmp_path, capsys,
                                                                    monkeypatch):
    """Default: 7-bit weights, right on every CPU wherever it was exported. `cpus = "x86-vnni"` in a target: full
    8-bit weights (they may saturate on x86 without VNNI, by the bound in the report), and a predictor loading that
    file on a CPU without VNNI says so in one line. A bad `cpus` names the allowed classes."""
    from kerakit import cpu
    from kerakit.export.targets import load_target
    from kerakit.formats import onnx as onnx_format
    from kerakit.runtime import load

    (tmp_path / "vnni.toml").write_text('[[artifacts]]\nformat = "onnx"\nquantization = "int8"\ncpus = "x86-vnni"\n'
                                        '[verify]\nmax_metric_drop = 1.0\n')
    model = hard_swish_export[0].parent / "net.keras"
    try:
        report = export(model, targets=[load_target(tmp_path / "vnni.toml")], sample=model.parent / "sample.npz",
                        out=tmp_path / "out", log=lambda m: None)
    except VerificationFailed as e:  # random weights, unlabelled rows: the file's form is what is read here
        report = e.report
    conversion = report.row("onnx-int8")["conversion"]
    assert (conversion["cpus"], conversion["reduce_range"]) == ("x86-vnni", False)
    assert conversion["saturation"] == {**conversion["saturation"], "worst_pair_sum": 64770, "safe_without_vnni": False}
    weights = [numpy_helper.to_array(t) for t in onnx.load(tmp_path / "out" / "model_int8.onnx").graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1]
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in weights) > 64

    load(tmp_path / "out" / "model_int8.onnx").close()
    assert "model_int8.onnx" not in capsys.readouterr().err or onnx_format.machine_class() == "x86"
    monkeypatch.setattr(cpu, "all_flags", lambda: {"avx2", "fma"})  # the same file on an AVX2 CPU without VNNI
    load(tmp_path / "out" / "model_int8.onnx").close()
    [line] = [l for l in capsys.readouterr().err.splitlines() if "model_int8.onnx" in l]
    assert "cpus=x86-vnni" in line and "64,770 > 32,767" in line and 'cpus="any"' in line

    (tmp_path / "bad.toml").write_text('[[artifacts]]\nformat = "onnx"\nquantization = "int8"\ncpus = "avx2"\n')
    with pytest.raises(Exception, match=r"Invalid cpus='avx2'\. Expected one of any, x86-vnni, arm, this"):
        load_target(tmp_path / "bad.toml")


def test_the_onnx_int8_form_follows_orts_guidance_per_cpu():
    assert int8_form("x86_64", {"avx2", "fma"}) == {**int8_form("x86_64", {"avx2"}), "reduce_range": True}
    assert int8_form("x86_64", {"avx2"})["activations"] == "uint8"
    vnni = int8_form("x86_64", {"avx2", "avx512f", "avx512_vnni"})
    assert (vnni["activations"], vnni["weights"], vnni["reduce_range"]) == ("uint8", "int8", False)
    arm = int8_form("aarch64", {"asimd", "asimddp"})
    assert (arm["activations"], arm["weights"], arm["reduce_range"]) == ("int8", "int8", False)
    # A target's cpus=any is the same 7-bit form on every exporting machine.
    assert int8_form("x86_64", {"avx512_vnni"}, cpus="any") == int8_form("x86_64", {"avx2"}, cpus="any")
    assert int8_form("x86_64", {"avx512_vnni"}, cpus="any")["saturation"]["safe_without_vnni"]


def test_kerakit_quantizes_an_int8_io_file_as_litert_would_and_answers_by_shape_in_any_order(hard_swish_export):
    """A file with int8 I/O (`--format tflite-int8`): kerakit's call is the tensor's own scale and zero point
    around set/invoke/get, and switching batch sizes back and forth never answers from another shape's
    interpreter."""
    from kerakit import runtime

    out, _ = hard_swish_export
    path = out / "model_int8.tflite"
    x = np.random.default_rng(5).random((7, 16, 16, 3), dtype=np.float32)
    interpreter = Interpreter(model_path=str(path))
    inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    (scale, zero), (out_scale, out_zero) = inp["quantization"], outp["quantization"]
    interpreter.resize_tensor_input(inp["index"], (1, 16, 16, 3))
    interpreter.allocate_tensors()
    want = []
    for row in x:
        interpreter.set_tensor(inp["index"], np.clip(np.rint(row[None] / scale + zero), -128, 127).astype(np.int8))
        interpreter.invoke()
        want.append((interpreter.get_tensor(outp["index"]).astype(np.float32) - out_zero) * out_scale)
    want = np.concatenate(want)
    with runtime.load(path) as p:
        assert p.quantized_io
        for rows in (slice(0, 1), slice(0, 3), slice(3, 4), slice(0, 7), slice(2, 3), slice(1, 5)):
            np.testing.assert_allclose(p.predict(x[rows])["probabilities"], want[rows], atol=1e-6)
