"""The one exception type for mistakes a user can fix.

The CLI prints a `KerakitError` as a single line and exits non-zero; any other
exception is a bug and keeps its traceback.
"""

import os
import sys


class KerakitError(Exception):
    """A user-facing error: bad recipe, bad override, missing data, ...

        raise KerakitError("Unknown recipe 'foo'. Available: breast_cancer_mlp, diabetes_mlp, digits_cnn, ...")
    """


class VerificationFailed(KerakitError):
    """An export finished, but some artifact failed verification; `report` is its ExportReport, already written.

        try:
            export("runs/demo", targets=["edge"])
        except VerificationFailed as e:
            e.report.failed, e.report.path   # ['onnx-int8'], runs/demo/export/export_report.json
    """

    def __init__(self, message: str, report):
        super().__init__(message)
        self.report = report


def utf8_name(path: "str | os.PathLike") -> bool:
    """Whether a native library (ONNX Runtime, TensorFlow: UTF-8 C++ strings) can be handed `path`'s name.
    False for a non-ASCII name under an ASCII-only Python (LANG=C, PYTHONUTF8=0): it holds surrogates."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def native_path(path: "str | os.PathLike", runtime: str) -> str:
    """`path` as the str a native runtime opens, or one line saying what to set (see `utf8_name`).

        tf.saved_model.load(native_path(path, "TensorFlow"))
    """
    if utf8_name(path):
        return os.fspath(path)
    shown = os.fsencode(path).decode("ascii", "backslashreplace")
    encoding = sys.getfilesystemencoding()
    if encoding.lower().replace("-", "") == "utf8":
        raise KerakitError(f"{runtime} cannot open {shown}: its name is not valid UTF-8. Rename it, or pass "
                           "a path without those bytes.")
    raise KerakitError(f"{runtime} cannot open {shown}: this Python reads file names as {encoding} (LANG/LC_ALL=C "
                       "without UTF-8 mode), so the non-ASCII name cannot be passed on. Set PYTHONUTF8=1 (or "
                       "LC_ALL=C.UTF-8) and rerun, or use an ASCII path.")
