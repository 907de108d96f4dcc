# The two commands of the README: `make demo` and `make test`. Each sets up a
# virtual environment on first use (torch first, so the project never pulls a
# second torch build), then runs. Override PYTHON, VENV or TORCH as needed;
# VENV_ARGS=--system-site-packages keeps a torch (e.g. CUDA) already installed.
PYTHON ?= python3
VENV ?= .venv
VENV_ARGS ?=
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_DIR ?= demo-output

.PHONY: setup demo test test-all bench lint clean browser

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/python examples/demo.py --out $(DEMO_DIR)

# The tests in TEST_WORKERS processes (pytest-xdist), a test file to each; torch's threads shared among them.
TEST_WORKERS ?= 2

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# Debian's Chromium for the browser test of the report's viewer (skipped without one), where apt-get can install it.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The same tests with the property-based ones trying 10x more inputs.
test-all: setup
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# Speed and quality of every sampler, the LDM, training throughput and the detect time split.
bench: setup
	$(BIN)/python benchmarks/bench.py --out bench-output $(BENCH_ARGS)

lint: setup
	$(BIN)/ruff check anodiff tests examples benchmarks

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
