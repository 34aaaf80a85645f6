# Two entry points for a new user: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lmforge-installed
TEST_STAMP := $(VENV)/.lmforge-test-extras

.PHONY: demo demo-quick test lint format setup clean

setup: $(STAMP)

# torch is installed only when the interpreter lacks it; a user's own (e.g. CUDA) torch >= 2.6
# is kept by creating the venv on top of the system site-packages.
HAS_TORCH := import torch; v = torch.__version__.split("+")[0].split("."); \
	raise SystemExit(0 if (int(v[0]), int(v[1])) >= (2, 6) else 1)
$(STAMP): pyproject.toml
	@if $(PYTHON) -c '$(HAS_TORCH)' >/dev/null 2>&1; then \
		echo "using the torch already installed for $(PYTHON)"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
	fi
	$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -c '$(HAS_TORCH)' >/dev/null 2>&1 || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lmforge demo

demo-quick: $(STAMP)
	$(BIN)/lmforge demo --quick

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

# The tests also cover the optional engines (Ray, Hugging Face, ONNX Runtime, Redis, PostgreSQL).
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,ray,hf,onnx,redis,postgres]'
	@touch $(TEST_STAMP)

test: lint $(TEST_STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
