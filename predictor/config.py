"""Server configuration: one typed object, built once from the environment.

Every setting is an environment variable. The first block keeps the names and
defaults of the service this one replaces; the rest are new and follow the
same style. A malformed value stops start-up with a `ConfigError` naming the
variable: there are no silent fallbacks.

Variable             Default                  Meaning
-------------------  -----------------------  ------------------------------------------
REST_HOST            0.0.0.0                  bind address
REST_PORT            8080                     TCP port (0: any free port)
REST_ENTRY_POINT     /predict                 path of the detection endpoint (not /health,
                                              /ready, /metrics, /info, /openapi.json, or
                                              under /static or /v2)
PROBABILITY_MORE     0.5                      keep detections with probability above this
MODELS               coco=models/coco_nanodet/ several models: NAME=PREFIX pairs separated by
                     nanodet,digits=models/   commas; the first is the default; not with
                     ssd300_digits_shapes     MODEL_PREFIX, MODEL_NAME or MODEL_EDGE. The
                     (the shipped models)     default applies when none of the four is set
MODEL_PREFIX         models/ssd300_digits_shapes
                                              checkpoint prefix: PREFIX-symbol.json,
                                              PREFIX-EPOCH.params, synset.txt beside it,
                                              PREFIX-preprocess.json (optional)
MODEL_EPOCH          0                        checkpoint epoch (of every model)
MODEL_NAME           MODEL_PREFIX's base      the model's name in the Open Inference Protocol
                     name (shipped model:     v2 routes (/v2/models/NAME/...) and ?model=:
                     ssd300_digits_shapes)    letters, digits, '_', '.', '-'; at most 128
MODEL_EDGE           (the checkpoint's        square input edge; overrides the size that
                     declaration; 512 when    PREFIX-preprocess.json declares
                     it has none)
MODEL_CONTEXT_GPU    false                    true: GPU 0; "0,1": those GPUs, one model
                                              replica each; false: the CPU
MODEL_CPU_REPLICAS   1                        model replicas on the CPU (not with GPUs)
MODEL_CPU_THREADS    (MXNet's: half the CPUs) OpenMP threads of each CPU forward pass;
                                              the cores for a network whose forward pass
                                              is most of the work (see predictor/runtime/threads.py)
MXNET_CPU_TEMP_COPY  MODEL_CPU_REPLICAS       MXNet's own variable: how many temporary
                     (MXNet's default: 4)     workspaces its CPU operators share; each
                                              grows to the largest scratch asked of it
                                              and keeps it. One per forward pass that
                                              may run at once (predictor/runtime/memory.py)
MODEL_DTYPE          float32                  float32; int8 (CPU only: a checkpoint written
                                              by `predictor quantize`); float16 (GPU only:
                                              mixed precision, AMP); bfloat16 (CPU with
                                              AMX or AVX-512 BF16, MODEL_ENGINE=openvino:
                                              the trunk in bfloat16, the rest float32)
MODEL_ENGINE         mxnet                    what runs the forward pass: mxnet; openvino
                                              (float32 or bfloat16 on the CPU: OpenVINO
                                              runs the convolutional trunk, MXNet the
                                              rest; see predictor/runtime/openvino_trunk.py)
MODEL_GRAPH_PER_BATCH_SIZE
                     true                     true: one planned graph per batch size
                                              (1..BATCH_MAX_SIZE), sharing the weights;
                                              false: one graph, re-planned whenever the
                                              size changes (less memory, slower; see
                                              predictor/runtime/model.py)
BATCH_MAX_SIZE       8                        most images in one forward pass
BATCH_MAX_DELAY_MS   5                        longest the oldest image in a batch waits
                                              for the batch to fill
BATCH_BACKLOG_DELAY_MS
                     50                       the same under a backlog (a further whole
                                              batch admitted and decoding); never less
                                              than BATCH_MAX_DELAY_MS (0: no longer wait);
                                              see predictor/service/batching.py
QUEUE_MAX            64                       images admitted but not yet in a forward
                                              pass; beyond it requests get 503
MAX_BODY_BYTES       20971520 (20 MiB)        larger bodies get 413
MAX_IMAGE_PIXELS     50000000                 larger images (read from the JPEG header,
                                              before decoding) get 413
PREPROCESS_WORKERS   number of CPU cores      threads decoding and resizing images
PREPROCESS_NICE      10                       how much lower than the forward pass those
                                              threads' CPU priority is (Linux nice steps,
                                              0-19; 0: the same); see predictor/runtime/threads.py
REQUEST_TIMEOUT_MS   10000                    longest an image may wait, from the moment its
                                              body has arrived, for its forward pass to
                                              begin (decoding included); past it: 504 and
                                              the image is never computed
SHUTDOWN_GRACE_S     8                        on SIGTERM/SIGINT, how long admitted requests
                                              may take to finish (below Docker's default
                                              10 s stop timeout); then 503 and exit 0
HEADER_TIMEOUT_S     10                       longest a new connection may take to send
                                              its first request's headers; then it is
                                              closed (a slowloris holds nothing for long)
BODY_TIMEOUT_S       60                       longest a request's body may take to arrive,
                                              from the end of its headers; then 408 and
                                              the connection is closed
KEEPALIVE_TIMEOUT_S  75                       how long an idle keep-alive connection (or
                                              one whose next request's headers are still
                                              incomplete) stays open; above the 60 s idle
                                              timeout of common load balancers
MAX_CONNECTIONS      1000                     open client connections; a connection beyond
                                              it gets 503 (Retry-After) and is closed
API_KEY              (unset)                  when set, detection requests need
                                              "Authorization: Bearer <key>" (else 401);
                                              at least 16 visible ASCII characters
METRICS_REQUIRE_KEY  false                    true: /metrics needs the API key too
                                              (requires API_KEY)
MEMORY_TRIM_INTERVAL_S
                     10                       how often the server collects cyclic garbage
                                              and gives the C heap's free pages back to
                                              the system (seconds; 0: never); see
                                              predictor/runtime/memory.py
LOG_LEVEL            INFO                     DEBUG, INFO, WARNING or ERROR
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal, TypeVar

from predictor.checkpoint import Checkpoint
from predictor.errors import ConfigError

SHIPPED_MODEL_PREFIX = "models/ssd300_digits_shapes"
SHIPPED_MODEL_EDGE = 300
# The COCO detector converted from TensorFlow.js (models/coco_nanodet/NOTICE).
SHIPPED_COCO_PREFIX = "models/coco_nanodet/nanodet"
# What a server with no model settings serves: both shipped models, COCO first.
DEFAULT_MODELS = f"coco={SHIPPED_COCO_PREFIX},digits={SHIPPED_MODEL_PREFIX}"

# Paths the service answers itself (GET), which the detection endpoint may not take.
# "/" is allowed: the page answers GET there, the endpoint POST.
RESERVED_PATHS = frozenset({"/health", "/ready", "/metrics", "/info", "/openapi.json"})
STATIC_PREFIX = "/static"
# The Open Inference Protocol v2 routes (`predictor.http.v2`) live under this prefix.
V2_PREFIX = "/v2"
# A model name is one URL path segment that every v2 client can put in a URL
# unquoted (Triton's and KServe's clients quote it, curl users do not).
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

# Numeric types a model may run in; see `Settings.model_dtype`.
MODEL_DTYPES = ("float32", "int8", "float16", "bfloat16")
MODEL_ENGINES = ("mxnet", "openvino")
# The MODEL_DTYPEs MODEL_ENGINE=openvino runs (predictor/runtime/openvino_trunk.py).
OPENVINO_DTYPES = ("float32", "bfloat16")

T = TypeVar("T")


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve: its name and checkpoint."""

    name: str
    prefix: Path
    epoch: int = 0
    # MODEL_EDGE: a square input size overriding the checkpoint's declaration.
    edge: int | None = None


