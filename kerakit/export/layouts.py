"""Directory layouts that model servers load as they are.

    tfserving/NAME/1/saved_model.pb        tensorflow_model_server --model_base_path=.../tfserving/NAME
    triton/NAME/config.pbtxt               tritonserver --model-repository=.../triton
    triton/NAME/1/model.onnx

The Triton config is generated from the ONNX model's real input/output names,
shapes and dtypes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kerakit import runs
from kerakit.runtime import Spec

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int8": "TYPE_INT8",
                "uint8": "TYPE_UINT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL"}
VERSION = "1"


def tfserving(savedmodel: Path, root: Path, name: str) -> Path:
    target = root / "tfserving" / name
    with runs.atomic_dir(target) as tmp:
        shutil.copytree(savedmodel, tmp / VERSION)
    return target


def triton_config(name: str, inputs: list[Spec], outputs: list[Spec], max_batch_size: int) -> str:
    """config.pbtxt for the ONNX Runtime backend; dims exclude the batch dimension."""

    def tensors(specs):
        return ",\n".join(
            f'  {{\n    name: "{s.name}"\n    data_type: {TRITON_TYPES[s.dtype]}\n'
            f'    dims: [ {", ".join(str(d if d is not None else -1) for d in s.shape[1:])} ]\n  }}'
            for s in specs
        )

    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
        f"input [\n{tensors(inputs)}\n]\noutput [\n{tensors(outputs)}\n]\n"
        "dynamic_batching { }\n"
    )


def triton(onnx_model: Path, root: Path, name: str, max_batch_size: int = 64) -> Path:
    from kerakit.runtime import load

    with load(onnx_model) as predictor:
        config = triton_config(name, predictor.inputs, predictor.outputs, max_batch_size)
    target = root / "triton" / name
    with runs.atomic_dir(target) as tmp:
        (tmp / VERSION).mkdir()
        shutil.copyfile(onnx_model, tmp / VERSION / "model.onnx")
        (tmp / "config.pbtxt").write_text(config)
    return target
