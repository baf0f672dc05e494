#!/bin/sh
# Installs what the runtime image needs from the distribution, on a Debian or
# Ubuntu base: MXNet's OpenMP runtime, CA certificates, and, where Python was
# built from source (docker/build-python.sh, GPU variant), the shared libraries
# that build needs. Fails when no python3.11 with venv is on PATH.
#
#   docker/install-system.sh
set -eu

packages="libgomp1 ca-certificates"
if [ -f /opt/python/share/runtime-packages.txt ]; then
    packages="$packages $(tr '\n' ' ' < /opt/python/share/runtime-packages.txt)"
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
python3.11 --version
