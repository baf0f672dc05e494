"""Smoke test of the runtime image, against a real container (docker/image-check.sh).

Run on the host with the project's virtualenv (standard library only):

    .venv/bin/python docker/smoke.py --image predictor:cpu [--docker /usr/bin/docker]

1. The host's answer: `predictor serve` from the virtualenv on a free loopback
   port, the README's example JPEG posted to it.
2. The container: `docker run --read-only --tmpfs /tmp`, its port published on
   127.0.0.1 only (all traffic goes to loopback). Checks: /ready and the time
   to it; the example JPEG gives exactly the host's answer; a non-JPEG gives
   400 {"error": "Invalid content"}; the page and /metrics answer; the image's
   HEALTHCHECK turns the container healthy; PID 1 is the server, as uid/gid
   10001; the root file system is read-only.
3. `docker stop` under load: the container's CPU is capped (docker update
   --cpus) so that N concurrent requests take seconds; once all are sent and
   /metrics shows them admitted and not all answered, `docker stop` (SIGTERM,
   Docker's default 10 s). Every request must get a 200, several of them
   after the server logged the signal (so they were in flight when it came),
   and the server must exit 0 by itself.
4. A second container with MODEL_ENGINE=openvino: OpenVINO's libraries load in
   the image, and the example JPEG gives the host's answer to float32 rounding.
   Where the host's CPU has bfloat16 instructions, a third with
   MODEL_DTYPE=bfloat16 too: every detection of the host's above 0.6 again,
   same class, probability within 0.05, IoU >= 0.9.
The containers are removed in every case.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
# README's first example (the default model, COCO), and the digits model's picture,
# which the stop-under-load check sends: its small model keeps the load inside the grace period.
EXAMPLE = ROOT / "docs" / "examples" / "chelsea.jpg"
LOAD_EXAMPLE = ROOT / "docs" / "examples" / "three-circle-seven.jpg"
LOAD_PATH = "/predict?model=digits"
IMAGE_UID = 10001
LABEL = "predictor-image-check=1"


def log(message: str) -> None:
    print(f"[smoke] {message}", flush=True)


def fail(message: str) -> NoReturn:
    raise SystemExit(f"[smoke] FAILED: {message}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str | None = None,
    timeout: float = 60.0,
) -> tuple[int, str, bytes]:
    """(status, content type without parameters, body) of one request to 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        kind = (response.getheader("Content-Type") or "").split(";")[0].strip()
        return response.status, kind, data
    finally:
        conn.close()


def wait_ready(port: int, timeout_s: float, alive: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if call(port, "GET", "/ready", timeout=5)[0] == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        if not alive():
            fail(f"{what} exited before /ready answered 200")
        if time.monotonic() > deadline:
            fail(f"{what}: /ready did not answer 200 within {timeout_s:.0f} s")
        time.sleep(0.2)


def predict(port: int, jpeg: bytes) -> dict[str, Any]:
    status, kind, body = call(port, "POST", "/predict", jpeg, "image/jpeg")
    if (status, kind) != (200, "application/json"):
        fail(f"POST /predict: {status} {kind} {body[:200]!r}")
    answer: dict[str, Any] = json.loads(body)
    return answer


def host_answer(venv: Path, jpeg: bytes, logs: Path) -> dict[str, Any]:
    """The example's answer from `predictor serve` on this machine, default settings."""
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        "LANG": "C.UTF-8",
        "REST_HOST": "127.0.0.1",
        "REST_PORT": str(port),
    }
    with (logs / "host-server.log").open("wb") as out:
        server = subprocess.Popen(
            [str(venv / "bin" / "predictor"), "serve"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(port, 180, lambda: server.poll() is None, "the host server")
            return predict(port, jpeg)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)


class Container:
    def __init__(self, docker: str, image: str, env: dict[str, str] | None = None) -> None:
        self.docker = docker
        self.image = image
        self.env = env or {}
        suffix = "-".join(value.lower() for value in self.env.values())
        self.name = f"predictor-smoke-{os.getpid()}" + (f"-{suffix}" if suffix else "")
        self.port = 0

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.docker, *args], capture_output=True, text=True, check=False, timeout=120
        )
        if check and result.returncode != 0:
            fail(f"docker {' '.join(args)}: {result.stderr.strip()}")
        return result

    def inspect(self, template: str) -> str:
        return self.run("inspect", "--format", template, self.name).stdout.strip()

    def start(self) -> None:
        self.run(
            "run",
            "--detach",
            "--name",
            self.name,
            "--label",
            LABEL,
            "--read-only",
            "--tmpfs",
            "/tmp:rw,nosuid,nodev,size=64m",
            "--publish",
            "127.0.0.1::8080",
            *(f"--env={name}={value}" for name, value in self.env.items()),
            self.image,
        )
        published = self.run("port", self.name, "8080/tcp").stdout.split()[0]
        self.port = int(published.rsplit(":", 1)[1])

    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    def remove(self) -> None:
        self.run("rm", "--force", self.name, check=False)


