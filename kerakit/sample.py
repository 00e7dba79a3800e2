"""A `--sample FILE.npz`: a model's inputs by name, and labels by output.

    np.savez("data.npz", image=x, label=y)                      # y labels the metric output
    np.savez("data.npz", a=xa, b=xb, **{"label:probs": y1, "label:score": y2})   # one per output

`label` belongs to the first Keras output; `label:NAME` to output NAME. Integer labels
mean classification, float labels regression.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from kerakit.errors import KerakitError

LABEL = "label"


@dataclass
class Sample:
    inputs: dict[str, np.ndarray]
    labels: dict[str | None, np.ndarray]  # by output name; None: the first Keras output's

    @property
    def size(self) -> int:
        return len(next(iter(self.inputs.values())))

    def labels_by_output(self, first_output: str, outputs: list[str]) -> dict[str, np.ndarray]:
        """Labels by output name, `label` given to `first_output`; an unknown `label:NAME` is an error."""
        unknown = sorted(k for k in self.labels if k is not None and k not in outputs)
        if unknown:
            raise KerakitError(f"--sample has labels for {', '.join(f'label:{k}' for k in unknown)}; "
                               f"the model's outputs are {', '.join(outputs)}.")
        found = {k: v for k, v in self.labels.items() if k is not None}
        if None in self.labels:
            if first_output in found:
                raise KerakitError(f"--sample has both 'label' and 'label:{first_output}'; keep one.")
            found[first_output] = self.labels[None]
        return found


def task_of(labels: np.ndarray) -> str:
    return "classification" if labels.dtype.kind in "iu" else "regression"


def read_sample(path: "str | os.PathLike") -> Sample:
    """The .npz at `path`, split into inputs and labels (one clear error for a file that is none)."""
    try:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise KerakitError(f"Cannot read --sample {str(path)!r}: {e}. Expected an .npz of arrays by input name.") from None
    labels = {(None if k == LABEL else k.removeprefix(LABEL + ":")): arrays.pop(k)
              for k in list(arrays) if k == LABEL or k.startswith(LABEL + ":")}
    if not arrays:
        raise KerakitError(f"--sample {str(path)!r} holds no inputs, only {', '.join(sorted(labels)) or 'nothing'}.")
    sizes = {len(v) for v in [*arrays.values(), *labels.values()]}
    if len(sizes) > 1:
        raise KerakitError(f"--sample {str(path)!r} has arrays of different lengths {sorted(sizes)}; "
                           "every input and label needs one row per example.")
    return Sample(arrays, labels)
