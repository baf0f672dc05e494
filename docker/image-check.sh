#!/usr/bin/env bash
# `make image-check` with a Docker engine: builds both images for real and
# smoke-tests the runtime container.
#
#   1. installs docker.io and debootstrap with apt-get when missing;
#   2. uses the running Docker engine, or starts dockerd (and stops it again,
#      by its PID, at the end);
#   3. docker/base-image.sh: a Debian bookworm minbase from this machine's
#      mirror (debootstrap, cached per day), imported as predictor-base:...;
#   4. builds Dockerfile.builder on it (its `make test` runs lint, typecheck
#      and every unit and browser test inside), then Dockerfile.runtime
#      (VARIANT=cpu) on it, with the commands README.md shows;
#   5. docker/smoke.py: the container against the host's own answer, its
#      health, user, read-only root and a `docker stop` under load;
#   6. removes its containers and dangling images, keeps the tagged images
#      (README's commands then work as shown) and says how much disk they use.
# Every run's builder layers are new (CHECK_RUN), so the build cache grows by
# about the builder image's size per run: it is cut to IMAGE_CHECK_CACHE_KEEP
# before and after the builds, and the check stops early, saying so, when
# Docker's data directory has less than IMAGE_CHECK_MIN_FREE_GIB free.
# Fails when any step fails: with root and apt-get an engine must run here.
#
#   docker/image-check.sh          the check
#   docker/image-check.sh --mode   prints `engine` where this machine can run
#                                  an engine (one runs, or root with dockerd
#                                  or apt-get), else `install` (Makefile)
# Environment: DOCKER (default /usr/bin/docker: Debian's client, which builds
# with BuildKit), IMAGE_CA_FILE (extra CA certificates for the builds, default
# this machine's /etc/ssl/certs/ca-certificates.crt; empty: none),
# IMAGE_CHECK_GPU=standin (also build the GPU variant's stages, see README.md),
# IMAGE_CHECK_CACHE_KEEP (build cache kept, default 10GB: the pip cache and the
# last run's layers), IMAGE_CHECK_MIN_FREE_GIB (default 12: the builder image
# is about 4.3 GB, its layers as much again in the cache, the runtime 0.8 GB).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
export DOCKER=${DOCKER:-/usr/bin/docker}

if [ "${1:-}" = --mode ]; then
    if [ -x "$DOCKER" ] && "$DOCKER" info >/dev/null 2>&1; then
        echo engine
    elif [ "$(id -u)" = 0 ] && { command -v dockerd || command -v apt-get; } >/dev/null 2>&1; then
        echo engine
    else
        echo install
    fi
    exit 0
fi

logs=$root/build/image-check
mkdir -p "$logs"
summary=$logs/summary.txt
: >"$summary"
step() { printf '[image-check %4ds] %s\n' "$SECONDS" "$*"; }
note() { printf '%s\n' "$*" | tee -a "$summary"; }
fail() {
    printf '[image-check %4ds] FAILED: %s\n' "$SECONDS" "$*" >&2
    exit 1
}

dockerd_pid=""
cleanup() {
    local code=$?
    if [ -n "$dockerd_pid" ] || "$DOCKER" info >/dev/null 2>&1; then
        # Every container a check made, also those of an interrupted earlier run.
        "$DOCKER" ps --all --quiet --filter label=predictor-image-check=1 \
            | xargs --no-run-if-empty "$DOCKER" rm --force >/dev/null 2>&1 || true
    fi
    if [ -n "$dockerd_pid" ]; then
        step "stopping the Docker engine this check started (PID $dockerd_pid)"
        kill -TERM "$dockerd_pid" 2>/dev/null || true
        for _ in $(seq 60); do
            kill -0 "$dockerd_pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$dockerd_pid" 2>/dev/null; then
            step "dockerd (PID $dockerd_pid) did not stop within 30 s: SIGKILL"
            kill -KILL "$dockerd_pid" 2>/dev/null || true
        fi
    fi
    exit "$code"
}
trap cleanup EXIT

# Runs "$@" with its output in $logs/$1.log; notes how long it took as $2.
timed() {
    local name=$1 what=$2 start=$SECONDS
    shift 2
    if ! "$@" >"$logs/$name.log" 2>&1; then
        tail -n 60 "$logs/$name.log" >&2
        fail "$what (full log: $logs/$name.log)"
    fi
    note "$what: $((SECONDS - start)) s"
}

echo "=== image-check: WITH a Docker engine: building both images for real ==="

# 1. The packages.
missing=()
{ [ -x "$DOCKER" ] && command -v dockerd >/dev/null; } || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
    step "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
        </dev/null >"$logs/apt.log" 2>&1 || { tail -n 20 "$logs/apt.log" >&2; fail "apt-get install ${missing[*]}"; }
fi
[ -x "$DOCKER" ] || fail "$DOCKER is missing after installing docker.io"

# 2. The engine.
if "$DOCKER" info >/dev/null 2>&1; then
    step "using the Docker engine that runs already"
else
    step "starting dockerd"
    dockerd --pidfile "$logs/dockerd.pid" </dev/null >"$logs/dockerd.log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 120); do
        "$DOCKER" info >/dev/null 2>&1 && break
        kill -0 "$dockerd_pid" 2>/dev/null || { tail -n 20 "$logs/dockerd.log" >&2; fail "dockerd exited"; }
        sleep 0.5
    done
    "$DOCKER" info >/dev/null 2>&1 || { tail -n 20 "$logs/dockerd.log" >&2; fail "dockerd did not answer within 60 s"; }
    step "dockerd runs (PID $dockerd_pid)"