@dataclass(frozen=True)
class Device:
    """The device one model replica runs on."""

    kind: Literal["cpu", "gpu"]
    index: int = 0

    def __str__(self) -> str:
        """MXNet's spelling of its context, e.g. ``cpu(0)`` or ``gpu(1)``."""
        return f"{self.kind}({self.index})"


@dataclass(frozen=True)
class DeviceSpec:
    """Where model replicas run: the CPU (``gpus`` empty) or these GPU indices."""

    gpus: tuple[int, ...] = ()
    cpu_replicas: int = 1

    def describe(self) -> str:
        """Human-readable summary for logs and the CLI."""
        if self.gpus:
            return "gpu(" + ",".join(str(g) for g in self.gpus) + ")"
        return f"cpu x{self.cpu_replicas}"


@dataclass(frozen=True)
class Settings:
    """Every knob of the server, validated. Build it with `Settings.from_env`."""

    host: str = "0.0.0.0"
    port: int = 8080
    entry_point: str = "/predict"
    probability_threshold: float = 0.5
    model_prefix: Path = Path(SHIPPED_MODEL_PREFIX)
    model_epoch: int = 0
    # None: the base name of model_prefix (see `served_model_name`).
    model_name: str | None = None
    # None: the size the checkpoint declares (512 when it declares none).
    model_edge: int | None = None
    # MODELS; empty: the one model of MODEL_PREFIX (see `models`).
    model_list: tuple[ModelSpec, ...] = ()
    devices: DeviceSpec = field(default_factory=DeviceSpec)
    # None: MXNet's default, half the CPUs (predictor/runtime/threads.py says when to set it).
    model_cpu_threads: int | None = None
    # MXNET_CPU_TEMP_COPY; None: one per CPU replica (see `cpu_temp_workspaces`).
    mxnet_cpu_temp_copy: int | None = None
    # int8 runs oneDNN's quantized kernels (CPU); float16 runs AMP (GPU); bfloat16 runs the
    # trunk on OpenVINO in bfloat16 (CPU with bfloat16 instructions, model_engine openvino).
    model_dtype: str = "float32"
    # openvino: the convolutional trunk on OpenVINO (float32 or bfloat16, CPU); mxnet: all of
    # it on MXNet.
    model_engine: str = "mxnet"
    model_graph_per_batch_size: bool = True
    batch_max_size: int = 8
    batch_max_delay_ms: float = 5.0
    batch_backlog_delay_ms: float = 50.0
    queue_max: int = 64
    max_body_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    preprocess_workers: int = max(1, os.cpu_count() or 1)
    # Decoding gives way to the forward pass's OpenMP team (predictor/runtime/threads.py).
    preprocess_nice: int = 10
    request_timeout_ms: float = 10_000.0
    shutdown_grace_s: float = 8.0
    # Slow and abusive clients (predictor/http/connections.py).
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keepalive_timeout_s: float = 75.0
    max_connections: int = 1000
    # repr=False: the key must never reach a log line, an error message or a traceback.
    api_key: str | None = field(default=None, repr=False)
    metrics_require_key: bool = False
    # The periodic collection and malloc_trim (predictor/runtime/memory.py); 0: never.
    memory_trim_interval_s: float = 10.0
    log_level: str = "INFO"

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, str] | None = None,
    ) -> Settings:
        """Read and validate every setting; raise `ConfigError` naming the culprit.

        ``environ`` defaults to the process environment; ``overrides`` (from
        command-line flags) take precedence over it, variable by variable.
        """
        env = {**(os.environ if environ is None else environ), **(overrides or {})}
        reader = _EnvReader(env)
        prefix_raw = env.get("MODEL_PREFIX", "").strip()
        model_prefix = Path(prefix_raw or SHIPPED_MODEL_PREFIX)
        unnamed: str | None = None
        model_name = reader.get("MODEL_NAME", parse_model_name, unnamed)
        no_edge: int | None = None
        model_edge = reader.get("MODEL_EDGE", _int_in(32, 4096), no_edge)
        model_epoch = reader.get("MODEL_EPOCH", _int_in(0, 9999), 0)
        no_models: tuple[ModelSpec, ...] = ()
        model_list = reader.get("MODELS", partial(parse_models, epoch=model_epoch), no_models)
        if not model_list and not (prefix_raw or model_name or model_edge):
            model_list = parse_models(DEFAULT_MODELS, epoch=model_epoch)
        if model_list:
            given = [
                name
                for name, value in (
                    ("MODEL_PREFIX", prefix_raw),
                    ("MODEL_NAME", model_name),
                    ("MODEL_EDGE", model_edge),
                )
                if value
            ]
            if given:
                raise ConfigError(
                    f"MODELS is set: {' and '.join(given)} configure a single model; "
                    "name each checkpoint in MODELS instead (each declares its input size "
                    "in PREFIX-preprocess.json)"
                )
            model_prefix = model_list[0].prefix
            model_name = model_list[0].name
        if model_name is None:
            model_name = _default_model_name(model_prefix)
        no_gpus: tuple[int, ...] = ()
        gpus = reader.get("MODEL_CONTEXT_GPU", _parse_gpus, no_gpus)
        no_key: str | None = None
        api_key = reader.get("API_KEY", _parse_api_key, no_key, secret=True)
        metrics_require_key = reader.get("METRICS_REQUIRE_KEY", _parse_bool, False)
        if metrics_require_key and api_key is None:
            raise ConfigError("METRICS_REQUIRE_KEY=true: needs API_KEY to be set")
        model_dtype = reader.get("MODEL_DTYPE", _parse_dtype, "float32")
        no_threads: int | None = None
        _check_dtype_device(model_dtype, gpus)
        model_engine = reader.get("MODEL_ENGINE", _parse_engine, "mxnet")
        _check_engine(model_engine, model_dtype, gpus)
        return cls(
            host=reader.get("REST_HOST", _parse_host, "0.0.0.0"),
            port=reader.get("REST_PORT", _int_in(0, 65535), 8080),
            entry_point=reader.get("REST_ENTRY_POINT", _parse_path, "/predict"),
            probability_threshold=reader.get("PROBABILITY_MORE", parse_probability, 0.5),
            model_prefix=model_prefix,
            model_epoch=model_epoch,
            model_name=model_name,
            model_edge=model_edge,
            model_list=model_list,
            devices=DeviceSpec(
                gpus=gpus,
                cpu_replicas=reader.get("MODEL_CPU_REPLICAS", _int_in(1, 64), 1),
            ),
            model_cpu_threads=reader.get("MODEL_CPU_THREADS", _int_in(1, 1024), no_threads),
            mxnet_cpu_temp_copy=reader.get("MXNET_CPU_TEMP_COPY", _int_in(1, 64), no_threads),
            model_dtype=model_dtype,
            model_engine=model_engine,
            model_graph_per_batch_size=reader.get("MODEL_GRAPH_PER_BATCH_SIZE", _parse_bool, True),
            batch_max_size=reader.get("BATCH_MAX_SIZE", _int_in(1, 256), 8),
            batch_max_delay_ms=reader.get("BATCH_MAX_DELAY_MS", _float_in(0.0, 10_000.0), 5.0),
            batch_backlog_delay_ms=reader.get(
                "BATCH_BACKLOG_DELAY_MS", _float_in(0.0, 10_000.0), 50.0
            ),
            queue_max=reader.get("QUEUE_MAX", _int_in(1, 1_000_000), 64),
            max_body_bytes=reader.get("MAX_BODY_BYTES", _int_in(1024, 2**31), 20 * 1024 * 1024),
            max_image_pixels=reader.get("MAX_IMAGE_PIXELS", _int_in(1, 2**31), 50_000_000),
            preprocess_workers=reader.get(
                "PREPROCESS_WORKERS", _int_in(1, 256), max(1, os.cpu_count() or 1)
            ),
            preprocess_nice=reader.get("PREPROCESS_NICE", _int_in(0, 19), 10),
            request_timeout_ms=reader.get(
                "REQUEST_TIMEOUT_MS", _float_in(1.0, 3_600_000.0), 10_000.0
            ),
            shutdown_grace_s=reader.get("SHUTDOWN_GRACE_S", _float_in(0.0, 3600.0), 8.0),
            header_timeout_s=reader.get("HEADER_TIMEOUT_S", _float_in(0.1, 3600.0), 10.0),
            body_timeout_s=reader.get("BODY_TIMEOUT_S", _float_in(0.1, 3600.0), 60.0),
            keepalive_timeout_s=reader.get("KEEPALIVE_TIMEOUT_S", _float_in(0.1, 3600.0), 75.0),
            max_connections=reader.get("MAX_CONNECTIONS", _int_in(1, 1_000_000), 1000),
            api_key=api_key,
            metrics_require_key=metrics_require_key,
            memory_trim_interval_s=reader.get(
                "MEMORY_TRIM_INTERVAL_S", _float_in(0.0, 86_400.0), 10.0
            ),
            log_level=reader.get("LOG_LEVEL", _parse_log_level, "INFO"),
        )

    @property
    def models(self) -> tuple[ModelSpec, ...]:
        """Every model to serve, the default first: MODELS, or the one of MODEL_PREFIX."""
        if self.model_list:
            return self.model_list
        return (
            ModelSpec(self.served_model_name, self.model_prefix, self.model_epoch, self.model_edge),
        )

    @property
    def cpu_temp_workspaces(self) -> int:
        """MXNet's temporary workspaces on the CPU: MXNET_CPU_TEMP_COPY, else one per replica."""
        if self.mxnet_cpu_temp_copy is not None:
            return self.mxnet_cpu_temp_copy
        return self.devices.cpu_replicas

    @property
    def served_model_name(self) -> str:
        """The model's name in the v2 routes: MODEL_NAME, else the checkpoint prefix's base name."""
        return self.model_name if self.model_name is not None else self.model_prefix.name

    @property
    def checkpoint(self) -> Checkpoint:
        """The checkpoint of the default model."""
        return Checkpoint(self.model_prefix, self.model_epoch)

    @property
    def symbol_path(self) -> Path:
        """The network definition file of the default model's checkpoint."""
        return self.checkpoint.symbol_path

    @property
    def params_path(self) -> Path:
        """The weights file of the default model's checkpoint and epoch."""
        return self.checkpoint.params_path

    @property
    def synset_path(self) -> Path:
        """`synset.txt` beside the default model's checkpoint: one class name per line."""
        return self.checkpoint.synset_path


