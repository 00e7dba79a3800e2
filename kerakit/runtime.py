"""One inference API over Keras, SavedModel, LiteRT and ONNX Runtime.

>>> with kerakit.runtime.load("runs/demo/export/edge/model_int8.tflite") as p:
...     p.inputs                 # [Spec(name='image', shape=(None, 8, 8, 1), dtype='float32')]
...     p.predict({"image": x})  # {'probabilities': array(...)}

The format comes from the path: `.keras`, `.tflite`, `.onnx`, or a SavedModel
directory. Inputs are validated by name, rank, shape and dtype; int8/uint8
TFLite inputs and outputs are (de)quantized with the tensor's own scale and
zero point, so every predictor takes and returns float arrays for float models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kerakit.errors import KerakitError

FORMATS = ("keras", "savedmodel", "tflite", "onnx")


@dataclass(frozen=True)
class Spec:
    """A named tensor as callers see it: `shape[0]` is None for a dynamic batch."""

    name: str
    shape: tuple
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def detect_format(path: "str | os.PathLike") -> str:
    path = Path(path)
    if not path.exists():
        raise KerakitError(f"Model path {str(path)!r} does not exist.")
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "savedmodel"
        raise KerakitError(f"Directory {str(path)!r} is not a SavedModel (no saved_model.pb).")
    suffix = {".keras": "keras", ".tflite": "tflite", ".onnx": "onnx"}.get(path.suffix)
    if suffix is None:
        raise KerakitError(
            f"Unsupported model file {str(path)!r}. Expected a .keras, .tflite or .onnx file, or a SavedModel directory."
        )
    return suffix


TUNED_FILE = "runtime.json"  # per-directory session settings found by `kerakit bench`


def load(path: "str | os.PathLike", **options: Any) -> "Predictor":
    """Open a model for inference; `options` go to the format's predictor (threads, ...).

    For ONNX, settings that `kerakit bench` found best for this file (saved in
    `runtime.json` beside it) are the defaults; explicit options win.
    """
    fmt = detect_format(path)
    cls = {"keras": KerasPredictor, "savedmodel": SavedModelPredictor,
           "tflite": LiteRTPredictor, "onnx": OnnxPredictor}[fmt]
    if fmt == "onnx":
        options = {**tuned_options(path), **options}
    return cls(Path(path), **options)


def predict_all(predictor: "Predictor", inputs: dict[str, np.ndarray], batch: int = 256) -> dict[str, np.ndarray]:
    """Run many inputs in batches of `batch`; outputs concatenated by name."""
    n = len(next(iter(inputs.values())))
    parts: dict[str, list] = {}
    for start in range(0, n, batch):
        out = predictor.predict({k: v[start : start + batch] for k, v in inputs.items()})
        for k, v in out.items():
            parts.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in parts.items()}


def first_output(predictor: "Predictor", inputs: dict[str, np.ndarray], batch: int = 256) -> np.ndarray:
    """Validate `inputs`, run them in batches, return the model's first output."""
    return next(iter(predict_all(predictor, predictor.validate(inputs), batch).values()))


def tuned_options(path: "str | os.PathLike") -> dict:
    sidecar = Path(path).parent / TUNED_FILE
    if not sidecar.exists():
        return {}
    import json

    try:
        return dict(json.loads(sidecar.read_text()).get(Path(path).name, {}).get("options", {}))
    except (ValueError, AttributeError):
        return {}


def save_tuned_options(path: "str | os.PathLike", options: dict, evidence: dict) -> Path:
    """Record the session options to use by default for the model at `path`."""
    from kerakit import runs

    sidecar = Path(path).parent / TUNED_FILE
    current = runs.read_json(sidecar) if sidecar.exists() else {}
    current[Path(path).name] = {"options": options, "evidence": evidence}
    return runs.write_json(sidecar, current)


