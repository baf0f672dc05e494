"""MXNet Model Server (`multi-model-server`) on loopback, for `make bench-compare`.

MMS lives in its own virtualenv, ``bench/.work/mms-venv`` (`bench.peer_venv`),
with the project's numpy, MXNet and OpenCV. It runs `bench.model_server_handler`
with its own batching (``batch_size``, ``max_batch_delay``) and its own
default of one worker per CPU core; in the ``as_deployed`` view the handler
decodes as MMS's MXNet vision service template does (``mx.image.imdecode``,
``mx.image.imresize``).

Known requirements, established on these machines:

- the model is packed with ``model-archiver`` *without* ``--runtime python3``
  (that makes MMS start the system Python instead of the venv's, and the
  worker dies); ``--archive-format no-archive`` skips zipping the weights;
- batching (``batch_size``, ``max_batch_delay``) can only be set when the
  model is registered through the management API;
- ``TMPDIR`` points at a scratch folder. The server runs with ``--foreground``
  as a child of the benchmark and is stopped with SIGTERM to the frontend,
  which is what ``multi-model-server --stop`` sends.

TorchServe (`bench.torchserve`) is MMS's successor and keeps its archive,
configuration file and management API: it subclasses `ModelServer`.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from bench.peer_venv import ROOT, PeerServer, PeerVenv, free_port, wait_for_http

MODEL_NAME = "ssd"
HANDLER_FILE = ROOT / "bench" / "model_server_handler.py"
STARTUP_TIMEOUT_S = 180.0
REGISTER_TIMEOUT_S = 600.0
RESPONSE_TIMEOUT_S = 600


class ModelServer(PeerServer):
    """MMS serving one checkpoint with its own batching; a context manager that always stops it."""

    venv = PeerVenv("mms", ("multi-model-server==1.1.11", "model-archiver==1.0.3"))
    decoder = "mxnet"
    server_command = "multi-model-server"
    config_option = "--mms-config"
    endpoint_path = f"/predictions/{MODEL_NAME}"

    management_port = 0

    def _start(self) -> None:
        home, staging = self.home, self.model_dir
        store, tmp = home / "store", home / "tmp"
        for folder in (store, tmp):
            folder.mkdir()
        shutil.copyfile(HANDLER_FILE, staging / HANDLER_FILE.name)
        archive = ["--model-name", MODEL_NAME, *self.archive_source(staging)]
        archive += ["--export-path", str(store), "--archive-format", "no-archive", "--force"]
        subprocess.run(
            [str(self.venv.bin / self.archiver_command()), *archive], check=True, cwd=home
        )
        self.management_port = free_port(exclude={self.port})
        config = home / "config.properties"
        config.write_text("\n".join(self.properties(store)) + "\n", encoding="utf-8")
        command = [str(self.venv.bin / self.server_command), "--start", "--foreground"]
        command += [self.config_option, str(config), "--model-store", str(store)]
        env = self.venv.environment(TMPDIR=str(tmp), TEMP=str(tmp))
        process = self._spawn(command, env)
        ping = f"http://127.0.0.1:{self.port}/ping"
        wait_for_http(ping, STARTUP_TIMEOUT_S, process.alive, self.logs)
        self._register()

    def archiver_command(self) -> str:
        """The archiver of this server's own distribution."""
        return "model-archiver"

    def archive_source(self, staging: Path) -> list[str]:
        """What the archiver packs (unzipped, into the model store): the staged folder."""
        return ["--model-path", str(staging), "--handler", HANDLER_FILE.stem]

    def properties(self, store: Path) -> list[str]:
        """The lines of ``config.properties``."""
        return [
            f"inference_address=http://127.0.0.1:{self.port}",
            f"management_address=http://127.0.0.1:{self.management_port}",
            f"model_store={store}",
            f"default_response_timeout={RESPONSE_TIMEOUT_S}",
            "job_queue_size=1000",
            # The same body limit as predictor's MAX_BODY_BYTES default (MMS: 6.5 MB).
            "max_request_size=20971520",
            "max_response_size=20971520",
            f"default_workers_per_model={self.workers}",
            "enable_envvars_config=false",
        ]

    def _register(self) -> None:
        query = urllib.parse.urlencode(
            {
                "url": MODEL_NAME,
                "model_name": MODEL_NAME,
                "batch_size": self.config.batch_size,
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
                f"{self.server_command} refused the model ({error.code}): {error.read()!r}; "
                f"{self.logs()}"
            ) from None
        if "Workers scaled" not in answer and "registered" not in answer:
            raise RuntimeError(f"registration answered {answer}; {self.logs()}")
