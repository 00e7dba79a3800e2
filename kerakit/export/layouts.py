"""Directory layouts that model servers load as they are.

    tfserving/NAME/1/saved_model.pb        tensorflow_model_server --model_base_path=.../tfserving/NAME
    triton/NAME/config.pbtxt               tritonserver --model-repository=.../triton
    triton/NAME/1/model.onnx

Which format feeds a layout is the format's own fact (`Format.layout`). The
Triton config is generated from the model's real input/output names, shapes
and dtypes, with the format's Triton platform.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kerakit import files, formats
from kerakit.dtypes import TRITON_TYPES
from kerakit.formats.base import Spec

VERSION = "1"
TRITON_MAX_BATCH = 64


def write(layout: str, artifact: Path, fmt: formats.Format, root: Path, name: str) -> Path:
    """Write `layout` for the verified `artifact` (of format `fmt`, the one `formats.for_layout(layout)`
    names) under `root`; returns the model's directory."""
    writers = {"tfserving": lambda: tfserving(artifact, root, name),
               "triton": lambda: triton(artifact, fmt, root, name)}
    return writers[layout]()


def tfserving(savedmodel: Path, root: Path, name: str) -> Path:
    target = root / "tfserving" / name
    with files.atomic_dir(target) as tmp:
        shutil.copytree(savedmodel, tmp / VERSION)
    return target


def triton_config(name: str, platform: str, inputs: list[Spec], outputs: list[Spec], max_batch_size: int) -> str:
    """config.pbtxt for a Triton backend; dims exclude the batch dimension."""

    def tensors(specs):
        return ",\n".join(
            f'  {{\n    name: "{s.name}"\n    data_type: {TRITON_TYPES[s.dtype]}\n'
            f'    dims: [ {", ".join(str(d if d is not None else -1) for d in s.shape[1:])} ]\n  }}'
            for s in specs
        )

    return (
        f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch_size}\n'
        f"input [\n{tensors(inputs)}\n]\noutput [\n{tensors(outputs)}\n]\n"
        "dynamic_batching { }\n"
    )


def triton(artifact: Path, fmt: formats.Format, root: Path, name: str, max_batch_size: int = TRITON_MAX_BATCH) -> Path:
    with fmt.load(artifact) as predictor:
        config = triton_config(name, fmt.triton_platform, predictor.inputs, predictor.outputs, max_batch_size)
    target = root / "triton" / name
    with files.atomic_dir(target) as tmp:
        (tmp / VERSION).mkdir()
        shutil.copyfile(artifact, tmp / VERSION / fmt.repository_files[0])
        (tmp / "config.pbtxt").write_text(config)
    return target
