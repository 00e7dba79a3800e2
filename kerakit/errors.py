"""The one exception type for mistakes a user can fix.

The CLI prints a `KerakitError` as a single line and exits non-zero; any other
exception is a bug and keeps its traceback.
"""


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
