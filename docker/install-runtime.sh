#!/bin/sh
# Installs the predictor wheel and its pinned dependencies into a virtualenv.
# Used by Dockerfile.runtime, and run as-is by CI so the image recipe cannot rot.
#
#   docker/install-runtime.sh WHEEL CONSTRAINTS MXNET_BUILD [VENV]
#     WHEEL        path to predictor-*.whl
#     CONSTRAINTS  path to constraints.txt (the single source of pins)
#     MXNET_BUILD  cpu (mxnet) or gpu (mxnet-cu112, CUDA 11.2)
#     VENV         target virtualenv (default /opt/predictor)
set -eu

if [ "$#" -lt 3 ]; then
    echo "usage: $0 WHEEL CONSTRAINTS cpu|gpu [VENV]" >&2
    exit 2
fi
wheel=$1
constraints=$2
build=$3
venv=${4:-/opt/predictor}
python=${PYTHON:-python3.11}

case "$build" in
    cpu|gpu) ;;
    *) echo "MXNET_BUILD must be cpu or gpu, not '$build'" >&2; exit 2 ;;
esac
[ -f "$wheel" ] || { echo "wheel not found: $wheel" >&2; exit 2; }
[ -f "$constraints" ] || { echo "constraints not found: $constraints" >&2; exit 2; }

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --no-cache-dir --quiet --upgrade pip
# Serving needs MXNet, OpenCV, aiohttp and prometheus_client only: no GluonCV.
"$venv/bin/python" -m pip install --no-cache-dir --quiet -c "$constraints" "${wheel}[${build}]"
"$venv/bin/python" -c "import mxnet, cv2, aiohttp, prometheus_client, predictor; print('predictor', predictor.__version__, 'with mxnet', mxnet.__version__)"
