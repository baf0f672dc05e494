#!/bin/sh
# Installs what an image needs from the distribution, on a Debian or Ubuntu
# base, so that the same Dockerfile works on python:3.11-slim-bookworm (Python
# from python.org in /usr/local), on a bare Debian bookworm (docker/base-image.sh:
# no Python at all; Debian's python3.11 is installed) and on the CUDA base
# (Python built from source into /opt/python, docker/build-python.sh, whose
# shared libraries are listed in /opt/python/share/runtime-packages.txt).
#
#   docker/install-system.sh runtime|builder
#     runtime  MXNet's run-time libraries (libgomp1; libquadmath0, which the
#              libgfortran bundled in MXNet's wheel loads) and CA certificates
#     builder  the same, plus make, and what `make test` runs: Debian's
#              Chromium for the browser tests, libatomic1 (Playwright's bundled
#              node), Node.js and npm (JavaScript reference tests), the
#              scene generator's font families (Makefile FONT_PACKAGES), and
#              GCompris's data, whose Qt resource archives the tests read
#              photos from (Makefile test-assets)
# Fails when no python3.11 with venv and its standard modules is on PATH after it.
set -eu

fonts="fonts-dejavu-core fonts-liberation fonts-freefont-ttf fonts-urw-base35 fonts-noto-core fonts-croscore"
case "${1:-}" in
    runtime) packages="libgomp1 libquadmath0 ca-certificates" ;;
    builder) packages="libgomp1 libquadmath0 ca-certificates make libatomic1 chromium nodejs npm libb64-0d $fonts gcompris-qt-data" ;;
    *) echo "usage: $0 runtime|builder" >&2; exit 2 ;;
esac
if [ -f /opt/python/share/runtime-packages.txt ]; then
    packages="$packages $(tr '\n' ' ' < /opt/python/share/runtime-packages.txt)"
fi
# No Python 3.11 on PATH (a bare Debian bookworm): Debian's own.
if ! command -v python3.11 >/dev/null 2>&1; then
    packages="$packages python3 python3-venv"
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
# shellcheck disable=SC2086  # a list of package names
apt-get install -y --no-install-recommends $packages
rm -rf /var/lib/apt/lists/*

if ! python3.11 -c "import venv, ensurepip, ssl, sqlite3, ctypes, lzma, bz2, zlib" 2>/dev/null; then
    echo "python3.11 with venv, ensurepip, ssl, ... is not on PATH ($PATH)" >&2
    exit 1
fi
echo "$(python3.11 --version) at $(command -v python3.11)"
