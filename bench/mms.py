"""MXNet Model Server (`multi-model-server`) on loopback, for `make bench-compare`.

MMS lives in its own virtualenv, ``bench/.work/mms-venv``, created here on
first use with pip and the project's `constraints.txt` (same numpy, MXNet and
OpenCV as ours). It is kept out of the project's venv because it brings a
Java launcher, Pillow, psutil, ``future`` and ``model-archiver``, none of
which the server or its runtime image need.

Known requirements, established on these machines:

- the model is packed with ``model-archiver`` *without* ``--runtime python3``
  (that makes MMS start the system Python instead of the venv's, and the
  worker dies); ``--archive-format no-archive`` skips zipping the weights;
- batching (``batch_size``, ``max_batch_delay``) can only be set when the
  model is registered through the management API;
- ``TMPDIR`` points at a scratch folder; ``multi-model-server --stop`` stops it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType

from predictor.checkpoint import Checkpoint

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
VENV = WORK / "mms-venv"
MMS_PACKAGES = ("multi-model-server==1.1.11", "model-archiver==1.0.3")
# What the handler needs, at the project's pins (-c constraints.txt).
HANDLER_PACKAGES = ("mxnet", "numpy", "opencv-python-headless", "pylibjpeg-libjpeg")
MODEL_NAME = "ssd"
STARTUP_TIMEOUT_S = 180.0
REGISTER_TIMEOUT_S = 600.0


def ensure_venv() -> Path:
    """The MMS virtualenv, created and installed on first use; returns its bin folder."""
    bin_dir = VENV / "bin"
    stamp = VENV / ".installed"
    wanted = "\n".join((*MMS_PACKAGES, *HANDLER_PACKAGES))
    if stamp.is_file() and stamp.read_text(encoding="utf-8") == wanted:
        return bin_dir
    if not (bin_dir / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "--quiet"]
    constraints = ["-c", str(ROOT / "constraints.txt")]
    subprocess.run([*pip, *constraints, "pip"], check=True)
    subprocess.run([*pip, *constraints, *MMS_PACKAGES, *HANDLER_PACKAGES], check=True)
    stamp.write_text(wanted, encoding="utf-8")
    return bin_dir


# MMS refuses ports from the kernel's ephemeral range ("Invalid port number"
# for 58797): pick below it.
PORT_RANGE = (20000, 32000)


def free_port(exclude: int = 0) -> int:
    """A loopback port in `PORT_RANGE` free right now (MMS takes fixed ports from its config)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(*PORT_RANGE)
        if port == exclude:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


