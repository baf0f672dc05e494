#!/usr/bin/env bash
# Builds Dockerfile.runtime's GPU variant as far as it can be built where
# neither the CUDA base image (a registry) nor python.org can be reached:
#   - CUDA_BASE_IMAGE: the given local base (Debian bookworm) stands in for
#     nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04: no CUDA libraries;
#   - docker/build-python.sh compiles CPython 3.11.2 from the release tarball
#     that Debian's mirror keeps as python3.11's .orig (python.org's
#     Python-3.11.2.tgz, byte for byte: its SHA-256 is checked);
#   - everything else is the real recipe: base-gpu, install-system.sh with the
#     compiled Python's run-time packages, install-runtime.sh ... gpu
#     (mxnet-cu112 and the pinned serving stack), the user, models, entry point.
# Then it checks that the image's Python and packages are in place and that
# MXNet's import stops only for want of the CUDA layer's libraries (measured:
# libcudnn.so.8 is the first it asks for), which the stand-in base lacks.
#
#   docker/gpu-standin.sh BASE_IMAGE [docker build options...]
#   (docker/image-check.sh runs it with IMAGE_CHECK_GPU=standin)
set -euo pipefail

[ "$#" -ge 1 ] || { echo "usage: $0 BASE_IMAGE [docker build options...]" >&2; exit 2; }
base=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
docker=${DOCKER:-/usr/bin/docker}
mirror=$("$root/docker/base-image.sh" --mirror)
python_version=3.11.2
python_sha256=2411c74bda5bbcfcddaf4531f66d1adc73f247f529aee981b029513aefdbf849
python_url=$mirror/pool/main/p/python3.11/python3.11_$python_version.orig.tar.gz
image=predictor:gpu-standin
logs=$root/build/image-check
mkdir -p "$logs"

start=$SECONDS
if ! DOCKER_BUILDKIT=1 "$docker" build --progress=plain -f "$root/Dockerfile.runtime" \
    --build-arg VARIANT=gpu --build-arg CUDA_BASE_IMAGE="$base" \
    --build-arg PYTHON_VERSION="$python_version" --build-arg PYTHON_SHA256="$python_sha256" \
    --build-arg PYTHON_SOURCE_URL="$python_url" \
    "$@" -t "$image" "$root" >"$logs/gpu-standin.log" 2>&1; then
    tail -n 40 "$logs/gpu-standin.log" >&2
    echo "FAILED: GPU stand-in build (log: $logs/gpu-standin.log)" >&2
    exit 1
fi
echo "GPU stand-in runtime image ($image, CUDA layer and python.org replaced): $((SECONDS - start)) s"

# The image's Python and the pinned packages; MXNet's import needs the driver.
"$docker" run --rm --entrypoint /opt/predictor/bin/python "$image" -c '
import importlib.metadata as md, sys
print("  python", sys.version.split()[0], "at", sys.executable)
print("  mxnet-cu112", md.version("mxnet-cu112"), "; predictor", md.version("predictor"))
try:
    import mxnet  # noqa: F401
except OSError as exc:
    if not any(lib in str(exc) for lib in ("libcuda", "libcudnn", "libcublas", "libnccl", "libnvrtc")):
        raise
    print("  import mxnet: needs the CUDA layer, as expected on the stand-in base:", exc)
else:
    print("  import mxnet: OK")
'
"$docker" image ls --format '  {{.Repository}}:{{.Tag}} {{.Size}}' "$image"
