# Builder image: builds the predictor wheel from source and runs the project's
# whole `make test` inside (lint, types, unit and browser tests, and the check
# of the runtime image's install recipe), so that a runtime image is only ever
# made from code that passed its tests. Dockerfile.runtime takes /dist from it.
#
#   docker build -f Dockerfile.builder -t predictor-builder .
FROM python:3.11-slim-bookworm

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CI=true

# make runs the build; libgomp1 is MXNet's OpenMP runtime. (Chromium for the
# browser tests is installed by `make test` itself.) Versions are Debian
# bookworm's current ones: pinning them would break the build at every
# security update of the distribution.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# .dockerignore keeps a developer's .venv, caches and build/ out of the context.
COPY . /src

# The same entry point as a developer's machine and CI: lint, types, tests.
# /dist then holds everything the runtime image takes: the wheel, the pins it
# is installed with, and the models the tests ran against.
RUN make test \
    && .venv/bin/python -m pip wheel --no-deps --wheel-dir /dist . \
    && cp constraints.txt /dist/ \
    && cp -R models /dist/models
