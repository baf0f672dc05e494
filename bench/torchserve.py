"""TorchServe on loopback, for `make bench-compare`: the same MXNet checkpoint in a custom handler.

TorchServe lives in its own virtualenv, ``bench/.work/torchserve-venv``
(`bench.peer_venv`), with the project's numpy, MXNet and OpenCV for the
handler. It is MMS's successor and kept MMS's custom-service API, archive,
configuration file and management API, so it runs the same
`bench.model_server_handler` and is started like `bench.mms.ModelServer`:
``torchserve --start --foreground`` with a ``config.properties``, the model
registered through the management API with TorchServe's own ``batch_size``,
``max_batch_delay`` and ``initial_workers`` (default: one worker per core,
TorchServe's own default on a CPU), stopped with SIGTERM to the frontend
(what ``torchserve --stop`` sends). In the ``as_deployed`` view the handler
decodes as TorchServe's vision handlers do: ``PIL.Image.open`` and a
bilinear resize.

Established on these machines (TorchServe 0.12.0, Java 17, Python 3.11):

- its worker imports ``torch`` (``ts/protocol/otf_message_handler.py``, to
  recognise tensor responses) and ``yaml``, neither of which the wheel
  declares, so both are installed into its venv. PyPI's ``torch`` wheel
  pulls in several GB of CUDA libraries; pip takes a ``+cpu`` build of the
  pinned release instead when one is on its find-links or extra index
  (``PIP_FIND_LINKS`` / ``PIP_EXTRA_INDEX_URL``). torch needs no numpy, so it
  shares the venv with MXNet's numpy 1.23;
- since 0.11 the token authorisation and the model-control API are off by
  default: ``disable_token_authorization`` and ``enable_model_api`` are set,
  loopback only;
- TorchServe also opens metrics and two gRPC ports (8082, 7070, 7071 by
  default): all are moved to free loopback ports;
- ``torch-model-archiver`` requires ``--version`` and takes the checkpoint
  as ``--extra-files``.
"""

from __future__ import annotations

from pathlib import Path

from bench.mms import HANDLER_FILE, ModelServer
from bench.peer_venv import PeerVenv, free_port

TORCHSERVE_PACKAGES = (
    "torchserve==0.12.0",
    "torch-model-archiver==0.12.0",
    "torch==2.13.0",
    "pyyaml==6.0.3",
    "pillow==13.0.0",
)


class TorchServe(ModelServer):
    """TorchServe serving one checkpoint with its own batching; a context manager that stops it."""

    venv = PeerVenv("torchserve", TORCHSERVE_PACKAGES)
    decoder = "pil"
    server_command = "torchserve"
    config_option = "--ts-config"

    def archiver_command(self) -> str:
        """TorchServe's own archiver."""
        return "torch-model-archiver"

    def archive_source(self, staging: Path) -> list[str]:
        """``torch-model-archiver``'s way: the handler file, the rest as extra files, a version."""
        extra = sorted(str(path) for path in staging.iterdir() if path.name != HANDLER_FILE.name)
        handler = str(staging / HANDLER_FILE.name)
        return ["--version", "1.0", "--handler", handler, "--extra-files", ",".join(extra)]

    def properties(self, store: Path) -> list[str]:
        """MMS's lines plus TorchServe's own ports and switches."""
        taken = {self.port, self.management_port}
        ports = []
        for _ in range(3):
            ports.append(free_port(exclude=taken))
            taken.add(ports[-1])
        metrics, grpc_inference, grpc_management = ports
        return [
            *super().properties(store),
            f"metrics_address=http://127.0.0.1:{metrics}",
            "grpc_inference_address=127.0.0.1",
            f"grpc_inference_port={grpc_inference}",
            "grpc_management_address=127.0.0.1",
            f"grpc_management_port={grpc_management}",
            "disable_token_authorization=true",
            "enable_model_api=true",
        ]
