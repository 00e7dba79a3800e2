"""Muting the native (C++) log lines TensorFlow, the TFLite converter and LiteRT print."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings


@contextlib.contextmanager
def muted_stderr():
    """Send file descriptor 2 to /dev/null inside the block (Python exceptions still propagate).

    TF 2.21 logs through C++ absl, ignoring TF_CPP_MIN_LOG_LEVEL for start-up
    notices; the TFLite converter prints calibration lines from C++; the
    converter's own calibrator warns that tf.lite.Interpreter is deprecated.
    Set KERAKIT_DEBUG=1 to see all of it.
    """
    if os.environ.get("KERAKIT_DEBUG"):
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