fi
note "engine: $("$DOCKER" version --format 'Docker {{.Server.Version}}'), $("$DOCKER" info --format '{{.Driver}}, cgroup v{{.CgroupVersion}}')"

# The disk. A CI run once failed in pip with "No space left on device" after
# a day of checks had left 48 GB of build cache.
cache_keep=${IMAGE_CHECK_CACHE_KEEP:-10GB}
min_free_gib=${IMAGE_CHECK_MIN_FREE_GIB:-12}
prune_build_cache() {
    # Docker 20.10's BuildKit can fail to prune a cache record it still
    # leases: not a failure of the images, so only said.
    "$DOCKER" builder prune --force --keep-storage "$cache_keep" >/dev/null 2>&1 \
        || note "(docker builder prune failed; the build cache was left as it was)"
}
prune_build_cache
data_root=$("$DOCKER" info --format '{{.DockerRootDir}}')
free_gib=$(df --output=avail -BG "$data_root" | tail -n 1 | tr -dc 0-9)
note "disk: $free_gib GiB free under $data_root (build cache kept to $cache_keep)"
[ "$free_gib" -ge "$min_free_gib" ] \
    || fail "only $free_gib GiB free under $data_root, Docker's data directory; the builds need about $min_free_gib GiB (IMAGE_CHECK_MIN_FREE_GIB). See what holds it with: $DOCKER system df"

# What the builds need from this machine to reach PyPI and Debian: extra CA
# certificates (a TLS-intercepting proxy) and pip's index, as build secrets;
# proxy variables as Docker's predefined build arguments (kept out of history).
export DOCKER_BUILDKIT=1
build_options=()
ca_file=${IMAGE_CA_FILE-/etc/ssl/certs/ca-certificates.crt}
if [ -n "$ca_file" ]; then
    [ -s "$ca_file" ] || fail "IMAGE_CA_FILE=$ca_file is not a file"
    build_options+=(--secret "id=cacert,src=$ca_file")
fi
index_url=${PIP_INDEX_URL:-$("$root/.venv/bin/python" -m pip config get global.index-url 2>/dev/null || true)}
if [[ "$index_url" == http* ]]; then
    printf '[global]\nindex-url = %s\n' "$index_url" >"$logs/pip.conf"
    build_options+=(--secret "id=pipconf,src=$logs/pip.conf")
fi
for name in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
    [ -z "${!name:-}" ] || build_options+=(--build-arg "$name")
done

# 3. The base.
start=$SECONDS
base=$("$root/docker/base-image.sh" 2>"$logs/base-image.log") \
    || { cat "$logs/base-image.log" >&2; fail "docker/base-image.sh"; }
sed 's/^/  /' "$logs/base-image.log"
note "base image $base: $((SECONDS - start)) s"

# 4. The images: README.md's commands, with the local base and this run's id
# (CHECK_RUN: the builder's tests run again even when the sources did not change).
cd "$root"
step "building predictor-builder (its make test runs inside; log: $logs/builder.log)"
timed builder "builder image (make test inside)" \
    "$DOCKER" build --progress=plain -f Dockerfile.builder \
    --build-arg BASE_IMAGE="$base" --build-arg CHECK_RUN="$(date -u +%Y%m%dT%H%M%S)-$$" \
    "${build_options[@]}" -t predictor-builder .
grep -E '^#[0-9]+ [0-9.]+ (=+ .*(passed|failed|error).* =+|SKIPPED|FAILED|ERROR)' "$logs/builder.log" \
    | sed 's/^#[0-9]* [0-9.]* /  builder: /' | tee -a "$summary" || true

step "building predictor:cpu (log: $logs/runtime.log)"
timed runtime "runtime image (cpu)" \
    "$DOCKER" build --progress=plain -f Dockerfile.runtime --build-arg VARIANT=cpu \
    --build-arg CPU_BASE_IMAGE="$base" "${build_options[@]}" -t predictor:cpu .

if [ "${IMAGE_CHECK_GPU:-}" = standin ]; then
    "$root/docker/gpu-standin.sh" "$base" "${build_options[@]}" | tee -a "$summary"
fi

# 5. The container.
step "smoke test of predictor:cpu (docker/smoke.py)"
if ! "$root/.venv/bin/python" "$root/docker/smoke.py" --image predictor:cpu --docker "$DOCKER" \
    --logs "$logs" | tee "$logs/smoke.log"; then
    fail "smoke test of predictor:cpu"
fi
note "container ready: $(awk '/^SMOKE-READY-S/ { print $2 }' "$logs/smoke.log") s"

# 6. Tidy up: containers (trap), dangling images, build cache over its bound.
"$DOCKER" image prune --force >/dev/null
prune_build_cache
note "images:"
# (docker trims the format's leading spaces: indent afterwards.)
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
    | { grep -E '^predictor' || true; } | sed 's/^/  /' | tee -a "$summary"
note "disk used by Docker: $("$DOCKER" system df --format '{{.Type}} {{.Size}}' | paste -sd, | sed 's/,/, /g')"
echo "=== image-check (engine) OK: both images built, the container passed its smoke test ==="
echo "    summary: $summary"
echo "The builder image's test run (make test inside, $logs/builder.log):"
grep -E '^#[0-9]+ [0-9.]+ =+ [0-9]+ passed.* =+$' "$logs/builder.log" | tail -n 1 | sed 's/^#[0-9]* [0-9.]* //'
