#!/usr/bin/env bash
# VNN-COMP calling convention: install_tool.sh v1
# Installs robustkit and its dependencies into the Python the other two scripts run
# ($ROBUSTKIT_PYTHON, default python3), then checks the install end to end: it writes a tiny
# network and property, and runs prepare_instance.sh and run_instance.sh on them (expect unsat).
# Exit 0: installed and working; exit 1: wrong arguments or the check failed.
#
# Environment:
#   ROBUSTKIT_PYTHON          interpreter to install into (default python3; a venv's python works)
#   ROBUSTKIT_TORCH           the torch requirement (default torch==2.13.0, the tested release)
#   ROBUSTKIT_TORCH_INDEX     where torch comes from (default the CPU wheels: robustkit runs on CPU)
#   ROBUSTKIT_INSTALL_DRY_RUN set to 1: print the pip commands instead of running them, then run
#                             the check against what is installed already
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 v1" >&2
    exit 1
fi
if [[ "$1" != "v1" ]]; then
    echo "expected interface version v1, got '$1'" >&2
    exit 1
fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PYTHON="${ROBUSTKIT_PYTHON:-python3}"
TORCH="${ROBUSTKIT_TORCH:-torch==2.13.0}"
TORCH_INDEX="${ROBUSTKIT_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"

run() {
    echo "+ $*" >&2
    if [[ -z "${ROBUSTKIT_INSTALL_DRY_RUN:-}" ]]; then
        "$@"
    fi
}

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
    echo "robustkit needs Python >= 3.10; $PYTHON is $("$PYTHON" --version 2>&1)" >&2
    exit 1
fi

echo "robustkit: installing into $("$PYTHON" -c 'import sys; print(sys.executable)')" >&2
run "$PYTHON" -m pip install --upgrade pip
run "$PYTHON" -m pip install "$TORCH" --index-url "$TORCH_INDEX"
run "$PYTHON" -m pip install -e "$REPO"

# -- check: a 1-input net y = relu(x) - 2 on x in [0, 1] never reaches y >= 0 (unsat) ------------
CHECK="$(mktemp -d)"
trap 'rm -rf "$CHECK"' EXIT
"$PYTHON" - "$CHECK" <<'PY'
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

out = Path(sys.argv[1])
init = [numpy_helper.from_array(np.array([[1.0]], np.float32), "W1"),
        numpy_helper.from_array(np.array([0.0], np.float32), "b1"),
        numpy_helper.from_array(np.array([[1.0]], np.float32), "W2"),
        numpy_helper.from_array(np.array([-2.0], np.float32), "b2")]
nodes = [helper.make_node("Gemm", ["X", "W1", "b1"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "W2", "b2"], ["Y"], transB=1)]
graph = helper.make_graph(nodes, "selfcheck", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 1])], init)
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), out / "net.onnx")
(out / "prop.vnnlib").write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
                                 "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= Y_0 0))\n")
PY
export ROBUSTKIT_PYTHON="$PYTHON"
bash "$HERE/prepare_instance.sh" v1 selfcheck "$CHECK/net.onnx" "$CHECK/prop.vnnlib"
bash "$HERE/run_instance.sh" v1 selfcheck "$CHECK/net.onnx" "$CHECK/prop.vnnlib" "$CHECK/result.txt" 60
ANSWER="$(head -n 1 "$CHECK/result.txt")"
if [[ "$ANSWER" != "unsat" ]]; then
    echo "robustkit: install check failed: expected unsat on the check instance, got '$ANSWER'" >&2
    exit 1
fi
echo "robustkit: installed and checked ($("$PYTHON" -m robustkit.cli.main --version))"
