#!/bin/sh
# Container entry point: `predictor serve` by default, or any other predictor
# command given as arguments (e.g. `predict`, `healthcheck`). All configuration
# comes from environment variables (README.md, "Configuration").
# The server replaces this shell (exec), so it receives SIGTERM itself.
set -eu
if [ "$#" -eq 0 ]; then
    set -- serve
fi
exec "${PREDICTOR_VENV:-/opt/predictor}/bin/predictor" "$@"