@contextmanager
def removed_after(box: Container) -> Iterator[Container]:
    """``box``, removed when the block ends; the tail of its log printed if the block fails."""
    try:
        yield box
    except BaseException:
        logs = box.run("logs", "--tail", "40", box.name, check=False)
        print(f"--- {box.name} log (last 40 lines) ---", file=sys.stderr)
        print(logs.stdout + logs.stderr, file=sys.stderr)
        raise
    finally:
        box.remove()


def check_contract(box: Container, jpeg: bytes, expected: dict[str, Any]) -> None:
    answer = predict(box.port, jpeg)
    if answer != expected:
        fail(f"the container's answer differs from the host's:\n  {answer}\n  {expected}")
    log(f"example JPEG: the host's answer exactly ({len(answer['prediction'])} detections)")
    status, _, body = call(box.port, "POST", "/predict", b"hello", "text/plain")
    if (status, json.loads(body)) != (400, {"error": "Invalid content"}):
        fail(f"a non-JPEG: {status} {body!r}")
    status, kind, body = call(box.port, "GET", "/")
    if (status, kind) != (200, "text/html") or b"<html" not in body.lower():
        fail(f"GET /: {status} {kind}")
    status, _, body = call(box.port, "GET", "/metrics")
    if status != 200 or b"predictor_requests_total" not in body:
        fail(f"GET /metrics: {status}")
    log("non-JPEG: 400 Invalid content; GET /: 200 text/html; GET /metrics: 200")


def check_openvino_engine(
    args: argparse.Namespace, jpeg: bytes, expected: dict[str, Any], dtype: str = "float32"
) -> None:
    """MODEL_ENGINE=openvino in the image: OpenVINO's libraries load there, and the answer
    is the host's (MXNet's) to float32 rounding, or as close as bfloat16 gets."""
    what = f"MODEL_ENGINE=openvino MODEL_DTYPE={dtype}"
    env = {"MODEL_ENGINE": "openvino", "MODEL_DTYPE": dtype}
    with removed_after(Container(args.docker, args.image, env)) as box:
        box.start()
        wait_ready(box.port, args.startup_s, box.running, f"the {what} container")
        answer = predict(box.port, jpeg)["prediction"]
        want = expected["prediction"]
        if dtype == "float32":
            same = [a["objectClass"] for a in answer] == [w["objectClass"] for w in want] and all(
                abs(a["probability"] - w["probability"]) < 1e-3
                and all(abs(a[key] - w[key]) <= 1 for key in ("x", "y", "width", "height"))
                for a, w in zip(answer, want, strict=True)
            )
        else:
            same = all(
                any(
                    a["objectClass"] == w["objectClass"]
                    and abs(a["probability"] - w["probability"]) <= 0.05
                    and box_iou(a, w) >= 0.9
                    for a in answer
                )
                for w in want
                if w["probability"] > 0.6
            )
        if not same:
            fail(f"{what} answers otherwise:\n  {answer}\n  {want}")
        log(f"{what}: the host's answer to {dtype} rounding ({len(answer)} detections)")