class ModelServer:
    """MMS serving one checkpoint with its own batching; a context manager that always stops it.

    ``prefix`` is the checkpoint (``PREFIX-symbol.json``, ``-0000.params``,
    ``synset.txt`` beside it), run by `bench.mms_handler` at ``edge``, with
    ``model_code`` "plain" or "predictor" (see `bench.plain_model`).
    """

    def __init__(
        self,
        prefix: Path,
        edge: int,
        batch_size: int,
        max_batch_delay_ms: int,
        # MMS's own default: one worker per CPU core (its docs' default_workers_per_model).
        workers: int = os.cpu_count() or 1,
        response_timeout_s: int = 600,
        model_code: str = "plain",
    ) -> None:
        self.prefix = prefix
        self.model_code = model_code
        self.edge = edge
        self.batch_size = batch_size
        self.max_batch_delay_ms = max_batch_delay_ms
        self.workers = workers
        self.response_timeout_s = response_timeout_s
        self.home = WORK / "mms"
        self.inference_port = 0
        self.management_port = 0
        self._bin = VENV / "bin"
        self._env: dict[str, str] = {}

    @property
    def url(self) -> str:
        """The prediction endpoint (POST the JPEG as the body)."""
        return f"http://127.0.0.1:{self.inference_port}/predictions/{MODEL_NAME}"

    def __enter__(self) -> ModelServer:
        self._bin = ensure_venv()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self) -> None:
        if self.home.exists():
            shutil.rmtree(self.home)
        store, tmp, staging = self.home / "store", self.home / "tmp", self.home / "staging"
        for folder in (store, tmp, staging):
            folder.mkdir(parents=True)
        self._stage_model(staging)
        subprocess.run(
            [
                str(self._bin / "model-archiver"),
                "--model-name",
                MODEL_NAME,
                "--model-path",
                str(staging),
                "--handler",
                "mms_handler",
                "--export-path",
                str(store),
                "--archive-format",
                "no-archive",
                "--force",
            ],
            check=True,
            cwd=self.home,
        )
        self.inference_port = free_port()
        self.management_port = free_port(exclude=self.inference_port)
        config = self.home / "config.properties"
        config.write_text(
            "\n".join(
                [
                    f"inference_address=http://127.0.0.1:{self.inference_port}",
                    f"management_address=http://127.0.0.1:{self.management_port}",
                    f"model_store={store}",
                    f"default_response_timeout={self.response_timeout_s}",
                    "job_queue_size=1000",
                    # The same body limit as predictor's MAX_BODY_BYTES default (MMS: 6.5 MB).
                    "max_request_size=20971520",
                    "max_response_size=20971520",
                    f"default_workers_per_model={self.workers}",
                    "enable_envvars_config=false",
                ]
            )
            + "\n",
            encoding="utf-8",
        )
        self._env = {
            **os.environ,
            "TMPDIR": str(tmp),
            "PATH": f"{self._bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "VIRTUAL_ENV": str(VENV),
        }
        subprocess.run(
            [
                str(self._bin / "multi-model-server"),
                "--start",
                "--mms-config",
                str(config),
                "--model-store",
                str(store),
            ],
            check=True,
            cwd=self.home,
            env=self._env,
            stdout=subprocess.DEVNULL,
        )
        self._wait_until_up()
        self._register()

    def _stage_model(self, staging: Path) -> None:
        """Checkpoint, class names, the handler and its configuration in one folder."""
        name = self.prefix.name
        source, packed = Checkpoint(self.prefix), Checkpoint(staging / name)
        pairs = [(source.symbol_path, packed.symbol_path), (source.params_path, packed.params_path)]
        pairs.append((source.synset_path, packed.synset_path))
        if source.preprocess_path.is_file():
            pairs.append((source.preprocess_path, packed.preprocess_path))
        for original, copy in pairs:
            shutil.copyfile(original, copy)
        shutil.copyfile(ROOT / "bench" / "mms_handler.py", staging / "mms_handler.py")
        handler_config = {
            "repo_root": str(ROOT),
            "prefix_name": name,
            "edge": self.edge,
            "batch_size": self.batch_size,
            "model_code": self.model_code,
        }
        (staging / "handler_config.json").write_text(json.dumps(handler_config), encoding="utf-8")

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.inference_port}/ping", timeout=5
                ) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(
            f"MMS did not answer /ping within {STARTUP_TIMEOUT_S:g} s: {self.logs()}"
        )

    def _register(self) -> None:
        query = urllib.parse.urlencode(
            {
                "url": MODEL_NAME,
                "model_name": MODEL_NAME,
                "batch_size": self.batch_size,
                "max_batch_delay": self.max_batch_delay_ms,
                "initial_workers": self.workers,
                "synchronous": "true",
            }
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.management_port}/models?{query}", method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=REGISTER_TIMEOUT_S) as response:
                answer = response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as error:
            raise RuntimeError(
                f"MMS refused the model ({error.code}): {error.read()!r}; {self.logs()}"
            ) from None
        if "Workers scaled" not in answer and "registered" not in answer:
            raise RuntimeError(f"MMS registration answered {answer}; {self.logs()}")

    def logs(self, lines: int = 30) -> str:
        """The end of MMS's own log, for error messages."""
        log = self.home / "logs" / "mms_log.log"
        if not log.is_file():
            return "(no MMS log)"
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """``multi-model-server --stop``; harmless when it is not running."""
        if not (self._bin / "multi-model-server").exists():
            return
        subprocess.run(
            [str(self._bin / "multi-model-server"), "--stop"],
            cwd=self.home if self.home.exists() else WORK,
            env=self._env or None,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        # --stop only signals the JVM: wait until its port is closed, so that
        # the next contender does not share the CPU with a dying MMS.
        deadline = time.monotonic() + 30.0
        while self.inference_port and time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.inference_port)) != 0:
                    break
            time.sleep(0.2)
