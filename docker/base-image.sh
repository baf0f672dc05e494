#!/usr/bin/env bash
# Makes a local Debian bookworm base image, for machines that cannot pull
# python:3.11-slim-bookworm (no registry reachable): `debootstrap --variant=minbase
# bookworm` from this machine's own Debian mirror, then `docker import`.
# It has no Python: the Dockerfiles install what their base lacks
# (docker/install-system.sh).
#
#   docker/base-image.sh            prints the image's name (logs go to stderr)
#   docker/base-image.sh --mirror   prints the Debian mirror it uses
#
# The root file system is cached as a tarball, one per day (UTC) and mirror,
# under BASE_CACHE_DIR (default /var/cache/predictor/docker-base): a second run
# on the same day imports it again only if the image is missing, and does
# nothing when the image exists. Older tarballs are removed.
# Environment: DOCKER (default: docker), DEBIAN_MIRROR (default: the mirror of
# this machine's bookworm entry in /etc/apt/sources.list(.d)), BASE_CACHE_DIR,
# BASE_DATE (default: today, UTC).
set -euo pipefail

docker=${DOCKER:-docker}
cache_dir=${BASE_CACHE_DIR:-/var/cache/predictor/docker-base}
date=${BASE_DATE:-$(date -u +%Y%m%d)}
suite=bookworm

log() { printf '[base-image] %s\n' "$*" >&2; }
die() { printf '[base-image] FAILED: %s\n' "$*" >&2; exit 1; }

# URI of the first entry of this machine's apt sources whose suite is exactly $1.
apt_uri() {
    local wanted=$1 file
    for file in /etc/apt/sources.list.d/*.sources; do
        [ -f "$file" ] || continue
        # deb822: blank-line separated stanzas of "Field: value".
        awk -v want="$wanted" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " want " ") && uris != "") {
                    split(uris, u, " "); print u[1]; found = 1; exit
                }
                types = ""; suites = ""; uris = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^Types:/  { sub(/^Types:[ \t]*/, ""); types = $0 }
            /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
            /^URIs:/   { sub(/^URIs:[ \t]*/, ""); uris = $0 }
            END { if (!found) flush() }
        ' "$file"
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$file" ] || continue
        # deb [options] URI SUITE COMPONENTS...
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$file" \
            | awk -v want="$wanted" '$1 == "deb" && $3 == want { print $2 }'
    done
}

mirror=${DEBIAN_MIRROR:-$(apt_uri "$suite" | head -n 1)}
[ -n "$mirror" ] || die "no '$suite' entry in /etc/apt/sources.list(.d); set DEBIAN_MIRROR"
if [ "${1:-}" = --mirror ]; then
    echo "$mirror"
    exit 0
fi
security=$(apt_uri "$suite-security" | head -n 1)
command -v "$docker" >/dev/null || die "no docker client ($docker)"
key=$(printf '%s %s' "$mirror" "$security" | sha256sum | cut -c1-8)
image=predictor-base:$suite-minbase-$date-$key

if "$docker" image inspect "$image" >/dev/null 2>&1; then
    log "$image exists"
    echo "$image"
    exit 0
fi

mkdir -p "$cache_dir"
tarball=$cache_dir/$suite-minbase-$date-$key.tar.gz
if [ -s "$tarball" ]; then
    log "importing the cached $tarball"
else
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    [ "$(id -u)" = 0 ] || die "debootstrap needs root"
    rootfs=$(mktemp -d "${TMPDIR:-/tmp}/predictor-rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap --variant=minbase $suite from $mirror"
    start=$SECONDS
    debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
        || { tail -n 20 "$rootfs.log" >&2; rm -f "$rootfs.log"; die "debootstrap"; }
    rm -f "$rootfs.log"
    # The image's apt uses the same mirror, with updates and (when this machine
    # has it) the security archive, as python:3.11-slim-bookworm does.
    rm -f "$rootfs/etc/apt/sources.list"
    {
        printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' "$mirror" "$suite" "$suite"
        printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
        if [ -n "$security" ]; then
            printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' "$security" "$suite"
            printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
        fi
    } >"$rootfs/etc/apt/sources.list.d/debian.sources"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/tmp/*
    tar -C "$rootfs" --numeric-owner -czf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    log "debootstrap took $((SECONDS - start)) s; $(du -h "$tarball" | cut -f1) compressed"
fi
find "$cache_dir" -maxdepth 1 -name "$suite-minbase-*.tar.gz" ! -path "$tarball" -delete

"$docker" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["bash"]' \
    --message "debootstrap --variant=minbase $suite $mirror ($date)" \
    "$tarball" "$image" >/dev/null
log "imported $image"
echo "$image"
