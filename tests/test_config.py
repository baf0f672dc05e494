"""Settings from the environment: defaults, parsing, and errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from predictor.config import SHIPPED_COCO_PREFIX, SHIPPED_MODEL_PREFIX, ModelSpec, Settings
from predictor.errors import ConfigError


def test_defaults_match_the_original_service() -> None:
    settings = Settings.from_env({})
    assert settings.host == "0.0.0.0"
    assert settings.port == 8080
    assert settings.entry_point == "/predict"
    assert settings.probability_threshold == 0.5
    assert settings.model_epoch == 0
    assert settings.devices.gpus == ()
    assert settings.model_graph_per_batch_size is True
    assert (settings.batch_max_delay_ms, settings.batch_backlog_delay_ms) == (5.0, 50.0)
    # With no model settings, both shipped models, COCO first, each at its declared size.
    assert settings.models == (
        ModelSpec("coco", Path(SHIPPED_COCO_PREFIX)),
        ModelSpec("digits", Path(SHIPPED_MODEL_PREFIX)),
    )
    assert settings.model_prefix == Path(SHIPPED_COCO_PREFIX)
    assert settings.served_model_name == "coco"
    assert settings.model_edge is None
    # Any single-model setting keeps the one-model server, on the digits model by default.
    single = Settings.from_env({"MODEL_EDGE": "300"})
    assert single.models == (ModelSpec("ssd300_digits_shapes", Path(SHIPPED_MODEL_PREFIX), 0, 300),)


def test_model_files_follow_the_prefix_and_epoch() -> None:
    settings = Settings.from_env({"MODEL_PREFIX": "m/resnet50_ssd_model", "MODEL_EPOCH": "12"})
    assert settings.model_edge is None  # the checkpoint's declaration, else 512
    assert settings.symbol_path == Path("m/resnet50_ssd_model-symbol.json")
    assert settings.params_path == Path("m/resnet50_ssd_model-0012.params")
    assert settings.synset_path == Path("m/synset.txt")


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "REST_HOST": "127.0.0.1",
            "REST_PORT": "9000",
            "REST_ENTRY_POINT": "/detect",
            "PROBABILITY_MORE": "0.25",
            "MODEL_EDGE": "384",
            "MODEL_CONTEXT_GPU": "0,1",
            "MODEL_DTYPE": "float16",
            "MODEL_GRAPH_PER_BATCH_SIZE": "false",
            "BATCH_MAX_SIZE": "16",
            "BATCH_MAX_DELAY_MS": "2.5",
            "BATCH_BACKLOG_DELAY_MS": "0",
            "QUEUE_MAX": "10",
            "MAX_BODY_BYTES": "2048",
            "MAX_IMAGE_PIXELS": "1000",
            "PREPROCESS_WORKERS": "3",
            "PREPROCESS_NICE": "0",
            "MODEL_CPU_THREADS": "4",
            "MXNET_CPU_TEMP_COPY": "3",
            "MODEL_CPU_REPLICAS": "2",
            "REQUEST_TIMEOUT_MS": "250",
            "SHUTDOWN_GRACE_S": "2.5",
            "HEADER_TIMEOUT_S": "3",
            "BODY_TIMEOUT_S": "30.5",
            "KEEPALIVE_TIMEOUT_S": "61",
            "MAX_CONNECTIONS": "500",
            "API_KEY": "0123456789abcdef-key",
            "METRICS_REQUIRE_KEY": "true",
            "MEMORY_TRIM_INTERVAL_S": "2.5",
            "LOG_LEVEL": "debug",
        }
    )
    assert (settings.host, settings.port, settings.entry_point) == ("127.0.0.1", 9000, "/detect")
    assert settings.probability_threshold == 0.25
    assert settings.model_edge == 384
    assert settings.devices.gpus == (0, 1)
    assert settings.devices.cpu_replicas == 2
    assert settings.model_dtype == "float16"
    assert settings.model_graph_per_batch_size is False
    assert (settings.batch_max_size, settings.batch_max_delay_ms) == (16, 2.5)
    assert settings.batch_backlog_delay_ms == 0.0
    assert (settings.queue_max, settings.max_body_bytes, settings.max_image_pixels) == (
        10,
        2048,
        1000,
    )
    assert settings.preprocess_workers == 3
    assert settings.preprocess_nice == 0
    assert settings.model_cpu_threads == 4
    assert settings.cpu_temp_workspaces == 3
    assert (settings.request_timeout_ms, settings.shutdown_grace_s) == (250.0, 2.5)
    assert (settings.header_timeout_s, settings.body_timeout_s) == (3.0, 30.5)
    assert (settings.keepalive_timeout_s, settings.max_connections) == (61.0, 500)
    assert settings.api_key == "0123456789abcdef-key"
    assert settings.metrics_require_key is True
    assert settings.memory_trim_interval_s == 2.5
    assert settings.log_level == "DEBUG"


def test_robustness_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.request_timeout_ms == 10_000.0
    assert settings.shutdown_grace_s == 8.0
    assert settings.api_key is None and settings.metrics_require_key is False
    assert settings.preprocess_nice == 10
    assert settings.model_cpu_threads is None  # MXNet's own default
    assert settings.memory_trim_interval_s == 10.0
    # One MXNet workspace per forward pass that may run at once (predictor/runtime/memory.py).
    assert settings.cpu_temp_workspaces == 1
    assert Settings.from_env({"MODEL_CPU_REPLICAS": "3"}).cpu_temp_workspaces == 3
    assert Settings.from_env({"MEMORY_TRIM_INTERVAL_S": "0"}).memory_trim_interval_s == 0.0


@pytest.mark.parametrize(
    ("value", "gpus"),
    [("false", ()), ("FALSE", ()), ("true", (0,)), ("True", (0,)), ("0", (0,)), ("1,3", (1, 3))],
)
def test_gpu_selection(value: str, gpus: tuple[int, ...]) -> None:
    assert Settings.from_env({"MODEL_CONTEXT_GPU": value}).devices.gpus == gpus


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REST_PORT", "eighty"),
        ("REST_PORT", "70000"),
        ("REST_PORT", "-1"),
        ("REST_ENTRY_POINT", "predict"),
        ("REST_ENTRY_POINT", "/health"),
        ("REST_ENTRY_POINT", "/info"),
        ("REST_ENTRY_POINT", "/static"),
        ("REST_ENTRY_POINT", "/static/app.js"),
        ("PROBABILITY_MORE", "1.5"),
        ("PROBABILITY_MORE", "nan"),
        ("MODEL_EPOCH", "1.0"),
        ("MODEL_EDGE", "0"),
        ("MODEL_CONTEXT_GPU", "maybe"),
        ("MODEL_CONTEXT_GPU", "0,0"),
        ("BATCH_MAX_SIZE", "0"),
        ("BATCH_MAX_DELAY_MS", "-5"),
        ("BATCH_BACKLOG_DELAY_MS", "soon"),
        ("QUEUE_MAX", "many"),
        ("MAX_BODY_BYTES", "1e6"),
        ("LOG_LEVEL", "LOUD"),
        ("REST_HOST", "bad host"),
        ("REQUEST_TIMEOUT_MS", "0"),
        ("REQUEST_TIMEOUT_MS", "soon"),
        ("SHUTDOWN_GRACE_S", "-1"),
        ("SHUTDOWN_GRACE_S", "nan"),
        ("HEADER_TIMEOUT_S", "0"),
        ("BODY_TIMEOUT_S", "forever"),
        ("KEEPALIVE_TIMEOUT_S", "inf"),
        ("MAX_CONNECTIONS", "0"),
        ("MAX_CONNECTIONS", "lots"),
        ("METRICS_REQUIRE_KEY", "maybe"),
        ("MODEL_GRAPH_PER_BATCH_SIZE", "sometimes"),
        ("PREPROCESS_NICE", "-1"),
        ("PREPROCESS_NICE", "20"),
        ("PREPROCESS_NICE", "low"),
        ("MODEL_CPU_THREADS", "0"),
        ("MODEL_CPU_THREADS", "all"),
        ("MXNET_CPU_TEMP_COPY", "0"),
        ("MEMORY_TRIM_INTERVAL_S", "-1"),
        ("MEMORY_TRIM_INTERVAL_S", "often"),
    ],
)
def test_malformed_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env({name: value})
    assert str(error.value).startswith(f"{name}={value!r}: ")


@pytest.mark.parametrize("path", ["/", "/detect", "/api/v1/predict", "/statistics"])
def test_entry_point_may_be_any_other_path(path: str) -> None:
    assert Settings.from_env({"REST_ENTRY_POINT": path}).entry_point == path


def test_blank_values_mean_default() -> None:
    assert Settings.from_env({"REST_PORT": "  ", "PROBABILITY_MORE": ""}).port == 8080


def test_overrides_win_over_the_environment() -> None:
    settings = Settings.from_env({"MODEL_EPOCH": "3"}, overrides={"MODEL_EPOCH": "5"})
    assert settings.model_epoch == 5


@pytest.mark.parametrize("key", ["short-key", "has a space in it ok", "tab\there-0123456789"])
def test_a_bad_api_key_is_refused_without_being_repeated(key: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"API_KEY": key})
    message = str(error.value)
    assert message.startswith("API_KEY=(the value is not shown): ")
    assert key not in message


def test_metrics_key_needs_an_api_key() -> None:
    with pytest.raises(ConfigError, match="METRICS_REQUIRE_KEY=true: needs API_KEY"):
        Settings.from_env({"METRICS_REQUIRE_KEY": "true"})
    assert Settings.from_env({"METRICS_REQUIRE_KEY": "false"}).metrics_require_key is False


def test_the_api_key_is_not_in_the_settings_repr() -> None:
    settings = Settings.from_env({"API_KEY": "0123456789abcdef-secret"})
    assert "0123456789abcdef-secret" not in repr(settings)


def test_model_dtype_defaults_to_float32_and_accepts_int8_on_the_cpu() -> None:
    assert Settings.from_env({}).model_dtype == "float32"
    assert Settings.from_env({"MODEL_DTYPE": "INT8"}).model_dtype == "int8"
    gpu = Settings.from_env({"MODEL_DTYPE": "float16", "MODEL_CONTEXT_GPU": "true"})
    assert gpu.model_dtype == "float16"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MODEL_DTYPE": "float16"}, r"MODEL_DTYPE=float16: runs on a GPU only"),
        (
            {"MODEL_DTYPE": "int8", "MODEL_CONTEXT_GPU": "0"},
            r"MODEL_DTYPE=int8: runs on the CPU only",
        ),
        (
            {"MODEL_DTYPE": "tfloat32"},
            r"MODEL_DTYPE='tfloat32': expected float32, int8, float16, bfloat16",
        ),
    ],
)
def test_model_dtype_is_refused_where_it_cannot_run(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


# ------------------------------------------------------------------ several models


def test_models_lists_several_checkpoints_the_first_being_the_default() -> None:
    settings = Settings.from_env(
        {
            "MODELS": " coco = models/coco/nanodet , digits=models/ssd300_digits_shapes ",
            "MODEL_EPOCH": "3",
        }
    )
    assert settings.models == (
        ModelSpec("coco", Path("models/coco/nanodet"), 3),
        ModelSpec("digits", Path("models/ssd300_digits_shapes"), 3),
    )
    assert settings.served_model_name == "coco"
    assert settings.model_prefix == Path("models/coco/nanodet")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("coco", "entry 1 ('coco') is not NAME=PREFIX"),
        ("coco=", "entry 1 ('coco=') is not NAME=PREFIX"),
        ("=models/x", "entry 1 ('=models/x') is not NAME=PREFIX"),
        ("a=x,,b=y", "entry 2 is empty"),
        ("a=x,a=y", "entry 2: the name 'a' is used twice"),
        ("a b=x", "entry 1: model name 'a b'"),
        ("a=x,", "entry 2 is empty"),
    ],
)
def test_a_malformed_models_value_names_the_variable_and_the_entry(
    value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"MODELS": value})
    assert str(raised.value).startswith(f"MODELS={value!r}: ")
    assert message in str(raised.value)


@pytest.mark.parametrize("single", ["MODEL_PREFIX", "MODEL_NAME", "MODEL_EDGE"])
def test_models_cannot_be_mixed_with_the_single_model_settings(single: str) -> None:
    value = {"MODEL_PREFIX": "m/x", "MODEL_NAME": "x", "MODEL_EDGE": "300"}[single]
    with pytest.raises(ConfigError, match=f"MODELS is set: {single} configure"):
        Settings.from_env({"MODELS": "a=m/a", single: value})