class _EnvReader:
    """Reads one variable at a time and turns parse failures into `ConfigError`."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def get(self, name: str, parse: Callable[[str], T], default: T, *, secret: bool = False) -> T:
        """The parsed value of ``name``, or ``default`` when it is unset or blank.

        A ``secret`` value is never repeated in the error message.
        """
        raw = self._env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except ValueError as exc:
            shown = "(the value is not shown)" if secret else repr(raw)
            raise ConfigError(f"{name}={shown}: {exc}") from None


def parse_probability(raw: str) -> float:
    """A finite probability in [0, 1]; used for the env default and `?threshold=`."""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number between 0 and 1") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError("expected a number between 0 and 1")
    return value


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw, 10)
        except ValueError:
            raise ValueError(f"expected a whole number between {low} and {high}") from None
        if not low <= value <= high:
            raise ValueError(f"expected a whole number between {low} and {high}")
        return value

    return parse


def _float_in(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"expected a number between {low:g} and {high:g}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError(f"expected a number between {low:g} and {high:g}")
        return value

    return parse


def _parse_gpus(raw: str) -> tuple[int, ...]:
    lowered = raw.lower()
    if lowered in ("false", "no", "off"):
        return ()
    if lowered in ("true", "yes", "on"):
        return (0,)
    try:
        indices = tuple(int(part, 10) for part in raw.split(","))
    except ValueError:
        raise ValueError("expected true, false, or GPU indices such as 0 or 0,1") from None
    if any(i < 0 for i in indices) or len(set(indices)) != len(indices):
        raise ValueError("GPU indices must be distinct and non-negative")
    return indices


def _parse_dtype(raw: str) -> str:
    lowered = raw.lower()
    if lowered not in MODEL_DTYPES:
        raise ValueError("expected " + ", ".join(MODEL_DTYPES))
    return lowered


def _check_dtype_device(dtype: str, gpus: tuple[int, ...]) -> None:
    """int8 and bfloat16 have kernels on the CPU only (oneDNN, OpenVINO), float16 pays off
    on GPUs only."""
    if dtype == "float16" and not gpus:
        raise ConfigError(
            "MODEL_DTYPE=float16: runs on a GPU only (set MODEL_CONTEXT_GPU); "
            "on the CPU use float32 or int8"
        )
    if dtype in ("int8", "bfloat16") and gpus:
        raise ConfigError(
            f"MODEL_DTYPE={dtype}: runs on the CPU only; on a GPU use float32 or float16"
        )


def _parse_engine(raw: str) -> str:
    lowered = raw.lower()
    if lowered not in MODEL_ENGINES:
        raise ValueError("expected " + ", ".join(MODEL_ENGINES))
    return lowered


def _check_engine(engine: str, dtype: str, gpus: tuple[int, ...]) -> None:
    """OpenVINO runs float32 or bfloat16 on the CPU here, and must be installed (the `cpu`
    extra has it); bfloat16 runs on OpenVINO only. Whether the CPU has bfloat16 instructions
    is checked where the model loads (`predictor.runtime.openvino_trunk`)."""
    if dtype == "bfloat16" and engine != "openvino":
        raise ConfigError(
            "MODEL_DTYPE=bfloat16: runs with OpenVINO only; set MODEL_ENGINE=openvino"
        )
    if engine != "openvino":
        return
    if gpus or dtype not in OPENVINO_DTYPES:
        raise ConfigError(
            "MODEL_ENGINE=openvino: runs float32 or bfloat16 on the CPU only "
            f"(MODEL_DTYPE is {dtype}{', MODEL_CONTEXT_GPU is set' if gpus else ''}); "
            "use MODEL_ENGINE=mxnet"
        )
    if importlib.util.find_spec("openvino") is None:
        raise ConfigError(
            "MODEL_ENGINE=openvino: the openvino package is not installed "
            "(pip install 'predictor[cpu]' installs it)"
        )


def _parse_host(raw: str) -> str:
    if any(ch.isspace() for ch in raw):
        raise ValueError("a host name or address may not contain spaces")
    return raw


def _parse_path(raw: str) -> str:
    if not raw.startswith("/") or any(ch.isspace() or ch in "?#" for ch in raw):
        raise ValueError("expected a URL path starting with '/', without spaces, '?' or '#'")
    if raw in RESERVED_PATHS or any(
        raw == prefix or raw.startswith(prefix + "/") for prefix in (STATIC_PREFIX, V2_PREFIX)
    ):
        raise ValueError(f"{raw} is reserved for the service's own endpoints and web page")
    return raw


def parse_model_name(raw: str) -> str:
    """A model name for the v2 routes: one URL path segment, safe unquoted."""
    if not _MODEL_NAME.fullmatch(raw):
        raise ValueError(
            "expected 1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return raw


def parse_models(raw: str, epoch: int = 0) -> tuple[ModelSpec, ...]:
    """MODELS: ``NAME=PREFIX`` pairs separated by commas, names unique, the default first."""
    models: list[ModelSpec] = []
    for position, entry in enumerate(raw.split(","), start=1):
        entry = entry.strip()
        if not entry:
            raise ValueError(f"entry {position} is empty (expected NAME=PREFIX,NAME=PREFIX...)")
        name, equals, prefix = (part.strip() for part in entry.partition("="))
        if not equals or not name or not prefix:
            raise ValueError(f"entry {position} ({entry!r}) is not NAME=PREFIX")
        try:
            parse_model_name(name)
        except ValueError as exc:
            raise ValueError(f"entry {position}: model name {name!r}: {exc}") from None
        if any(model.name == name for model in models):
            raise ValueError(f"entry {position}: the name {name!r} is used twice")
        models.append(ModelSpec(name, Path(prefix), epoch))
    return tuple(models)


def _default_model_name(prefix: Path) -> str:
    """MODEL_PREFIX's base name, when it is a valid model name; else start-up stops."""
    try:
        return parse_model_name(prefix.name)
    except ValueError as exc:
        raise ConfigError(
            f"MODEL_NAME is not set and MODEL_PREFIX's base name {prefix.name!r} is not a "
            f"valid model name ({exc}): set MODEL_NAME"
        ) from None


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise ValueError("expected true or false")


API_KEY_MIN_LENGTH = 16


def _parse_api_key(raw: str) -> str:
    # Visible ASCII only: the key travels in an HTTP header, and a short one
    # can be guessed; 16 characters is a floor, a random 32+ is the advice.
    if not all("!" <= ch <= "~" for ch in raw):
        raise ValueError("expected visible ASCII characters only (no spaces)")
    if len(raw) < API_KEY_MIN_LENGTH:
        raise ValueError(f"expected at least {API_KEY_MIN_LENGTH} characters")
    return raw


def _parse_log_level(raw: str) -> str:
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return level
