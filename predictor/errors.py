"""The domain errors: every failure predictor reports on purpose derives from `PredictorError`.

Nothing here knows HTTP. The HTTP layer maps these classes to statuses in one
table (`predictor.http.errors`), as KServe's ``errors.py`` does; the command
line catches `PredictorError` once and prints its message. The message of
each error is meant for the person who caused it: it names the file, the
variable or the part of the request that is wrong, and says what to do.

Groups, by who must act:

- the request (`InvalidInput` and its kinds): the client sends something else;
- the server's state (`ModelNotFound`, `Unavailable`, `DeadlineExceeded`):
  the client may retry, elsewhere or later;
- the model or device (`InferenceError`): the operator must look;
- set-up (`ConfigError`, `CheckpointError` and the tools' errors): start-up
  or a command stops with the message.
"""

from __future__ import annotations


class PredictorError(Exception):
    """Base of every error predictor raises on purpose; ``str(error)`` is the whole message."""


# ------------------------------------------------------------------ the request


class InvalidInput(PredictorError, ValueError):
    """The request cannot be answered as sent (HTTP 400)."""


class RequestTimeout(PredictorError):
    """The client did not send its whole request in time (HTTP 408; the connection is closed)."""


class ImageError(InvalidInput):
    """The bytes are not an image this service can use (HTTP 400)."""


class ImageTooLarge(ImageError):
    """The image or body is larger than the configured limit (HTTP 413)."""


# ------------------------------------------------------------------ the server's state


class ModelNotFound(PredictorError, LookupError):
    """The request names a model this server does not serve (HTTP 404)."""


class Unavailable(PredictorError):
    """The request was not admitted now; the client may retry shortly (HTTP 503)."""


class Overloaded(Unavailable):
    """The model's queue is full."""


class ShuttingDown(Unavailable):
    """The server is stopping and admits no new work."""


class ModelNotReady(Unavailable):
    """The model is loading, stopping or failing."""


class DeadlineExceeded(PredictorError):
    """The image's deadline passed before its forward pass began; it was not computed (504)."""


# ------------------------------------------------------------------ the model


class InferenceError(PredictorError):
    """A forward pass failed on the device, e.g. out of memory (HTTP 500)."""


# ------------------------------------------------------------------ set-up and tools


class ConfigError(PredictorError, ValueError):
    """A setting has a malformed or out-of-range value; the message names it."""


class CheckpointError(PredictorError):
    """A checkpoint is missing, unreadable or inconsistent; the message names the file."""


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DeadlineExceeded",
    "ImageError",
    "ImageTooLarge",
    "InferenceError",
    "InvalidInput",
    "ModelNotFound",
    "ModelNotReady",
    "Overloaded",
    "PredictorError",
    "RequestTimeout",
    "ShuttingDown",
    "Unavailable",
]
