"""What the quantizing formats share: the representative sample, and which inputs must stay float.

Full-integer quantization gives each input tensor one scale; raw tabular
features spanning 0.001..4000 lose the small ones entirely (the verifier
measured a 32-point accuracy drop on breast_cancer_mlp). So when a sample's
features span very different ranges, the quantizers keep the model's
input-normalization prefix (an in-model Normalization, a Rescaling) in float
and quantize the normalized values instead.
"""

from __future__ import annotations

import numpy as np

MAX_FEATURE_RANGE_RATIO = 64.0  # beyond this, one int8 scale leaves the smallest feature < 2 bits


def needs_float_inputs(sample: dict[str, np.ndarray] | None) -> bool:
    """True when some float input's features span very different ranges (raw tabular data).

    Per-feature max |value| over the sample's last axis; images (channels on
    one scale) say no, raw tabular columns (0.001..4000) say yes.

    >>> needs_float_inputs({"x": np.array([[0.001, 4000.0], [0.002, 3000.0]])})
    True
    >>> needs_float_inputs({"image": np.random.default_rng(0).random((4, 8, 8, 1))})
    False
    """
    for values in (sample or {}).values():
        if values.dtype.kind != "f" or values.ndim < 2:
            continue
        scale = np.abs(values.reshape(-1, values.shape[-1])).max(axis=0)
        scale = scale[scale > 0]
        if scale.size > 1 and scale.max() / scale.min() > MAX_FEATURE_RANGE_RATIO:
            return True
    return False


def float_prefix(ops, graph_inputs: set, constants: set, allowed: set) -> list:
    """Ops fed only by graph inputs, constants and earlier prefix ops.

    ops: (op_type, input ids, output ids, op) in graph order; returns the `op`s of the prefix.
    """
    known, prefix = set(graph_inputs) | set(constants), []
    for op_type, op_inputs, op_outputs, op in ops:
        if op_type in allowed and all(i in known for i in op_inputs) and any(i not in constants for i in op_inputs):
            prefix.append(op)
            known.update(op_outputs)
    return prefix


def rows(sample: dict[str, np.ndarray]):
    """The sample one example at a time, as calibrators read it: [{name: array[1, ...]}, ...]."""
    n = len(next(iter(sample.values())))
    return [{name: values[i : i + 1] for name, values in sample.items()} for i in range(n)]
