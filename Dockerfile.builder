# Builder image: builds the predictor wheel from source and runs the test suite
# inside, so an image is only ever made from code that passed its tests.
#
#   docker build -f Dockerfile.builder -t predictor-builder .
FROM python:3.11-slim-bookworm

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CI=true

RUN apt-get update \
    && apt-get install -y --no-install-recommends make libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . /src

# The same entry points as on a developer machine: lint, types and tests.
RUN make test \
    && .venv/bin/python -m pip wheel --no-deps --wheel-dir /dist . \
    && cp constraints.txt /dist/
