"""``--write-milp DIR``: each MILP as solved, as ``.mps`` and ``.lp`` (written by HiGHS from the
assembled model) with a JSON sidecar that says what each column is and what the optimum means.

Columns are named ``c0, c1, ...`` and rows ``r0, r1, ...`` in both files (HiGHS's names for
unnamed columns; ``c<j>`` is column ``j`` of the MPS file, while a reader of the LP file numbers
the columns in order of appearance, so go by the names there); the sidecar's ``columns`` list gives, per column, its bounds, whether it is
integer, and its roles: an input pixel, a linear layer's neuron (the pre-activation when a ReLU
follows), a ReLU's output, a ReLU's indicator binary, a network output, the objective variable
``t``, or a disjunct selector. One column can have several roles (a stably active ReLU's output
is its pre-activation column).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import highspy
import numpy as np

from robustkit.errors import InputError
from robustkit.milp.assembled import AssembledMilp, arrays_of
from robustkit.milp.encoder import ZERO

log = logging.getLogger(__name__)


def milp_dir(path: Path | None) -> str | None:
    """The ``--write-milp`` folder, created now (so that a bad path is a usage error before any
    sample runs, not an error record per sample), as an absolute path."""
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--write-milp {path}: cannot create the folder ({exc.strerror})") from exc
    return str(path.resolve())


def safe_tag(tag: str) -> str:
    """A file-name stem from ``tag`` (letters, digits, ``._-``; the rest becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", tag).strip("_") or "milp"


def column_roles(m: AssembledMilp) -> list[list[dict[str, Any]]]:
    """Per column of the assembled model, what it stands for (see the module docstring)."""
    enc = m.enc
    roles: list[list[dict[str, Any]]] = [[] for _ in range(enc.highs.getNumCol())]
    for i, c in enumerate(enc.input_cols):
        roles[int(c)].append({"kind": "input", "index": i})
    layers = enc.net.layers
    for pos, cols in enumerate(enc.linear_cols):
        if pos in enc.relus:
            continue
        kind = "pre_activation" if pos + 1 < len(layers) and layers[pos + 1].nonlinear else "linear"
        for n, c in enumerate(cols):
            if c != ZERO:
                roles[int(c)].append({"kind": kind, "layer": pos, "neuron": n})
    for pos, info in enc.relus.items():
        unstable = set(int(u) for u in info.unstable)
        for n, c in enumerate(info.out_cols):
            if c != ZERO:
                roles[int(c)].append({"kind": "relu_output", "layer": pos, "neuron": n,
                                      "stability": "unstable" if n in unstable else "active"})
        if info.binary_cols.size == info.unstable.size:  # one binary per neuron (ReLU, LeakyReLU)
            for n, c in zip(info.unstable, info.binary_cols):
                roles[int(c)].append({"kind": "relu_indicator", "layer": pos, "neuron": int(n),
                                      "meaning": "1 = above the kink (output = pre-activation), 0 = below"})
        else:
            for c in info.binary_cols:
                roles[int(c)].append({"kind": "indicator", "layer": pos,
                                      "operator": layers[pos].describe()})
    for o, c in enumerate(enc.output_cols):
        roles[int(c)].append({"kind": "output", "index": o})
    roles[m.t_col].append({"kind": "t", "meaning": "the violation measure: max over disjuncts of min over rows of d - C y"})
    for k, c in enumerate(m.s_cols):
        roles[int(c)].append({"kind": "disjunct_selector", "disjunct": k})
    return roles


def sidecar(m: AssembledMilp, stem: str) -> dict[str, Any]:
    arrays = arrays_of(m.enc.highs)
    t_lower = float(arrays.col_lower[m.t_col])
    roles = column_roles(m)
    return {
        "files": {"mps": f"{stem}.mps", "lp": f"{stem}.lp"},
        "objective": f"minimise -t, t = column c{m.t_col} (equivalently: maximise t)",
        "meaning": (
            f"t's lower bound is {t_lower:g} (= -safety_margin {m.safety_margin:g}). The property holds "
            f"(robust) iff this MILP is infeasible, i.e. max t < {t_lower:g}. A feasible point with t >= 0 is a "
            f"counterexample candidate: its input columns are an input whose outputs satisfy a disjunct "
            f"C y <= d (to be re-checked in onnxruntime). With t's lower bound removed, the optimum t* decides: "
            f"t* < -safety_margin robust, t* >= 0 violated, in between undecided."
        ),
        "safety_margin": m.safety_margin,
        "t_col": m.t_col,
        "t_bounds": [t_lower, float(arrays.col_upper[m.t_col])],
        "disjuncts": [{"C": dj.C.tolist(), "d": dj.d.tolist()} for dj in m.disjuncts],
        "selector_cols": [int(c) for c in m.s_cols],
        "layers": [layer.describe() for layer in m.enc.net.layers],
        "num_cols": arrays.num_cols,
        "num_rows": arrays.num_rows,
        "num_integer": int(arrays.integer.sum()),
        "columns": [
            {"col": j, "name": f"c{j}", "lower": _num(arrays.col_lower[j]), "upper": _num(arrays.col_upper[j]),
             "integer": bool(arrays.integer[j]), "roles": roles[j]}
            for j in range(arrays.num_cols)
        ],
    }


def _num(v: float) -> float | str:
    return float(v) if np.isfinite(v) else ("inf" if v > 0 else "-inf")


def write_assembled(m: AssembledMilp, directory: Path, tag: str) -> list[Path]:
    """Write ``DIR/<tag>.mps``, ``.lp`` and ``.json`` for the assembled MILP ``m`` (``m``'s HiGHS
    model is not changed: HiGHS writes a copy)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = safe_tag(tag)
    copy = highspy.Highs()
    copy.setOptionValue("output_flag", False)
    copy.passModel(m.enc.highs.getLp())
    paths = [directory / f"{stem}.mps", directory / f"{stem}.lp", directory / f"{stem}.json"]
    for path in paths[:2]:
        status = copy.writeModel(str(path))
        if status == highspy.HighsStatus.kError:
            raise OSError(f"HiGHS could not write {path}")
    paths[2].write_text(json.dumps(sidecar(m, stem), indent=1) + "\n")
    log.info("wrote MILP %s (.mps, .lp, .json) to %s", stem, directory)
    return paths
