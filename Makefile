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

.PHONY: setup serve test lint typecheck unit bench clean

setup: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# mxnet and mxnet-cu112 both install the `mxnet` package: keep only the one asked for.
	rm -f $(VENV)/.installed-*
	$(BIN)/python -m pip uninstall --quiet --yes $(OTHER_MXNET) 2>/dev/null || true
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[$(MXNET_BUILD),train,dev]'
	touch $@

# Until a trained model is committed under models/, build a stand-in of the
# right architecture so that the server can start; the export says loudly
# that it is untrained.
$(SHIPPED_MODEL)-symbol.json: | $(STAMP)
	$(BIN)/predictor export --zoo ssd_300_mobilenet0.25_custom --random-init \
		--classes 0,1,2,3,4,5,6,7,8,9,circle,square,triangle --out $(SHIPPED_MODEL)

serve: setup $(SHIPPED_MODEL)-symbol.json
	$(BIN)/predictor serve

lint: setup
	$(BIN)/ruff check predictor tests bench
	$(BIN)/ruff format --check predictor tests bench

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest

test: lint typecheck unit

bench: setup $(SHIPPED_MODEL)-symbol.json
	$(BIN)/python -m bench.bench_server

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts
