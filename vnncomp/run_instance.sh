#!/usr/bin/env bash
# VNN-COMP calling convention: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
# Writes RESULTS_FILE: sat (with the counterexample), unsat, timeout, unknown or error.
# The timeout counts from the start of this script (Python start-up included).
set -uo pipefail
START="$(date +%s.%N)"

if [[ $# -ne 6 ]]; then
    echo "usage: $0 v1 CATEGORY ONNX_FILE VNNLIB_FILE RESULTS_FILE TIMEOUT" >&2
    exit 1
fi
VERSION="$1"; CATEGORY="$2"; ONNX="$3"; VNNLIB="$4"; RESULTS="$5"; TIMEOUT="$6"
if [[ "$VERSION" != "v1" ]]; then
    echo "expected interface version v1, got '$VERSION'" >&2
    exit 1
fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$HERE/..${PYTHONPATH:+:$PYTHONPATH}"
export ROBUSTKIT_STARTED_AT="$START"
PYTHON="${ROBUSTKIT_PYTHON:-python3}"
rm -f "$RESULTS"  # never leave the answer of an earlier run behind
# ROBUSTKIT_TIGHTEN: the old name of ROBUSTKIT_BOUNDS, read for one more release
BOUNDS="${ROBUSTKIT_BOUNDS:-${ROBUSTKIT_TIGHTEN:-alpha-crown}}"
METHOD="${ROBUSTKIT_METHOD:-bab}"

echo "robustkit: $CATEGORY $ONNX $VNNLIB (timeout $TIMEOUT s, method $METHOD, bounds $BOUNDS)" >&2
"$PYTHON" -m robustkit.cli.main vnnlib "$ONNX" "$VNNLIB" --timeout "$TIMEOUT" --result "$RESULTS" \
    --bounds "$BOUNDS" --method "$METHOD"
STATUS=$?
if [[ $STATUS -ne 0 && ! -s "$RESULTS" ]]; then
    # robustkit could not even start (bad input or internal error): still leave a result file.
    echo "error" > "$RESULTS"
fi
exit $STATUS