class Predictor:
    """Base class: subclasses set `inputs`/`outputs` and implement `_run`."""

    format = ""
    inputs: list[Spec]
    outputs: list[Spec]

    def __init__(self, path: Path):
        self.path = path

    def predict(self, batch: "dict[str, np.ndarray] | np.ndarray") -> dict[str, np.ndarray]:
        """Run one batch. A bare array is accepted for a one-input model."""
        return self._run(self.validate(batch))

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The hot path: a batch already returned by `validate`, run with no checks."""
        return self._run(batch)

    def validate(self, batch) -> dict[str, np.ndarray]:
        if not isinstance(batch, dict):
            if len(self.inputs) != 1:
                raise KerakitError(
                    f"This model has {len(self.inputs)} inputs ({', '.join(s.name for s in self.inputs)}): pass a dict by name."
                )
            batch = {self.inputs[0].name: batch}
        expected = {s.name for s in self.inputs}
        missing, extra = expected - set(batch), set(batch) - expected
        if missing or extra:
            raise KerakitError(
                f"Input names {sorted(batch)} do not match the model's inputs {sorted(expected)}"
                + (f" (missing: {', '.join(sorted(missing))})" if missing else "")
                + (f" (unknown: {', '.join(sorted(extra))})" if extra else "") + "."
            )
        checked = {}
        for spec in self.inputs:
            value = np.asarray(batch[spec.name])
            if value.dtype.kind not in "biuf":
                raise KerakitError(f"Input {spec.name!r} has dtype {value.dtype}; expected numeric {spec.dtype}.")
            if value.ndim != len(spec.shape):
                raise KerakitError(
                    f"Input {spec.name!r} has rank {value.ndim} (shape {value.shape}); "
                    f"expected rank {len(spec.shape)} with shape {_shape_text(spec.shape)}."
                )
            for got, want in zip(value.shape, spec.shape):
                if want is not None and got != want:
                    raise KerakitError(
                        f"Input {spec.name!r} has shape {value.shape}; expected {_shape_text(spec.shape)}."
                    )
            if value.dtype.kind == "f" and np.dtype(spec.dtype).kind in "iu":
                raise KerakitError(f"Input {spec.name!r} has dtype {value.dtype}; expected {spec.dtype} (integers).")
            checked[spec.name] = value.astype(spec.dtype, copy=False)
        return checked

    def _run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


def _shape_text(shape) -> str:
    return "(" + ", ".join("batch" if d is None else str(d) for d in shape) + ")"


class KerasPredictor(Predictor):
    format = "keras"

    def __init__(self, path: Path, model=None):
        super().__init__(path)
        if model is None:
            from kerakit.evaluate import load_keras_model

            model = load_keras_model(path)
        self.model = model
        self.inputs = [Spec(t.name, tuple(t.shape), str(t.dtype)) for t in model.inputs]
        self.outputs = [Spec(_layer_name(t, i, model), tuple(t.shape), str(t.dtype)) for i, t in enumerate(model.outputs)]

    def _run(self, batch):
        x = batch[self.inputs[0].name] if len(self.inputs) == 1 else batch
        out = self.model(x, training=False)
        out = out if isinstance(out, (list, tuple)) else [out]
        return {spec.name: np.asarray(o) for spec, o in zip(self.outputs, out)}


def _layer_name(tensor, index: int, model) -> str:
    history = getattr(tensor, "_keras_history", None)
    return history.operation.name if history is not None else model.output_names[index]


class SavedModelPredictor(Predictor):
    format = "savedmodel"
    SIGNATURE = "serving_default"

    def __init__(self, path: Path):
        super().__init__(path)
        import tensorflow as tf

        try:
            self._loaded = tf.saved_model.load(str(path))
        except Exception as e:
            raise KerakitError(f"Cannot load SavedModel {str(path)!r}: {type(e).__name__}: {str(e)[:200]}") from e
        if self.SIGNATURE not in self._loaded.signatures:
            raise KerakitError(f"SavedModel {str(path)!r} has no {self.SIGNATURE!r} signature.")
        self._fn = self._loaded.signatures[self.SIGNATURE]
        _, kwargs = self._fn.structured_input_signature
        self.inputs = [Spec(k, tuple(v.shape), v.dtype.name) for k, v in sorted(kwargs.items())]
        self.outputs = [Spec(k, tuple(v.shape), v.dtype.name) for k, v in sorted(self._fn.structured_outputs.items())]
        self._tf = tf

    def _run(self, batch):
        out = self._fn(**{k: self._tf.constant(v) for k, v in batch.items()})
        return {k: v.numpy() for k, v in out.items()}


class LiteRTPredictor(Predictor):
    """A `.tflite` file on LiteRT (`ai_edge_litert`), through its serving signature."""

    format = "tflite"

    def __init__(self, path: Path, threads: int | None = None):
        super().__init__(path)
        from ai_edge_litert.interpreter import Interpreter

        from kerakit.quiet import muted_stderr

        try:
            with muted_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
                self._interpreter = Interpreter(model_path=str(path), num_threads=threads)
        except (ValueError, RuntimeError) as e:
            raise KerakitError(f"Cannot load TFLite model {str(path)!r}: {str(e)[:200]} (truncated or corrupt?).") from e
        signatures = self._interpreter.get_signature_list()
        if signatures:
            key = "serving_default" if "serving_default" in signatures else next(iter(signatures))
            self._runner = self._interpreter.get_signature_runner(key)
            in_details = self._runner.get_input_details()
            out_details = self._runner.get_output_details()
        else:  # a model converted without signatures: use tensor order and names
            self._runner = None
            self._interpreter.allocate_tensors()
            in_details = {d["name"]: d for d in self._interpreter.get_input_details()}
            out_details = {d["name"]: d for d in self._interpreter.get_output_details()}
        self._in, self._out = in_details, out_details
        # Callers see float tensors where the file quantized a float model's I/O.
        self.inputs = [Spec(k, (None, *map(int, d["shape"][1:])), _float_view(d)) for k, d in sorted(in_details.items())]
        self.outputs = [Spec(k, (None, *map(int, d["shape"][1:])), _float_view(d)) for k, d in sorted(out_details.items())]
        with muted_stderr():  # the first invoke creates the XNNPACK delegate and says so on stderr
            self._run({s.name: np.zeros((1, *s.shape[1:]), s.dtype) for s in self.inputs})

    @property
    def quantized_io(self) -> bool:
        return any(d["dtype"] in (np.int8, np.uint8) and d["quantization"][0] for d in self._in.values())

    def _run(self, batch):
        feeds = {k: _quantize(v, self._in[k]) for k, v in batch.items()}
        if self._runner is not None:
            out = self._runner(**feeds)
        else:
            out = self._invoke_by_index(feeds)
        return {k: _dequantize(v, self._out[k]) for k, v in out.items()}

    def _invoke_by_index(self, feeds):
        it = self._interpreter
        for name, value in feeds.items():
            it.resize_tensor_input(self._in[name]["index"], value.shape)
        it.allocate_tensors()
        for name, value in feeds.items():
            it.set_tensor(self._in[name]["index"], value)
        it.invoke()
        return {name: it.get_tensor(d["index"]) for name, d in self._out.items()}


def _float_view(detail) -> str:
    scale = detail["quantization"][0]
    return "float32" if detail["dtype"] in (np.int8, np.uint8) and scale else np.dtype(detail["dtype"]).name


def _quantize(value: np.ndarray, detail) -> np.ndarray:
    dtype = detail["dtype"]
    scale, zero_point = detail["quantization"]
    if dtype in (np.int8, np.uint8) and scale and value.dtype.kind == "f":
        info = np.iinfo(dtype)
        return np.clip(np.round(value / scale + zero_point), info.min, info.max).astype(dtype)
    return value.astype(dtype, copy=False)


def _dequantize(value: np.ndarray, detail) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if detail["dtype"] in (np.int8, np.uint8) and scale:
        return (value.astype(np.float32) - zero_point) * scale
    return value


class OnnxPredictor(Predictor):
    """An `.onnx` file on ONNX Runtime; session options are keyword arguments.

    threads / inter_op_threads: intra- and inter-op thread counts (0 = ORT's choice);
    optimization: "disable" | "basic" | "extended" | "all"; execution: "sequential" | "parallel";
    providers: ORT execution providers (default CPU).
    """

    format = "onnx"
    OPTIMIZATION = ("disable", "basic", "extended", "all")

    def __init__(self, path: Path, threads: int = 0, inter_op_threads: int = 0, optimization: str = "all",
                 execution: str = "sequential", providers: list[str] | None = None):
        super().__init__(path)
        import onnxruntime as ort

        if optimization not in self.OPTIMIZATION:
            raise KerakitError(f"Invalid optimization={optimization!r}. Expected one of {', '.join(self.OPTIMIZATION)}.")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = inter_op_threads
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if execution == "parallel"
                                  else ort.ExecutionMode.ORT_SEQUENTIAL)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for bad files
            raise KerakitError(f"Cannot load ONNX model {str(path)!r}: {str(e)[:200]} (truncated or corrupt?).") from e
        self.inputs = [Spec(i.name, _onnx_shape(i.shape), _ONNX_TYPES.get(i.type, i.type)) for i in self.session.get_inputs()]
        self.outputs = [Spec(o.name, _onnx_shape(o.shape), _ONNX_TYPES.get(o.type, o.type)) for o in self.session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]

    def _run(self, batch):
        return dict(zip(self._output_names, self.session.run(self._output_names, batch)))


_ONNX_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int32)": "int32",
               "tensor(int64)": "int64", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
               "tensor(float16)": "float16", "tensor(bool)": "bool"}


def _onnx_shape(shape) -> tuple:
    return tuple(d if isinstance(d, int) else None for d in shape)
