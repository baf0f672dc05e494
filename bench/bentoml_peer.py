"""BentoML on loopback, for `make bench-compare`: `bench.bentoml_service` with adaptive batching.

BentoML lives in its own virtualenv, ``bench/.work/bentoml-venv``
(`bench.peer_venv`), with the project's numpy, MXNet and OpenCV for the
handler (BentoML 1.4 accepts numpy 1.23). It is started as its
documentation serves a service from source, ``bentoml serve
MODULE:Service``, on a loopback port with the service's arguments
(``--arg``), and stopped with SIGTERM to its process group (its supervisor
and worker processes). Clients upload the JPEG as multipart/form-data,
field ``images``, as BentoML's image APIs take files. Usage tracking is off
(``BENTOML_DO_NOT_TRACK``) and BentoML's home is a scratch folder.
"""

from __future__ import annotations

from bench.peer_handler import CONFIG_FILE, READY_PATTERN
from bench.peer_venv import ROOT, PeerServer, PeerVenv, wait_for_http, wait_for_lines

STARTUP_TIMEOUT_S = 300.0


class BentoMLServer(PeerServer):
    """``bentoml serve`` of one checkpoint; a context manager that always stops it.

    BentoML's adaptive batching has no maximum delay setting: ``max_batch_delay_ms``
    is not used.
    """

    venv = PeerVenv("bentoml", ("bentoml==1.4.40", "pillow==13.0.0"))
    decoder = "opencv"
    form_field = "images"

    def _start(self) -> None:
        home = self.home
        command = [str(self.venv.bin / "bentoml"), "serve", "bench.bentoml_service:SSD"]
        command += ["--working-dir", str(ROOT), "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--arg", f"config={self.model_dir / CONFIG_FILE}"]
        command += ["--arg", f"workers={self.workers}"]
        env = self.venv.environment(
            BENTOML_HOME=str(home / "bentoml-home"),
            BENTOML_DO_NOT_TRACK="True",
            TMPDIR=str(home),
        )
        process = self._spawn(command, env)
        ready = f"http://127.0.0.1:{self.port}/readyz"
        wait_for_http(ready, STARTUP_TIMEOUT_S, process.alive, self.logs)
        # /readyz answers once the first worker is up: wait for all of them.
        wait_for_lines(
            process.log, READY_PATTERN, self.workers, STARTUP_TIMEOUT_S, process.alive, self.logs
        )
