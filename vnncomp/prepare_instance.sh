#!/usr/bin/env bash
# VNN-COMP calling convention: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# Checks that robustkit can load the network and the property (supported operators, matching
# input/output sizes). Exit 0: ready; exit 1: robustkit cannot run this instance.
set -euo pipefail

if [[ $# -ne 4 ]]; then
    echo "usage: $0 v1 CATEGORY ONNX_FILE VNNLIB_FILE" >&2
    exit 1
fi
VERSION="$1"; CATEGORY="$2"; ONNX="$3"; VNNLIB="$4"
if [[ "$VERSION" != "v1" ]]; then
    echo "expected interface version v1, got '$VERSION'" >&2
    exit 1
fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$HERE/..${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${ROBUSTKIT_PYTHON:-python3}"

echo "robustkit: preparing $CATEGORY instance $ONNX $VNNLIB" >&2
exec "$PYTHON" -m robustkit.cli.main vnnlib "$ONNX" "$VNNLIB" --check
