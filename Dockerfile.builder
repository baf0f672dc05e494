# Builder image: builds the predictor wheel from source and runs the project's
# whole test suite inside (lint, types, unit and browser tests), so that a
# runtime image is only ever made from code that passed its tests.
# Dockerfile.runtime takes /dist from it. Needs BuildKit (DOCKER_BUILDKIT=1).
#
#   DOCKER_BUILDKIT=1 docker build -f Dockerfile.builder -t predictor-builder .
#
# BASE_IMAGE: python:3.11-slim-bookworm, or any Debian bookworm image
# (docker/base-image.sh makes one with debootstrap; Debian's python3.11 is then
# installed). Optional build secrets (docker/build-env.sh): `cacert`, extra CA
# certificates for a TLS-intercepting proxy; `pipconf`, a pip configuration.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CI=true

# Versions are Debian bookworm's current ones: pinning them would break the
# build at every security update of the distribution.
COPY docker/install-system.sh /usr/local/bin/
RUN --mount=type=secret,id=cacert \
    --mount=type=bind,source=docker/build-env.sh,target=/usr/local/bin/build-env.sh \
    build-env.sh install-system.sh builder

WORKDIR /src
# .dockerignore keeps a developer's .venv, caches, build/ and .git out of the context.
COPY . /src

# The same entry point as a developer's machine: `make test`, here without its
# image check (no Docker engine inside a build: the images built from this one
# are that check, `make image-check` on the host). pip's cache is a build
# cache, not a layer. CHECK_RUN (any new value) makes the tests run again on
# unchanged sources, where the build cache would otherwise reuse this step.
# /dist then holds everything the runtime image takes: the
# wheel, the pins it is installed with, and the models the tests ran against.
ARG CHECK_RUN=""
RUN --mount=type=secret,id=cacert \
    --mount=type=secret,id=pipconf \
    --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=docker/build-env.sh,target=/usr/local/bin/build-env.sh \
    build-env.sh make test IMAGE_CHECK=none
RUN --mount=type=secret,id=cacert \
    --mount=type=secret,id=pipconf \
    --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=docker/build-env.sh,target=/usr/local/bin/build-env.sh \
    build-env.sh .venv/bin/python -m pip wheel --no-deps --wheel-dir /dist . \
    && cp constraints.txt /dist/ \
    && cp -R models /dist/models
