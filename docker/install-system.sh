#!/bin/sh
# Makes python3.11 (with venv) available on a Debian or Ubuntu base image.
# The CUDA 11.2 runtime images are Ubuntu 20.04, whose own Python is 3.8.
set -eu
if command -v python3.11 >/dev/null 2>&1 && python3.11 -c "import venv" 2>/dev/null; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
if ! apt-cache show python3.11-venv >/dev/null 2>&1; then
    apt-get install -y --no-install-recommends software-properties-common gpg-agent
    add-apt-repository -y ppa:deadsnakes/ppa
    apt-get update
fi
apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates
rm -rf /var/lib/apt/lists/*
