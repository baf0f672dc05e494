#!/bin/sh
# Container entry point: all configuration comes from environment variables
# (REST_PORT, MODEL_PREFIX, MODEL_CONTEXT_GPU, ...; see README.md).
set -eu
if [ "$#" -eq 0 ]; then
    set -- serve
fi
exec /opt/predictor/bin/predictor "$@"
