"""Dtype names as each serving protocol spells them, keyed by (or mapping to) numpy's names.

>>> V2_TYPES["FP32"], NUMPY_TO_V2["float32"], TRITON_TYPES["float32"], TF_TYPES["float32"]
('float32', 'FP32', 'TYPE_FP32', 'DT_FLOAT')
>>> V2_TYPES["BYTES"], TRITON_TYPES["object"], TF_TYPES["object"]
('object', 'TYPE_STRING', 'DT_STRING')

Strings (KServe v2 BYTES) are numpy object arrays, as ONNX Runtime takes and
returns them: kerakit's dtype name for them is "object".

A leaf module (no imports): the export layouts, the server and its protocols share these tables.
"""

from __future__ import annotations

# KServe v2 / Open Inference Protocol datatypes -> numpy dtype names: every datatype of the protocol.
V2_TYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
            "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
            "FP16": "float16", "FP32": "float32", "FP64": "float64", "BYTES": "object"}
NUMPY_TO_V2 = {v: k for k, v in V2_TYPES.items()}

# numpy dtype names -> Triton model configuration `data_type` (config.pbtxt and GET .../config).
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "bool": "TYPE_BOOL",
                **{name: "TYPE_" + name.upper() for name in
                   ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")},
                "object": "TYPE_STRING"}

# numpy dtype names -> TensorFlow `DT_*` enum names (TF Serving's model metadata).
TF_TYPES = {"float32": "DT_FLOAT", "float64": "DT_DOUBLE", "float16": "DT_HALF", "bool": "DT_BOOL",
            **{name: "DT_" + name.upper() for name in
               ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")},
            "object": "DT_STRING"}


def tf_name(dtype: str) -> str:
    """TensorFlow's (and Keras') name of a kerakit dtype name: "string" for strings ("object"), else the same."""
    return "string" if dtype == "object" else dtype


def from_tf_name(name: str) -> str:
    """kerakit's dtype name of a TensorFlow or Keras one: "object" for "string" (text in and out), else the same."""
    return "object" if name == "string" else name


def tf_type(dtype: str) -> str:
    """TF's `DT_*` name of a numpy dtype name; names not in TF_TYPES are spelled DT_<NAME>."""
    return TF_TYPES.get(dtype, "DT_" + dtype.upper())
