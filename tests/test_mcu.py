"""The mcu target: int8 TFLite run in TensorFlow Lite Micro itself, its arena and flash against a budget, firmware files.

Artifacts are checked with what kerakit did not write: TFLM's own Python
interpreter (`tflite_micro`), TensorFlow's flatbuffer reader, and g++.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import run_cli
from kerakit import runtime
from kerakit.errors import KerakitError
from kerakit.export import VerificationFailed, export
from kerakit.export.targets import load_target, parse_target
from kerakit.formats import tflite_micro

BUNDLE_FILES = {"model.tflite", "model_data.h", "model_data.cc", "model_settings.h", "README.md"}
# digits_cnn's defaults: conv 3x3x1->32 and 3x3x32->64 on 8x8, dense 1024->128 and 128->10.
DIGITS_CNN_MACS = 8 * 8 * 32 * 9 + 8 * 8 * 64 * 9 * 32 + 1024 * 128 + 128 * 10
CXX = os.environ.get("CXX") or shutil.which("g++")
needs_cxx = pytest.mark.skipif(not CXX, reason="no C++ compiler (g++) on this machine: `make test` installs Debian's g++")


def test_the_mcu_target_ships_with_its_budget():
    target = load_target("mcu")
    assert [a.name for a in target.artifacts] == ["tflite-micro-int8"]
    assert target.artifacts[0].filename == "model_int8.tflm"
    assert (target.budget.ram_kb, target.budget.flash_kb) == (256, 1024)
    assert target.verify.samples == 256  # TFLM runs one row at a time


@pytest.mark.parametrize("raw, message", [
    ({"artifacts": [{"format": "onnx"}], "budget": {"ram_kb": 256}},
     r"a \[budget\] needs formats that measure their RAM and flash \(tflite-micro\); onnx do\(es\) not"),
    ({"artifacts": [{"format": "tflite-micro", "quantization": "int8"}], "budget": {"ram_kb": -1}},
     r"invalid ram_kb=-1. Expected a number of KB > 0"),
    ({"artifacts": [{"format": "tflite-micro", "quantization": "int8"}], "budget": {"sram_kb": 1}},
     r"unknown key\(s\) sram_kb. Allowed: flash_kb, ram_kb"),
    ({"artifacts": [{"format": "tflite-micro", "quantization": "int8", "io": "float32"}]},
     r"Invalid io='float32'. Expected one of int8, uint8"),
])
def test_a_bad_budget_is_refused_naming_what_is_allowed(raw, message):
    with pytest.raises(KerakitError, match=message):
        parse_target(raw, "t")


@pytest.mark.parametrize("op, method", [
    ("CONV_2D", "AddConv2D"), ("DEPTHWISE_CONV_2D", "AddDepthwiseConv2D"), ("FULLY_CONNECTED", "AddFullyConnected"),
    ("MAX_POOL_2D", "AddMaxPool2D"), ("RELU6", "AddRelu6"), ("HARD_SWISH", "AddHardSwish"),
    ("BATCH_TO_SPACE_ND", "AddBatchToSpaceNd"), ("SELECT_V2", "AddSelectV2"), ("PADV2", "AddPadV2"),
    ("L2_POOL_2D", "AddL2Pool2D"), ("UNIDIRECTIONAL_SEQUENCE_LSTM", "AddUnidirectionalSequenceLSTM"),
])
def test_each_op_maps_to_its_micro_mutable_op_resolver_call(op, method):
    """The names in tflite-micro's micro_mutable_op_resolver.h."""
    assert tflite_micro.resolver_method(op) == method


# --------------------------------------------------------------------------- digits_cnn on the mcu target

