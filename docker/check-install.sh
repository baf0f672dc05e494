#!/usr/bin/env bash
# The no-engine stand-in for building and running the runtime image, for
# machines where no Docker engine can run (`make image-check` with
# IMAGE_CHECK=install; with an engine, docker/image-check.sh builds the images
# for real): the very steps of Dockerfile.runtime's last stage (CPU variant),
# on this machine, in a fresh temporary directory.
#
#   1. build the wheel from a clean copy of the sources, as the builder does;
#   2. docker/install-runtime.sh WHEEL constraints.txt cpu into a NEW virtualenv;
#   3. copy models/ into a working directory laid out like /srv/predictor;
#   4. start docker/entrypoint.sh there, with an environment holding only what
#      the image's ENV sets (REST_HOST and REST_PORT point at a free loopback port);
#   5. wait for the HEALTHCHECK command (`predictor healthcheck`) to pass, and
#      for /ready;
#   6. POST a real JPEG (a scene from `predictor data synth`, run through the
#      entrypoint too) and expect 200 JSON; check the 400 answer, the web page
#      (package data) and /metrics;
#   7. SIGTERM the server and expect exit code 0.
#
# Usage: docker/check-install.sh     (from anywhere; `make image-check IMAGE_CHECK=install`)
# Environment: PYTHON (default python3.11), CHECK_STARTUP_S (default 300),
# CHECK_STOP_S (default 90), CHECK_INSTALL_S (default 1200). pip's cache is
# used, as the image build uses its build cache, so that reruns are fast.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3.11}
startup_s=${CHECK_STARTUP_S:-300}
stop_s=${CHECK_STOP_S:-90}
install_s=${CHECK_INSTALL_S:-1200}

work=$(mktemp -d "${TMPDIR:-/tmp}/predictor-image-check.XXXXXX")
venv=$work/opt/predictor
srv=$work/srv/predictor
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

step() { printf '[image-check %4ds] %s\n' "$SECONDS" "$*"; }
fail() {
    printf '[image-check %4ds] FAILED: %s\n' "$SECONDS" "$*" >&2
    if [ -f "$work/server.log" ]; then
        echo "--- server log (last 40 lines) ---" >&2
        tail -n 40 "$work/server.log" >&2
    fi
    exit 1
}

for file in ssd300_digits_shapes-symbol.json ssd300_digits_shapes-0000.params synset.txt; do
    [ -f "$root/models/$file" ] || fail "models/$file is missing (make builds a stand-in: make image-check)"
done

# 1. The wheel, from a clean copy (a stale build/ in the work tree must not leak into it).
step "building the wheel ($python -m pip wheel)"
mkdir -p "$work/src" "$work/dist"
tar -C "$root" --exclude=__pycache__ -cf - \
    setup.py pyproject.toml MANIFEST.in README.md constraints.txt predictor \
    | tar -C "$work/src" -xf -
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$work/src"
cp "$root/constraints.txt" "$work/dist/"

# 2. The image's install step, with the same script, pins and argument shape.
step "docker/install-runtime.sh (cpu) into a new virtualenv"
PREDICTOR_VENV=$venv PYTHON=$python timeout "$install_s" \
    "$root/docker/install-runtime.sh" "$work"/dist/predictor-*.whl "$work/dist/constraints.txt" cpu \
    || fail "docker/install-runtime.sh"

# 3. WORKDIR /srv/predictor with the models, as the image has them.
mkdir -p "$srv"
cp -R "$root/models" "$srv/models"

port=$("$venv/bin/python" -c \
    'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Exactly the image's ENV (Dockerfile.runtime), but on loopback and a free port.
image_env=(
    PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    HOME="$srv"
    LANG=C.UTF-8
    PREDICTOR_VENV="$venv"
    PIP_DISABLE_PIP_VERSION_CHECK=1
    PYTHONDONTWRITEBYTECODE=1
    PYTHONUNBUFFERED=1
    REST_HOST=127.0.0.1
    REST_PORT="$port"
)
in_image() { (cd "$srv" && env -i "${image_env[@]}" "$@"); }

# A real JPEG, made by the installed package through the entrypoint.
in_image "$root/docker/entrypoint.sh" data synth --out "$work/scene" --images 1 --seed 11 \
    --no-progress >/dev/null || fail "entrypoint.sh data synth"
jpeg=$(find "$work/scene" -name '*.jpg' | head -n 1)
[ -n "$jpeg" ] || fail "data synth wrote no JPEG"

# 4. The entrypoint with no arguments: the server (exec, so $! is the server).
step "starting docker/entrypoint.sh on 127.0.0.1:$port"
(cd "$srv" && exec env -i "${image_env[@]}" "$root/docker/entrypoint.sh") >"$work/server.log" 2>&1 &
server_pid=$!

# 5. The image's HEALTHCHECK command, then readiness.
for path in /health /ready; do
    deadline=$((SECONDS + startup_s))
    until in_image "$venv/bin/predictor" healthcheck --path "$path" --timeout 2 2>/dev/null; do
        kill -0 "$server_pid" 2>/dev/null || fail "the server exited before $path answered"
        [ "$SECONDS" -lt "$deadline" ] || fail "$path did not answer 200 within ${startup_s}s"
        sleep 1
    done
    step "$path answers 200 (predictor healthcheck --path $path)"
done

# 6. The contract, over HTTP.
in_image "$venv/bin/python" - "http://127.0.0.1:$port" "$jpeg" <<'PY' || fail "HTTP checks"
import json
import sys
import urllib.error
import urllib.request

base, jpeg = sys.argv[1], sys.argv[2]


def call(method, path, body=None, content_type=None):
    request = urllib.request.Request(base + path, data=body, method=method)
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers.get_content_type(), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get_content_type(), error.read()


with open(jpeg, "rb") as file:
    photo = file.read()
status, kind, body = call("POST", "/predict", photo, "image/jpeg")
assert (status, kind) == (200, "application/json"), (status, kind, body[:200])
answer = json.loads(body)
assert isinstance(answer.get("prediction"), list), answer
keys = {"objectClass", "probability", "x", "y", "width", "height"}
assert all(set(item) == keys for item in answer["prediction"]), answer
print(f"POST /predict {len(photo)} bytes: 200, {len(answer['prediction'])} predictions")

status, kind, body = call("POST", "/predict", b"hello", "text/plain")
assert (status, json.loads(body)) == (400, {"error": "Invalid content"}), (status, body)
status, kind, body = call("GET", "/")
assert (status, kind) == (200, "text/html") and b"<html" in body.lower(), (status, kind)
status, kind, body = call("GET", "/static/app.js")
assert status == 200, status
status, kind, body = call("GET", "/metrics")
assert status == 200 and b"predictor_requests_total" in body, status
print("400 on a wrong content type; page, static files and /metrics: 200")
PY

# 7. Graceful stop.
step "SIGTERM"
kill -TERM "$server_pid"
deadline=$((SECONDS + stop_s))
while kill -0 "$server_pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || fail "the server did not stop within ${stop_s}s of SIGTERM"
    sleep 0.5
done
code=0
wait "$server_pid" || code=$?
server_pid=""
[ "$code" -eq 0 ] || fail "the server exited with $code after SIGTERM (expected 0)"
step "OK: installed, served, answered, stopped with exit code 0"
