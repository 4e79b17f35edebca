# One-command setup, demo and tests. Everything lives in .venv/ at the repo root.
#
# `make setup` installs exactly the versions in requirements/cpu-py311.lock (Python 3.11, Linux x86-64, CPU torch,
# every file hash-checked) with uv, itself installed from requirements/uv.lock. `make demo` and `make test` set up
# first when needed, so on a fresh clone either one alone is the whole setup. `make lock` regenerates the lock from
# pyproject.toml's ranges. GPU hosts use the Dockerfile instead.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements/cpu-py311.lock
# The CPU build of torch; its wheel lies on disk on the build machines (uv does not look there by itself).
TORCH_PIN ?= torch==2.13.0+cpu
WHEELS ?= /opt/wheels
STAMP := $(VENV)/.installed
UV := $(BIN)/uv
# uv must not fetch a Python of its own; the lock is for the machine's CPython 3.11.
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup demo test lock clean

setup: $(STAMP)

$(UV): requirements/uv.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements/uv.lock
	touch $(UV)

# uv itself is listed too, or sync would remove it.
$(STAMP): $(UV) $(LOCK) pyproject.toml
	$(UV) pip sync -q --python $(BIN)/python --find-links $(WHEELS) requirements/uv.lock $(LOCK)
	$(UV) pip install -q --python $(BIN)/python --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hy3 demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lock: $(UV)
	echo "$(TORCH_PIN)" > requirements/torch-cpu.txt
	$(UV) pip compile -q pyproject.toml --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--generate-hashes --find-links $(WHEELS) -c requirements/torch-cpu.txt -o $(LOCK) \
		--custom-compile-command "make lock"

clean:
	rm -rf $(VENV) build *.egg-info