@pytest.fixture(scope="module")
def mcu_export(digits_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("mcu")
    report = export(digits_run.path, targets=["mcu"], out=out, log=lambda m: None)
    return out / "model_int8.tflm", report


def _settings(bundle: Path) -> dict[str, str]:
    return dict(re.findall(r"constexpr \S+(?: \S+)? (k\w+)(?:\[\w*\])? = (.+);", (bundle / "model_settings.h").read_text()))


def test_digits_cnn_is_verified_in_tflite_micro_and_fits_the_budget(mcu_export, digits_run):
    bundle, report = mcu_export
    row = report.row("tflite-micro-int8")
    assert row["verdict"] == "verified", row["reasons"]
    assert {p.name for p in bundle.iterdir()} == BUNDLE_FILES
    assert abs(row["metric_change"]) <= 0.01 and row["numeric_examples"] == 256
    footprint = row["footprint"]
    assert footprint["flash_bytes"] == (bundle / "model.tflite").stat().st_size <= 1024 * 1024
    assert footprint["ram_bytes"] == int(_settings(bundle)["kTensorArenaSize"]) <= 256 * 1024
    assert footprint["macs"] == DIGITS_CNN_MACS
    assert row["budget"] == {"ram_kb": 256, "flash_kb": 1024}


def test_the_arena_is_the_smallest_tflite_micro_runs_with(mcu_export):
    """TFLM's own interpreter, on the file: the firmware's arena works, 16 bytes less than the minimum does not."""
    from tflite_micro import runtime as tflm

    bundle, report = mcu_export
    minimum = report.row("tflite-micro-int8")["footprint"]["details"]["arena_minimum_bytes"]
    model = str(bundle / "model.tflite")
    interpreter = tflm.Interpreter.from_file(model, arena_size=int(_settings(bundle)["kTensorArenaSize"]))
    tflm.Interpreter.from_file(model, arena_size=minimum)
    with pytest.raises(RuntimeError):
        tflm.Interpreter.from_file(model, arena_size=minimum - 16)
    details = interpreter.get_input_details(0)
    assert details["dtype"] == np.int8 and list(details["shape"]) == [1, 8, 8, 1]  # int8 I/O, a fixed batch of 1


def test_the_predictor_runs_rows_through_tflite_micro_one_at_a_time(mcu_export):
    from tflite_micro import runtime as tflm

    bundle, _ = mcu_export
    x = np.random.default_rng(0).random((5, 8, 8, 1), dtype=np.float32)
    with runtime.load(bundle) as predictor:
        assert predictor.format == "tflite-micro"
        assert [(s.name, s.shape, s.dtype) for s in predictor.inputs] == [("image", (None, 8, 8, 1), "float32")]
        got = predictor.predict({"image": x})["probabilities"]
    interpreter = tflm.Interpreter.from_file(str(bundle / "model.tflite"), arena_size=1 << 20)
    scale, zero = (interpreter.get_input_details(0)["quantization_parameters"][k][0] for k in ("scales", "zero_points"))
    out_q = interpreter.get_output_details(0)["quantization_parameters"]
    for i in range(len(x)):
        interpreter.set_input(np.clip(np.round(x[i : i + 1] / scale + zero), -128, 127).astype(np.int8), 0)
        interpreter.invoke()
        expected = (interpreter.get_output(0).astype(np.float32) - out_q["zero_points"][0]) * out_q["scales"][0]
        np.testing.assert_allclose(got[i], expected[0], atol=1e-6)


def test_the_readme_registers_exactly_the_models_ops(mcu_export):
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    bundle, _ = mcu_export
    model = flatbuffer_utils.read_model(str(bundle / "model.tflite"))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = {names[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in model.operatorCodes}
    readme = (bundle / "README.md").read_text()
    calls = re.findall(r"resolver\.(Add\w+)\(\);", readme)
    assert sorted(calls) == sorted(tflite_micro.resolver_method(op) for op in ops)
    assert int(_settings(bundle)["kOpCount"]) == len(ops)
    assert "linking needs the TensorFlow Lite Micro" in readme


# A stand-in for the TFLM headers the README's code includes: declarations only, with the names and
# signatures of tflite-micro's micro_interpreter.h, micro_mutable_op_resolver.h and schema_generated.h.
TFLM_STUB = """#include <cstddef>
#include <cstdint>
typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
typedef union { int32_t* i32; int16_t* i16; int8_t* int8; uint8_t* uint8; float* f; } TfLitePtrUnion;
typedef struct { TfLitePtrUnion data; } TfLiteTensor;
namespace tflite {
struct Model;
const Model* GetModel(const void* buf);
class MicroOpResolver {};
template <unsigned int tOpCount>
class MicroMutableOpResolver : public MicroOpResolver {
 public:
  TfLiteStatus AddConv2D(); TfLiteStatus AddDepthwiseConv2D(); TfLiteStatus AddFullyConnected();
  TfLiteStatus AddMaxPool2D(); TfLiteStatus AddAveragePool2D(); TfLiteStatus AddMean(); TfLiteStatus AddReshape();
  TfLiteStatus AddSoftmax(); TfLiteStatus AddQuantize(); TfLiteStatus AddDequantize();
};
class MicroInterpreter {
 public:
  MicroInterpreter(const Model* model, const MicroOpResolver& op_resolver, uint8_t* tensor_arena, size_t arena_size);
  TfLiteStatus AllocateTensors();
  TfLiteStatus Invoke();
  TfLiteTensor* input(size_t index);
  TfLiteTensor* output(size_t index);
};
}  // namespace tflite
"""

PRINT_SETTINGS = r"""#include <cstdint>
#include <cstdio>
#include "model_data.h"
#include "model_settings.h"
int main(int argc, char** argv) {
  std::FILE* f = std::fopen(argv[1], "wb");
  std::fwrite(g_model, 1, g_model_len, f);
  std::fclose(f);
  std::printf("%d %.9g %d %d %d %s\n", kTensorArenaSize, kImageScale, kImageZeroPoint, kImageElements,
              kNumClasses, kClassLabels[kNumClasses - 1]);
  return reinterpret_cast<std::uintptr_t>(g_model) % 16;
}
"""


def _compile(*args: str, cwd: Path) -> None:
    result = subprocess.run([CXX, "-std=c++17", "-Wall", "-Werror", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


@needs_cxx
def test_the_firmware_files_compile_and_hold_the_models_bytes(mcu_export, tmp_path):
    """g++ builds model_data.cc with a program that uses model_settings.h; what it prints is what TFLM reads."""
    from tflite_micro import runtime as tflm

    bundle, _ = mcu_export
    (tmp_path / "main.cc").write_text(PRINT_SETTINGS)
    _compile(f"-I{bundle}", "main.cc", str(bundle / "model_data.cc"), "-o", "print_settings", cwd=tmp_path)
    printed = subprocess.run(["./print_settings", "model.bin"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert printed.returncode == 0, "g_model is not 16-byte aligned"
    assert (tmp_path / "model.bin").read_bytes() == (bundle / "model.tflite").read_bytes()
    arena, scale, zero, elements, classes, last_label = printed.stdout.split()
    details = tflm.Interpreter.from_file(str(bundle / "model.tflite"), arena_size=int(arena)).get_input_details(0)
    assert float(scale) == pytest.approx(float(details["quantization_parameters"]["scales"][0]), rel=1e-6)
    assert int(zero) == int(details["quantization_parameters"]["zero_points"][0])
    assert (int(elements), int(classes), last_label) == (64, 10, "9")


@needs_cxx
def test_the_readme_code_compiles_against_the_tflm_api(mcu_export, tmp_path):
    bundle, _ = mcu_export
    code = re.search(r"```cpp\n(.*?)```", (bundle / "README.md").read_text(), re.S).group(1)
    for header in ("tensorflow/lite/micro/micro_interpreter.h", "tensorflow/lite/micro/micro_mutable_op_resolver.h",
                   "tensorflow/lite/schema/schema_generated.h"):
        (tmp_path / header).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / header).write_text("#pragma once\n" + TFLM_STUB)
    (tmp_path / "readme.cc").write_text(code)
    _compile("-fsyntax-only", f"-I{tmp_path}", f"-I{bundle}", "readme.cc", cwd=tmp_path)


def test_bench_labels_tflite_micro_timing_as_host_timing(mcu_export, tmp_path):
    from kerakit.bench import bench

    bundle, _ = mcu_export
    result = bench([bundle], batches=[1, 2], threads=[1, 2], runs_=5, warmup=1, sweep=False, out=tmp_path,
                   log=lambda m: None)
    assert [(r["batch"], r["threads"]) for r in result["rows"]] == [(1, "1"), (2, "1")]
    assert "host timing of TFLite Micro's reference kernels" in result["notes"]["model_int8.tflm"]
    assert "not device timing" in result["rows"][0]["note"]


# --------------------------------------------------------------------------- failures: one clear line each

def test_an_op_tflite_micro_lacks_fails_naming_the_op_its_layer_and_what_to_use(tmp_path):
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(16, activation="gelu", name="dense_gelu")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    keras.Model(inputs, outputs).save(tmp_path / "gelu.keras")
    with pytest.raises(VerificationFailed) as failed:
        export(tmp_path / "gelu.keras", targets=["mcu"], recipe="digits_cnn", log=lambda m: None)
    report = failed.value.report
    assert report.failed == ["tflite-micro-int8"]
    assert report.row("tflite-micro-int8")["reasons"] == [
        "tflite-micro-int8 conversion failed: TFLite Micro has no kernel for GELU (Keras layer dense_gelu): "
        "use activation='relu' or 'hard_silu'"]
    assert not (tmp_path / "gelu_export" / "model_int8.tflm").exists()


@pytest.mark.slow
def test_a_model_over_the_budget_fails_the_export_with_its_figures(digits_run, tmp_path):
    """digits_cnn needs 10 KB of arena and 158 KB of flash: a 4 KB / 64 KB device cannot hold it."""
    target = tmp_path / "tiny_mcu.toml"
    target.write_text((Path(__file__).parent.parent / "export" / "mcu.toml").read_text()
                      .replace("ram_kb = 256", "ram_kb = 4").replace("flash_kb = 1024", "flash_kb = 64"))
    result = run_cli("export", digits_run.path, "--target", target, "--out", tmp_path / "out")
    assert result.returncode == 1, result.stderr
    assert "error: 1 of 1 artifacts failed verification (tflite-micro-int8)" in result.stderr
    row = json.loads((tmp_path / "out" / "export_report.json").read_text())["artifacts"][0]
    assert len(row["reasons"]) == 1
    assert re.fullmatch(r"over budget: needs 10\.0 KB of tensor arena \(the target allows 4 KB\) and 15\d\.\d KB "
                        r"of flash \(the target allows 64 KB\); use fewer filters or units, or a target with a larger "
                        r"budget", row["reasons"][0]), row["reasons"][0]
    assert row["footprint"]["macs"] == DIGITS_CNN_MACS  # the figures are kept
    assert "tflite-micro-int8: failed (over budget: needs 10.0 KB of tensor arena" in result.stdout


# --------------------------------------------------------------------------- the recipe made for it

@pytest.mark.slow
def test_build_digits_mcu_for_the_mcu_target_shows_the_whole_flow(tmp_path):
    out = tmp_path / "run"
    result = run_cli("build", "digits_mcu", "epochs=10", "--target", "mcu", "--out", out, "--bench-runs", "10",
                     timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    row = json.loads((out / "export" / "export_report.json").read_text())["artifacts"][0]
    assert row["verdict"] == "verified" and row["metric"] >= 0.9
    # conv 3x3x1->32 at 8x8; separable 32->64 at 8x8; pool; separable 64->64 and 64->128 at 4x4; dense 128->10
    assert row["footprint"]["macs"] == (8 * 8 * 32 * 9 + 8 * 8 * 32 * 9 + 8 * 8 * 32 * 64 + 4 * 4 * 64 * 9
                                        + 4 * 4 * 64 * 64 + 4 * 4 * 64 * 9 + 4 * 4 * 64 * 128 + 128 * 10)
    assert {p.name for p in (out / "export" / "model_int8.tflm").iterdir()} == BUNDLE_FILES
    table = result.stdout[result.stdout.index("deployment"):]
    assert re.search(r"tflite-micro-int8 .* verified", table) and "RAM KB" in table and "flash KB" in table
    card = (out / "report" / "model_card.md").read_text()
    assert "| tflite-micro-int8 |" in card and "RAM KB" in card
    assert "host timing of TFLite Micro's reference kernels" in card
    assert "the target's budget: 256 KB RAM, 1024 KB flash" in card


def test_a_model_whose_too_small_arenas_abort_tflite_micro_still_exports(tmp_path):
    """breast_cancer_mlp's first op (SUB, from its Normalization) fails to prepare in a few hundred bytes of arena,
    and TFLM's error path then aborts the process ("All temp buffers must be freed before calling
    ResetTempAllocations()"): the arena search took the whole export down with it, without a word. Each size is
    now tried in a child process: the export goes on, verified, and its arena is the smallest TFLM runs with
    (one 16 bytes smaller fails, asked of TFLM in a process of its own, since it may abort)."""
    import subprocess
    import sys

    import kerakit

    run = kerakit.train("breast_cancer_mlp", tmp_path / "run", epochs=5, verbose=0, log=lambda m: None)
    report = export(run.path, targets=["mcu"], log=lambda m: None)
    row = report.row("tflite-micro-int8")
    assert row["verdict"] == "verified", row["reasons"]
    minimum = row["footprint"]["details"]["arena_minimum_bytes"]
    model = str(run.export_dir / "model_int8.tflm" / "model.tflite")
    probe = "import sys; from tflite_micro import runtime as t; t.Interpreter.from_file(sys.argv[1], arena_size=int(sys.argv[2]))"
    runs = [subprocess.run([sys.executable, "-c", probe, model, str(size)], capture_output=True).returncode
            for size in (minimum, minimum - 16)]
    assert runs[0] == 0 and runs[1] != 0, runs
