"""The one exception type for mistakes a user can fix.

The CLI prints a `KerakitError` as a single line and exits non-zero; any other
exception is a bug and keeps its traceback.
"""


class KerakitError(Exception):
    """A user-facing error: bad recipe, bad override, missing data, ...

        raise KerakitError("Unknown recipe 'foo'. Available: breast_cancer_mlp, diabetes_mlp, digits_cnn, ...")
    """