def box_iou(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Intersection over union of two of the contract's boxes (x, y, width, height)."""
    width = min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"])
    height = min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"])
    inter = max(0, width) * max(0, height)
    union = a["width"] * a["height"] + b["width"] * b["height"] - inter
    return inter / union if union > 0 else 0.0


def cpu_has_bfloat16() -> bool:
    """Whether this (Linux) host's CPU has AMX or AVX-512 bfloat16 instructions."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def check_health(box: Container, timeout_s: float) -> float:
    start = time.monotonic()
    status = ""
    while time.monotonic() - start < timeout_s:
        status = box.inspect("{{if .State.Health}}{{.State.Health.Status}}{{end}}")
        if status == "healthy":
            return time.monotonic() - start
        if status == "unhealthy" or not box.running():
            break
        time.sleep(1)
    fail(f"HEALTHCHECK: status {status!r} after {time.monotonic() - start:.0f} s")


def check_user_and_read_only(box: Container) -> None:
    status = box.run("exec", box.name, "cat", "/proc/1/status").stdout
    ids = {
        key: [int(v) for v in rest.split()]
        for key, rest in re.findall(r"^(Uid|Gid):\s+(.*)$", status, flags=re.MULTILINE)
    }
    if ids.get("Uid") != [IMAGE_UID] * 4 or ids.get("Gid") != [IMAGE_UID] * 4:
        fail(f"PID 1 runs as {ids}, not uid/gid {IMAGE_UID}")
    cmdline = box.run("exec", box.name, "cat", "/proc/1/cmdline").stdout.replace("\0", " ")
    if "predictor" not in cmdline or "serve" not in cmdline:
        fail(f"PID 1 is not the server: {cmdline!r}")
    if box.inspect("{{.HostConfig.ReadonlyRootfs}}") != "true":
        fail("the root file system is not read-only")
    # /var/tmp is world-writable: only a read-only root stops the server's user there.
    attempt = box.run("exec", box.name, "touch", "/var/tmp/probe", check=False)
    if attempt.returncode == 0 or "Read-only file system" not in attempt.stderr:
        fail(f"writing /var/tmp succeeded or failed otherwise: {attempt.stderr.strip()!r}")
    box.run("exec", box.name, "touch", "/tmp/probe")  # the tmpfs is writable
    log(f"PID 1 is `{cmdline.strip()}`, uid/gid {IMAGE_UID}; root file system read-only")


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (e.g. every model's)."""
    total = 0.0
    pattern = rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$"
    for found, value in re.findall(pattern, text, flags=re.MULTILINE):
        have = dict(re.findall(r'(\w+)="([^"]*)"', found))
        if all(have.get(key) == wanted for key, wanted in labels.items()):
            total += float(value)
    return total


def log_time(line: str) -> float:
    """Seconds since the epoch of a `docker logs --timestamps` line."""
    stamp = line.split(" ", 1)[0]
    # Nanoseconds: datetime takes microseconds.
    stamp = re.sub(r"(\.\d{6})\d*Z$", r"\1+00:00", stamp).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


def check_stop_under_load(box: Container, jpeg: bytes, clients: int, cpus: str) -> None:
    box.run("update", "--cpus", cpus, box.name)
    sent = threading.Semaphore(0)
    results: list[tuple[int, float, bytes]] = []
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", box.port, timeout=120)
        try:
            conn.request("POST", LOAD_PATH, body=jpeg, headers={"Content-Type": "image/jpeg"})
            sent.release()
            response = conn.getresponse()
            body = response.read()
            outcome = (response.status, time.time(), body)
        except (OSError, http.client.HTTPException) as exc:
            sent.release()
            outcome = (0, time.time(), repr(exc).encode())
        finally:
            conn.close()
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for _ in threads:
        if not sent.acquire(timeout=60):
            fail("the load's requests could not be sent within 60 s")
    # All bodies are out; the server has admitted them once they are queued or answered.
    deadline = time.monotonic() + 30
    while True:
        text = call(box.port, "GET", "/metrics", timeout=30)[2].decode()
        queued = metric(text, "predictor_queue_depth")
        answered = metric(text, "predictor_requests_total", route="/predict", status="200")
        if queued > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    with lock:
        done_before = len(results)
    log(
        f"{clients} requests sent; /metrics: queue depth {queued:.0f}, "
        f"{answered:.0f} /predict answers so far (1 of them the contract check); "
        f"{done_before} of the load answered -> docker stop"
    )
    if done_before >= clients:
        fail("the load was answered before docker stop: nothing was in flight")
    start = time.monotonic()
    box.run("stop", box.name)
    stop_s = time.monotonic() - start
    for thread in threads:
        thread.join(timeout=60)
    statuses = sorted(status for status, _, _ in results)
    bad = [(s, b[:120]) for s, _, b in results if s != 200]
    if len(results) != clients or bad:
        fail(f"docker stop lost requests: {len(results)} of {clients} answered, not 200: {bad}")
    lines = box.run("logs", "--timestamps", box.name).stdout.splitlines()
    lines += box.run("logs", "--timestamps", box.name).stderr.splitlines()
    signalled = [line for line in lines if "SIGTERM received" in line]
    if not signalled:
        fail("the server did not log the SIGTERM")
    sigterm_at = log_time(signalled[0])
    after = sum(1 for _, done, _ in results if done > sigterm_at)
    code = box.inspect("{{.State.ExitCode}}")
    if code != "0":
        fail(f"the server exited with {code} after docker stop (expected 0)")
    if after < 1:
        fail("no request was answered after the SIGTERM: none provably in flight")
    stopped = [line.split(" ", 1)[1] for line in lines if "admitted since start" in line]
    log(
        f"docker stop took {stop_s:.1f} s, exit code 0; {after} of {clients} requests were "
        f"answered after the server logged SIGTERM, all {clients} with 200 "
        f"({statuses.count(200)}); server: {stopped[-1].strip() if stopped else '?'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--docker", default="docker")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    parser.add_argument("--logs", type=Path, default=ROOT / "build" / "image-check")
    parser.add_argument("--startup-s", type=float, default=180)
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--cpus", default="0.25", help="CPU cap during the stop test")
    args = parser.parse_args(argv)
    args.logs.mkdir(parents=True, exist_ok=True)
    jpeg = EXAMPLE.read_bytes()

    expected = host_answer(args.venv, jpeg, args.logs)
    log(f"host answer for {EXAMPLE.relative_to(ROOT)}: {json.dumps(expected)}")

    with removed_after(Container(args.docker, args.image)) as box:
        start = time.monotonic()
        box.start()
        wait_ready(box.port, args.startup_s, box.running, "the container")
        ready_s = time.monotonic() - start
        log(f"container {box.name} ({args.image}) ready in {ready_s:.1f} s (127.0.0.1:{box.port})")
        check_contract(box, jpeg, expected)
        check_user_and_read_only(box)
        healthy_s = check_health(box, 120)
        log(f"HEALTHCHECK: healthy {healthy_s:.0f} s after /ready")
        check_stop_under_load(box, LOAD_EXAMPLE.read_bytes(), args.clients, args.cpus)
        print(f"SMOKE-READY-S {ready_s:.1f}")
    check_openvino_engine(args, jpeg, expected)
    if cpu_has_bfloat16():
        check_openvino_engine(args, jpeg, expected, "bfloat16")
    else:
        log("MODEL_DTYPE=bfloat16: not checked, this CPU has no bfloat16 instructions")
    log("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
