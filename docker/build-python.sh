#!/bin/sh
# Builds CPython from the python.org release into PREFIX, on a Debian or Ubuntu
# base, and lists the distribution packages its binaries need at run time in
# PREFIX/share/runtime-packages.txt (for docker/install-system.sh).
# Used by Dockerfile.runtime's GPU variant: Ubuntu 20.04, the base of the
# CUDA 11.2 images, has no Python 3.11 package.
#
#   docker/build-python.sh PREFIX VERSION SHA256 [URL]
#     URL  the source tarball (.tar.xz or .tgz) to fetch; default, or empty:
#          python.org's release of VERSION. Whatever its origin, it must match SHA256.
set -eu

if [ "$#" -lt 3 ] || [ "$#" -gt 4 ]; then
    echo "usage: $0 PREFIX VERSION SHA256 [URL]" >&2
    exit 2
fi
prefix=$1
version=$2
sha256=$3
url=${4:-}
[ -n "$url" ] || url="https://www.python.org/ftp/python/${version}/Python-${version}.tar.xz"

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends \
    ca-certificates wget xz-utils dpkg-dev gcc make libc6-dev \
    libssl-dev zlib1g-dev libbz2-dev liblzma-dev libffi-dev libsqlite3-dev \
    libreadline-dev libncursesw5-dev uuid-dev libgdbm-dev

src=$(mktemp -d)
# SSL_CERT_FILE: extra CA certificates of the build (docker/build-env.sh).
wget -q ${SSL_CERT_FILE:+--ca-certificate="$SSL_CERT_FILE"} -O "$src/python.tar" "$url"
echo "${sha256}  $src/python.tar" | sha256sum -c -
tar -x -f "$src/python.tar" -C "$src" --strip-components=1
rm "$src/python.tar"

cd "$src"
./configure --prefix="$prefix" --with-ensurepip=install --enable-option-checking=fatal \
    --build="$(dpkg-architecture --query DEB_BUILD_GNU_TYPE)"
make -j "$(nproc)"
make altinstall
cd /
rm -rf "$src"

# No test suite, no static library, no bytecode: smaller, and nothing is lost.
find "$prefix" -depth \( \( -type d -a \( -name test -o -name tests -o -name idle_test \) \) \
    -o \( -type f -a \( -name '*.pyc' -o -name 'libpython*.a' \) \) \) -exec rm -rf '{}' +

# The packages that own the shared libraries the new binaries load.
mkdir -p "$prefix/share"
find "$prefix" -type f \( -name '*.so' -o -perm -u+x \) -exec ldd '{}' + 2>/dev/null \
    | awk '/=>/ && $(NF-1) ~ /^\// { print $(NF-1) }' \
    | grep -v "^$prefix/" \
    | sort -u \
    | while read -r lib; do dpkg-query --search "*/$(basename "$lib")"; done \
    | awk -F': ' '!/^diversion/ { n = split($1, owners, ", "); for (i = 1; i <= n; i++) { sub(/:.*/, "", owners[i]); print owners[i] } }' \
    | sort -u > "$prefix/share/runtime-packages.txt"
echo "Python $("$prefix/bin/python${version%.*}" -c 'import sys; print(sys.version)')"
echo "runtime packages: $(tr '\n' ' ' < "$prefix/share/runtime-packages.txt")"

# The build dependencies stay in this stage only (Dockerfile.runtime copies PREFIX out).
rm -rf /var/lib/apt/lists/*
