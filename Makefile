# One-command setup, demo and tests. Everything lives in .venv/ at the repo root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build of torch; its wheel is on disk on the build machines. GPU hosts use the Dockerfile.
TORCH_PIN ?= torch==2.13.0

.PHONY: setup demo test bench clean

setup:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "$(TORCH_PIN)"
	$(BIN)/pip install -e ".[dev]"

demo:
	$(BIN)/hy3 demo

test:
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info
