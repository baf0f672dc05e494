"""Ray Serve on loopback, for `make bench-compare`: `bench.rayserve_app` with ``@serve.batch``.

Ray lives in its own virtualenv, ``bench/.work/rayserve-venv``
(`bench.peer_venv`), with the project's numpy, MXNet and OpenCV for the
handler (Ray 2.60 accepts numpy 1.23). The application is described by a
Serve config file, as Ray's production guide describes one (HTTP options,
the application's import path and arguments, the deployment's
``num_replicas`` and ``max_ongoing_requests``), and run with ``serve run
CONFIG``, which starts a single-node Ray cluster in its own process tree
and deploys the file; Ctrl-C (SIGINT to ``serve run``) shuts Serve and the
cluster down. (``ray start`` + ``serve deploy`` would run the same
machinery as daemons that only ``ray stop``, which ends every Ray process
on the machine, can stop.)

Settings: one replica per core (``ray_actor_options`` default: one CPU
each), ``max_batch_size`` = the benchmark's batch size,
``batch_wait_timeout_s`` = its delay, and ``max_ongoing_requests`` at Serve's
default (5) or the batch size if larger, as Serve's batching guide asks.
Usage statistics are off (``RAY_USAGE_STATS_ENABLED=0``); Ray's session
files go to a scratch folder (``RAY_TMPDIR``).
"""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
from pathlib import Path

from bench.peer_handler import CONFIG_FILE, READY_PATTERN
from bench.peer_venv import ROOT, PeerServer, PeerVenv, wait_for_http, wait_for_lines

STARTUP_TIMEOUT_S = 600.0
DEFAULT_MAX_ONGOING_REQUESTS = 5  # Ray Serve's own default
APP_ROUTE = "/predict"


class RayServe(PeerServer):
    """``serve run`` of one checkpoint; a context manager that always stops it."""

    venv = PeerVenv("rayserve", ("ray[serve]==2.60.0", "pillow==13.0.0"))
    decoder = "pil"
    endpoint_path = APP_ROUTE
    stop_signal = signal.SIGINT
    stop_group = False
    _ray_tmp: Path | None = None

    def _start(self) -> None:
        config = self.home / "serve_config.json"
        config.write_text(json.dumps(self.serve_config(), indent=1) + "\n", encoding="utf-8")
        # Ray's socket paths must stay short (107 bytes): its session folder goes under /tmp.
        self._ray_tmp = Path(tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp"))
        env = self.venv.environment(
            PYTHONPATH=str(ROOT),
            RAY_TMPDIR=str(self._ray_tmp),
            RAY_USAGE_STATS_ENABLED="0",
            # Ray holds back lines that differ only by numbers, such as the replicas' ready lines.
            RAY_DEDUP_LOGS="0",
        )
        process = self._spawn([str(self.venv.bin / "serve"), "run", str(config)], env)
        # Serve lists the route as soon as the application is built, before its replicas are
        # up; each replica says when it is (Ray forwards it to serve run's output).
        wait_for_lines(
            process.log, READY_PATTERN, self.workers, STARTUP_TIMEOUT_S, process.alive, self.logs
        )
        routes = f"http://127.0.0.1:{self.port}/-/routes"
        deployed = APP_ROUTE.encode()
        wait_for_http(
            routes, STARTUP_TIMEOUT_S, process.alive, self.logs, accept=lambda b: deployed in b
        )

    def stop(self) -> None:
        """Ctrl-C to ``serve run``, then make sure (`PeerServer.stop`); drop Ray's session files."""
        super().stop()
        if self._ray_tmp is not None:
            shutil.rmtree(self._ray_tmp, ignore_errors=True)
            self._ray_tmp = None

    def serve_config(self) -> dict[str, object]:
        """The Serve config file (its YAML schema, written as JSON, which YAML reads)."""
        return {
            "proxy_location": "HeadOnly",
            "http_options": {"host": "127.0.0.1", "port": self.port},
            "applications": [
                {
                    "name": "ssd",
                    "route_prefix": APP_ROUTE,
                    "import_path": "bench.rayserve_app:build",
                    "args": {
                        "config": str(self.model_dir / CONFIG_FILE),
                        "batch_size": self.config.batch_size,
                        "batch_wait_timeout_s": self.max_batch_delay_ms / 1000.0,
                    },
                    "deployments": [
                        {
                            "name": "SSD",
                            "num_replicas": self.workers,
                            "max_ongoing_requests": max(
                                DEFAULT_MAX_ONGOING_REQUESTS, self.config.batch_size
                            ),
                        }
                    ],
                }
            ],
        }
