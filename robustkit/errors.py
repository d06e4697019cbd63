"""Exception types with their meaning for the command line.

`InputError` (and subclasses) are the user's fault: the CLI prints the message and exits 1.
Anything else escaping a command is an internal error: exit 2.
"""

from __future__ import annotations


class RobustkitError(Exception):
    """Base class of robustkit's own errors."""


class InputError(RobustkitError):
    """Bad input from the user (file, option, data). CLI exit code 1."""


class UnsupportedOperatorError(InputError):
    """An ONNX node robustkit cannot represent; names the op type and the node."""

    def __init__(self, op_type: str, node_name: str, detail: str = "") -> None:
        self.op_type = op_type
        self.node_name = node_name
        msg = f"unsupported ONNX operator {op_type!r} (node {node_name!r})"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


class ModelFormatError(InputError):
    """The model file is missing, not ONNX, malformed, or has invalid weights (NaN/inf)."""


class DatasetNotFoundError(InputError):
    """A dataset's files were not found; the message lists what was looked for and where."""


class SolverError(RobustkitError):
    """The solver returned something inconsistent (e.g. an optimum outside proven bounds)."""
