"""VNN-LIB properties and VNN-COMP result files.

* :func:`parse_vnnlib` reads a ``.vnnlib`` file (or text) into a
  :class:`robustkit.spec.Specification`.
* :func:`write_result` / :func:`read_result` write and read VNN-COMP result files
  (``sat`` with a counterexample, ``unsat``, ``timeout``, ``unknown``, ``error``).
"""

from robustkit.vnnlib.parser import VnnlibError, parse_vnnlib, parse_vnnlib_text
from robustkit.vnnlib.result_file import (
    RESULT_STATUSES,
    ResultFile,
    format_result,
    parse_result_text,
    read_result,
    write_result,
)

__all__ = [
    "RESULT_STATUSES",
    "ResultFile",
    "VnnlibError",
    "format_result",
    "parse_result_text",
    "parse_vnnlib",
    "parse_vnnlib_text",
    "read_result",
    "write_result",
]
