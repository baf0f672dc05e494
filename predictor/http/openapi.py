"""``GET /openapi.json``: an OpenAPI 3.1 description of every route this server answers.

Built from the running configuration, so that it names what this server
really serves: the detection endpoint at ``REST_ENTRY_POINT``, the model
names of ``?model=`` and of the v2 paths (``/v2/models/NAME/...``) as enums,
and the bearer scheme only when ``API_KEY`` is set. The v2 messages are
KServe's published schemas of the Open Inference Protocol (its
``rest_predict_v2.yaml``: ``metadata_server_response``,
``metadata_model_response``, ``inference_request``, ``inference_response``
and their parts), with the binary tensor data extension's
``application/octet-stream`` bodies beside them.

Every status a route can answer is listed; ``tests/test_openapi.py`` checks
each documented route and status against a running server and fuzzes the
server from this description (schemathesis).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from predictor import __version__
from predictor.http.v2_codec import HEADER_LENGTH, MODEL_VERSION

OPENAPI_PATH = "/openapi.json"
JSON = "application/json"

_ERROR_REF = {"$ref": "#/components/schemas/Error"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ERROR_REF}}}


def _retry_after_error(description: str) -> dict[str, Any]:
    answer = _error(description)
    answer["headers"] = {
        "Retry-After": {
            "description": "seconds to wait before retrying",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    }
    return answer


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _detection_errors(authenticated: bool) -> dict[str, Any]:
    """What every detection route may answer besides its 200."""
    errors = {
        "400": _error("the request is malformed (the message says what is wrong)"),
        "404": _error("no such model"),
        "408": _error("the body did not arrive within BODY_TIMEOUT_S; the connection is closed"),
        "413": _error("the body is over MAX_BODY_BYTES, or an image over MAX_IMAGE_PIXELS"),
        "500": _error("the forward pass failed on the device (inference failed: ...)"),
        "503": _retry_after_error("the model's queue is full, or the server is stopping"),
        "504": _error("the image did not reach its forward pass within REQUEST_TIMEOUT_MS"),
    }
    if authenticated:
        errors["401"] = _error("missing or wrong API key (Authorization: Bearer <key>)")
    return errors


def _schemas() -> dict[str, Any]:
    """KServe's v2 schemas, this server's answers, and the shared error."""
    parameters = {"type": "object", "additionalProperties": True}
    tensor_data: dict[str, Any] = {
        "type": "array",
        "items": {
            "anyOf": [
                {"$ref": "#/components/schemas/tensor_data"},
                {"type": "number"},
                {"type": "string"},
                {"type": "boolean"},
            ]
        },
    }
    shape = {"type": "array", "items": {"type": "integer"}}
    metadata_tensor = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {"name": {"type": "string"}, "datatype": {"type": "string"}, "shape": shape},
    }
    duration = {
        "type": "object",
        "required": ["count", "ns"],
        "properties": {
            "count": {"type": "integer", "minimum": 0},
            "ns": {"type": "integer", "minimum": 0},
        },
    }
    config_tensor = {
        "type": "object",
        "required": ["name", "data_type", "dims"],
        "properties": {
            "name": {"type": "string"},
            "data_type": {"type": "string"},
            "dims": shape,
        },
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        },
        # Triton's model configuration (model_config.proto) as its HTTP API answers it.
        "model_config": {
            "type": "object",
            "required": ["name", "platform", "max_batch_size", "input", "output"],
            "properties": {
                "name": {"type": "string"},
                "platform": {"type": "string"},
                "backend": {"type": "string"},
                "max_batch_size": {"type": "integer", "minimum": 0},
                "input": {"type": "array", "items": config_tensor},
                "output": {"type": "array", "items": config_tensor},
                "instance_group": {"type": "array", "items": {"type": "object"}},
                "dynamic_batching": {"type": "object"},
                "parameters": {"type": "object"},
            },
        },
        # Triton's statistics extension: {"model_stats": [...]}.
        "model_statistics": {
            "type": "object",
            "required": ["model_stats"],
            "properties": {
                "model_stats": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": [
                            "name",
                            "version",
                            "inference_count",
                            "execution_count",
                            "inference_stats",
                        ],
                        "properties": {
                            "name": {"type": "string"},
                            "version": {"type": "string"},
                            "last_inference": {"type": "integer", "minimum": 0},
                            "inference_count": {"type": "integer", "minimum": 0},
                            "execution_count": {"type": "integer", "minimum": 0},
                            "inference_stats": {
                                "type": "object",
                                "additionalProperties": duration,
                            },
                            "batch_stats": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                }
            },
        },
        "Detection": {
            "type": "object",
            "required": ["objectClass", "probability", "x", "y", "width", "height"],
            "properties": {
                "objectClass": {"type": "string"},
                "probability": {"type": "number", "minimum": 0, "maximum": 1},
                "x": {"type": "integer", "minimum": 0},
                "y": {"type": "integer", "minimum": 0},
                "width": {"type": "integer", "minimum": 0},
                "height": {"type": "integer", "minimum": 0},
            },
            "additionalProperties": False,
        },
        "Prediction": {
            "type": "object",
            "required": ["prediction"],
            "properties": {
                "prediction": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/Detection"},
                }
            },
        },
        "Info": {
            "type": "object",
            "required": ["entryPoint", "defaultThreshold", "defaultModel", "models"],
            "properties": {
                "entryPoint": {"type": "string"},
                "modelEdge": {"type": "integer"},
                "defaultThreshold": {"type": "number"},
                "classes": {"type": "array", "items": {"type": "string"}},
                "defaultModel": {"type": "string"},
                "models": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "classes"],
                        "properties": {
                            "name": {"type": "string"},
                            "classes": {"type": "array", "items": {"type": "string"}},
                            "inputWidth": {"type": "integer"},
                            "inputHeight": {"type": "integer"},
                            "resize": {"type": "string"},
                        },
                    },
                },
                "maxBodyBytes": {"type": "integer"},
                "maxImagePixels": {"type": "integer"},
                "authRequired": {"type": "boolean"},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "alive"}},
        },
        "Ready": {
            "type": "object",
            "required": ["status", "model", "models"],
            "properties": {
                "status": {"const": "ready"},
                "model": {"type": "string"},
                "models": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        # KServe's rest_predict_v2.yaml, as published.
        "parameters": parameters,
        "tensor_data": tensor_data,
        "metadata_tensor": metadata_tensor,
        "metadata_server_response": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "metadata_model_response": {
            "type": "object",
            "required": ["name", "platform"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/metadata_tensor"},
                },
                "outputs": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/metadata_tensor"},
                },
            },
        },
        "request_input": {
            "type": "object",
            "required": ["name", "shape", "datatype"],
            "properties": {
                "name": {"type": "string"},
                "shape": shape,
                "datatype": {"type": "string"},
                "parameters": {"$ref": "#/components/schemas/parameters"},
                "data": {"$ref": "#/components/schemas/tensor_data"},
            },
        },
        "request_output": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "parameters": {"$ref": "#/components/schemas/parameters"},
            },
        },
        "response_output": {
            "type": "object",
            "required": ["name", "shape", "datatype"],
            "properties": {
                "name": {"type": "string"},
                "shape": shape,
                "datatype": {"type": "string"},
                "parameters": {"$ref": "#/components/schemas/parameters"},
                "data": {"$ref": "#/components/schemas/tensor_data"},
            },
        },
        "inference_request": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {"$ref": "#/components/schemas/parameters"},
                "inputs": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/request_input"},
                },
                "outputs": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/request_output"},
                },
            },
        },
        "inference_response": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "parameters": {"$ref": "#/components/schemas/parameters"},
                "outputs": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/response_output"},
                },
            },
        },
        "repository_index_response": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "version", "state"],
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "string"},
                    "state": {"enum": ["READY", "UNAVAILABLE"]},
                    "reason": {"type": "string"},
                },
            },
        },
    }


def openapi_description(
    entry_point: str,
    model_names: Sequence[str],
    static_files: Sequence[str],
    api_key_set: bool,
    metrics_require_key: bool,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a server with these settings."""
    models = list(model_names)
    security: list[dict[str, list[str]]] | None = [{"bearer": []}] if api_key_set else None
    errors = _detection_errors(api_key_set)
    model_query = {
        "name": "model",
        "in": "query",
        "required": False,
        "description": f"which served model answers (default: {models[0]}, the first of MODELS)",
        "schema": {"type": "string", "enum": models},
    }
    predict: dict[str, Any] = {
        "summary": "Detect objects in a JPEG (the original contract)",
        "operationId": "predict",
        "parameters": [
            {
                "name": "threshold",
                "in": "query",
                "required": False,
                "description": "keep detections above this probability (default PROBABILITY_MORE)",
                "schema": {"type": "number", "minimum": 0, "maximum": 1},
            },
            {
                "name": "render",
                "in": "query",
                "required": False,
                "description": "true: answer the photo with the boxes drawn (image/jpeg)",
                "schema": {"type": "string", "enum": ["true", "false", "1", "0"]},
            },
            model_query,
        ],
        "requestBody": {
            "required": True,
            "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
        },
        "responses": {
            "200": {
                "description": "the objects found (pixels of the original image, top-left "
                "corner and size), or the drawn photo with ?render=true or Accept: image/jpeg",
                "content": {
                    JSON: {"schema": {"$ref": "#/components/schemas/Prediction"}},
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            **errors,
            "400": _error("Invalid content (not image/jpeg), a malformed query, or not a JPEG"),
            "417": _error("an Expect header other than 100-continue"),
        },
    }
    if security:
        predict["security"] = security

    name_param = {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "a served model (MODELS, or MODEL_NAME)",
        "schema": {"type": "string", "enum": models},
    }
    version_param = {
        "name": "version",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": [MODEL_VERSION]},
    }
    not_found = _error("no such model or version")
    not_ready = _error("not ready; the message says why")
    paths: dict[str, Any] = {
        "/health": {
            "get": {
                "summary": "Liveness",
                "operationId": "health",
                "responses": {"200": _json("alive", {"$ref": "#/components/schemas/Health"})},
            }
        },
        "/ready": {
            "get": {
                "summary": "Readiness: every model loaded, warmed, not failing",
                "operationId": "ready",
                "responses": {
                    "200": _json("ready", {"$ref": "#/components/schemas/Ready"}),
                    "503": not_ready,
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition)",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **({"401": _error("missing or wrong API key")} if metrics_require_key else {}),
                },
                **({"security": security} if metrics_require_key and security else {}),
            }
        },
        "/info": {
            "get": {
                "summary": "The detection endpoint, the models and classes, threshold, limits",
                "operationId": "info",
                "responses": {"200": _json("settings", {"$ref": "#/components/schemas/Info"})},
            }
        },
        OPENAPI_PATH: {
            "get": {
                "summary": "This description",
                "operationId": "openapi",
                "responses": {"200": _json("OpenAPI 3.1", {"type": "object"})},
            }
        },
        "/": {
            "get": {
                "summary": "The web page",
                "operationId": "page",
                "responses": {
                    "200": {
                        "description": "the page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/static/{name}": {
            "get": {
                "summary": "The page's files",
                "operationId": "static",
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": list(static_files)},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "the file",
                        "content": {
                            "text/javascript": {"schema": {"type": "string"}},
                            "application/javascript": {"schema": {"type": "string"}},
                            "text/css": {"schema": {"type": "string"}},
                        },
                    },
                    "404": _error("no such file"),
                },
            }
        },
        "/v2": {
            "get": {
                "summary": "v2 server metadata",
                "operationId": "v2ServerMetadata",
                "responses": {
                    "200": _json(
                        "server metadata",
                        {"$ref": "#/components/schemas/metadata_server_response"},
                    )
                },
            }
        },
        "/v2/health/live": {
            "get": {
                "summary": "v2 liveness",
                "operationId": "v2Live",
                "responses": {
                    "200": _json(
                        "live",
                        {
                            "type": "object",
                            "required": ["live"],
                            "properties": {"live": {"type": "boolean"}},
                        },
                    )
                },
            }
        },
        "/v2/health/ready": {
            "get": {
                "summary": "v2 readiness of the server",
                "operationId": "v2Ready",
                "responses": {
                    "200": _json(
                        "ready",
                        {
                            "type": "object",
                            "required": ["ready"],
                            "properties": {"ready": {"type": "boolean"}},
                        },
                    ),
                    "503": not_ready,
                },
            }
        },
        "/v2/repository/index": {
            "post": {
                "summary": "Every model, its version and state",
                "operationId": "v2RepositoryIndex",
                "requestBody": {
                    "required": False,
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "properties": {"ready": {"type": "boolean"}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        "the models",
                        {"$ref": "#/components/schemas/repository_index_response"},
                    ),
                    "400": _error("the body is not a JSON object with a boolean 'ready'"),
                    "408": errors["408"],
                    "413": errors["413"],
                },
            }
        },
        "/v2/repository/models/{name}/{action}": {
            "post": {
                "summary": "Loading and unloading: refused (models load once, at start)",
                "operationId": "v2RepositoryControl",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "action",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": ["load", "unload"]},
                    },
                ],
                "responses": {
                    "400": _error("models are loaded once, at start"),
                    "404": _error("no such route (a name holding '/')"),
                },
            }
        },
    }
    for prefix, params in (
        ("/v2/models/{name}", [name_param]),
        ("/v2/models/{name}/versions/{version}", [name_param, version_param]),
    ):
        suffix = "Version" if "version" in prefix else ""
        paths[prefix] = {
            "get": {
                "summary": "v2 model metadata",
                "operationId": "v2ModelMetadata" + suffix,
                "parameters": params,
                "responses": {
                    "200": _json(
                        "model metadata", {"$ref": "#/components/schemas/metadata_model_response"}
                    ),
                    "404": not_found,
                },
            }
        }
        paths[prefix + "/ready"] = {
            "get": {
                "summary": "v2 model readiness",
                "operationId": "v2ModelReady" + suffix,
                "parameters": params,
                "responses": {
                    "200": _json(
                        "ready",
                        {
                            "type": "object",
                            "required": ["name", "ready"],
                            "properties": {
                                "name": {"type": "string"},
                                "ready": {"type": "boolean"},
                            },
                        },
                    ),
                    "404": not_found,
                    "503": not_ready,
                },
            }
        }
        infer: dict[str, Any] = {
            "summary": "v2 inference: detect objects in the images of input 'image' (BYTES [N])",
            "operationId": "v2Infer" + suffix,
            "parameters": [
                *params,
                {
                    "name": HEADER_LENGTH,
                    "in": "header",
                    "required": False,
                    "description": "binary tensor data extension: the length of the JSON "
                    "header; the inputs' binary data follows it",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {"schema": {"$ref": "#/components/schemas/inference_request"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            "responses": {
                "200": {
                    "description": "the detections: num_detections, classes, probabilities, "
                    "boxes; binary outputs follow the JSON header when asked for",
                    "headers": {
                        HEADER_LENGTH: {
                            "description": "present when binary outputs follow the JSON",
                            "schema": {"type": "string", "pattern": "^[0-9]+$"},
                        }
                    },
                    "content": {
                        JSON: {"schema": {"$ref": "#/components/schemas/inference_response"}},
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                    },
                },
                **errors,
                "417": _error("an Expect header other than 100-continue"),
            },
        }
        if security:
            infer["security"] = security
        paths[prefix + "/infer"] = {"post": infer}
        paths[prefix + "/config"] = {
            "get": {
                "summary": "Triton's model configuration (model_configuration extension)",
                "operationId": "v2ModelConfig" + suffix,
                "parameters": params,
                "responses": {
                    "200": _json(
                        "the model as a Triton config.pbtxt, in JSON",
                        {"$ref": "#/components/schemas/model_config"},
                    ),
                    "404": not_found,
                },
            }
        }
        paths[prefix + "/stats"] = {
            "get": {
                "summary": "Triton's inference statistics of the model (statistics extension)",
                "operationId": "v2ModelStats" + suffix,
                "parameters": params,
                "responses": {
                    "200": _json(
                        "cumulative counts and nanoseconds",
                        {"$ref": "#/components/schemas/model_statistics"},
                    ),
                    "404": not_found,
                },
            }
        }
    paths["/v2/models/stats"] = {
        "get": {
            "summary": "Triton's inference statistics of every model",
            "operationId": "v2AllModelStats",
            "responses": {
                "200": _json(
                    "cumulative counts and nanoseconds, per model",
                    {"$ref": "#/components/schemas/model_statistics"},
                )
            },
        }
    }
    # The entry point may be "/", where GET is the page.
    paths.setdefault(entry_point, {})["post"] = predict
    components: dict[str, Any] = {"schemas": _schemas()}
    if api_key_set:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "API_KEY"}
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "predictor",
            "version": __version__,
            "description": "Object detection over HTTP: the original /predict contract and "
            'the Open Inference Protocol v2 (KServe, Triton). Errors are {"error": "..."}.',
        },
        "paths": paths,
        "components": components,
    }
