#!/bin/sh
# Installs the predictor wheel and its pinned serving dependencies into a new
# virtualenv. Dockerfile.runtime runs it, and docker/check-install.sh runs it
# as-is in CI (CPU variant), so that the image recipe cannot rot unseen.
#
#   docker/install-runtime.sh WHEEL CONSTRAINTS cpu|gpu [VENV]
#     WHEEL        path to predictor-*.whl
#     CONSTRAINTS  path to constraints.txt (the single source of pins)
#     cpu|gpu      the MXNet build: mxnet, or mxnet-cu112 (CUDA 11.2)
#     VENV         the virtualenv to create (default: $PREDICTOR_VENV, else /opt/predictor)
# Environment: PYTHON (default python3.11); pip's own PIP_* variables.
set -eu

if [ "$#" -lt 3 ] || [ "$#" -gt 4 ]; then
    echo "usage: $0 WHEEL CONSTRAINTS cpu|gpu [VENV]" >&2
    exit 2
fi
wheel=$1
constraints=$2
build=$3
venv=${4:-${PREDICTOR_VENV:-/opt/predictor}}
python=${PYTHON:-python3.11}

case "$build" in
    cpu) mxnet_dist=mxnet ;;
    gpu) mxnet_dist=mxnet-cu112 ;;
    *) echo "the MXNet build must be cpu or gpu, not '$build'" >&2; exit 2 ;;
esac
[ -f "$wheel" ] || { echo "wheel not found: $wheel" >&2; exit 2; }
[ -f "$constraints" ] || { echo "constraints not found: $constraints" >&2; exit 2; }
[ ! -e "$venv" ] || { echo "$venv exists already: the install goes into a new virtualenv" >&2; exit 2; }

"$python" -m venv "$venv"
# pip itself is pinned too (constraints.txt).
"$venv/bin/python" -m pip install --quiet -c "$constraints" --upgrade pip
# Serving needs MXNet, OpenCV, aiohttp and prometheus_client only: no GluonCV.
"$venv/bin/python" -m pip install --quiet -c "$constraints" "${wheel}[${build}]"
"$venv/bin/python" -m pip check

# The installed versions are the pinned ones, and the server's modules import.
# (The CUDA build of MXNet loads libcuda, the driver's library, at import: in
# an image build there is no driver, so its import waits for `docker run`.)
"$venv/bin/python" - "$constraints" "$mxnet_dist" <<'PY'
import importlib.metadata as md
import re
import sys

constraints, mxnet_dist = sys.argv[1], sys.argv[2]
pins = {}
for line in open(constraints, encoding="utf-8"):
    match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
    if match:
        pins[match[1].lower().replace("_", "-")] = match[2]
checked = []
for dist in md.distributions():
    name = dist.metadata["Name"].lower().replace("_", "-")
    if name in pins:
        if dist.version != pins[name]:
            sys.exit(f"{name} {dist.version} is installed, constraints.txt pins {pins[name]}")
        checked.append(f"{name}=={dist.version}")
if mxnet_dist not in [c.split("==")[0] for c in checked]:
    sys.exit(f"{mxnet_dist} is not installed")
import importlib
import importlib.resources

for module in ("aiohttp", "cv2", "numpy", "prometheus_client", "predictor.cli"):
    importlib.import_module(module)
if mxnet_dist == "mxnet":
    importlib.import_module("predictor.http.app")  # the server
    importlib.import_module("predictor.runtime.model")  # and MXNet
    importlib.import_module("openvino")  # MODEL_ENGINE=openvino (extra `cpu`)
static = importlib.resources.files("predictor") / "static"
missing = [f for f in ("index.html", "app.js", "style.css") if not (static / f).is_file()]
if missing:
    sys.exit(f"the wheel lacks the web page's files: {missing}")
print("installed", "predictor", md.version("predictor"), "with", ", ".join(sorted(checked)))
PY
