# One-command setup, demo and tests, in three environments at the repo root:
#   .venv/           Python 3.11, megatron-core 0.16.1, CPU torch    (requirements/cpu-py311.lock)
#   .venv-mcore019/  Python 3.12, megatron-core 0.19.2, torch from the package index (a CUDA build that runs on
#                    a CPU)                                           (requirements/py312-mcore019.lock)
#   .venv-mcore018/  the same with megatron-core 0.18.0 (NeMo 26.06's) (requirements/py312-mcore018.lock)
#
# `make setup` installs the locks exactly (every file hash-checked) with uv, itself installed from
# requirements/uv.lock. `make test` runs the whole suite in .venv/, the tests marked `megatron` (everything that
# builds, loads or saves with megatron-core, ms-swift's Megatron code or mcore-bridge) again in .venv-mcore019/,
# and a chosen few of them (TESTS018) in .venv-mcore018/.
# `make demo` and `make test` set up first when needed, so on a fresh clone either one alone is the whole setup.
# `make lock` regenerates the locks from pyproject.toml's ranges. GPU hosts use the Dockerfile instead.
PYTHON ?= python3
# Python 3.12 for the megatron-core 0.19 environment: the newest pyenv 3.12, else python3.12 on PATH (a pyenv shim
# on PATH may not run, so each candidate must answer).
PYTHON312 ?= $(firstword $(foreach p,$(shell ls -d $$(pyenv root 2>/dev/null)/versions/3.12*/bin/python 2>/dev/null | sort -rV) \
	$(shell command -v python3.12 2>/dev/null),$(shell $(p) -c 'import sys; print("$(p)" if sys.version_info[:2] == (3, 12) else "")' 2>/dev/null)))
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements/cpu-py311.lock
VENV019 := .venv-mcore019
LOCK019 := requirements/py312-mcore019.lock
# The CPU build of torch; its wheel lies on disk on the build machines (uv does not look there by itself).
TORCH_PIN ?= torch==2.13.0+cpu
WHEELS ?= /opt/wheels
STAMP := $(VENV)/.installed
STAMP019 := $(VENV019)/.installed
VENV018 := .venv-mcore018
LOCK018 := requirements/py312-mcore018.lock
STAMP018 := $(VENV018)/.installed
# What runs under 0.18.0 too, chosen to keep `make test` within 20 minutes on 2 cores: megatron-core's own checkpoint
# (saved, and trained under the distributed optimizer) converted back, the round trip through torch_dist, parity
# under TP2 PP2 EP2 ETP1 and with heads x head_dim != hidden (MTP included), and the release's named changes.
TESTS018 := tests/test_dist_ckpt.py::test_megatron_saved_checkpoint_converts_byte_exactly \
	tests/test_dist_ckpt.py::test_megatron_trained_checkpoint_converts_exactly \
	tests/test_dist_ckpt.py::test_round_trip_from_inner_is_byte_exact \
	tests/test_megatron_parity.py::test_tp2_pp2_ep2_etp1_from_hf_and_torch_dist \
	tests/test_megatron_parity.py::test_heads_times_head_dim_unlike_hidden tests/test_versions.py
UV := $(BIN)/uv
# uv must not fetch a Python of its own; the locks are for the machine's CPython 3.11 and 3.12.
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup demo test test-311 test-mcore019 test-mcore018 lock clean

setup: $(STAMP) $(STAMP019) $(STAMP018)

$(UV): requirements/uv.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements/uv.lock
	touch $(UV)

# uv itself is listed too, or sync would remove it.
$(STAMP): $(UV) $(LOCK) pyproject.toml
	$(UV) pip sync -q --python $(BIN)/python --find-links $(WHEELS) requirements/uv.lock $(LOCK)
	$(UV) pip install -q --python $(BIN)/python --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(STAMP019): $(UV) $(LOCK019) pyproject.toml
	@test -n "$(PYTHON312)" || { echo "make: Python 3.12 not found (python3.12 on PATH or pyenv); set PYTHON312=..." >&2; exit 1; }
	test -x $(VENV019)/bin/python || $(UV) venv -q --python $(PYTHON312) $(VENV019)
	$(UV) pip sync -q --python $(VENV019)/bin/python $(LOCK019)
	$(UV) pip install -q --python $(VENV019)/bin/python --no-deps --no-build-isolation -e .
	touch $(STAMP019)

$(STAMP018): $(UV) $(LOCK018) pyproject.toml
	@test -n "$(PYTHON312)" || { echo "make: Python 3.12 not found (python3.12 on PATH or pyenv); set PYTHON312=..." >&2; exit 1; }
	test -x $(VENV018)/bin/python || $(UV) venv -q --python $(PYTHON312) $(VENV018)
	$(UV) pip sync -q --python $(VENV018)/bin/python $(LOCK018)
	$(UV) pip install -q --python $(VENV018)/bin/python --no-deps --no-build-isolation -e .
	touch $(STAMP018)

demo: $(STAMP)
	$(BIN)/hy3 demo

# Two suites at a time (each is mostly one busy process): the Python 3.11 one beside 0.19's, then 0.18's; with
# --output-sync each one's output appears when it ends. TEST_JOBS=1 runs them one after the other.
TEST_JOBS ?= 2
test: $(STAMP) $(STAMP019) $(STAMP018)
	@echo "make test: the Python 3.11 suite beside megatron-core 0.19's, then 0.18's; each prints when it ends"
	$(MAKE) --no-print-directory -j$(TEST_JOBS) --output-sync=target test-311 test-mcore019 test-mcore018

test-311: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-mcore019: $(STAMP019)
	$(VENV019)/bin/python -m pytest -q -m megatron tests

test-mcore018: $(STAMP018)
	$(VENV018)/bin/python -m pytest -q -m megatron $(TESTS018)

lock: $(UV)
	echo "$(TORCH_PIN)" > requirements/torch-cpu.txt
	$(UV) pip compile -q pyproject.toml --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--generate-hashes --find-links $(WHEELS) -c requirements/torch-cpu.txt -o $(LOCK) \
		--custom-compile-command "make lock"
	$(UV) pip compile -q pyproject.toml --extra dev --python-version 3.12 --python-platform x86_64-manylinux_2_28 \
		--generate-hashes -c requirements/py312-mcore019-pins.txt -o $(LOCK019) --custom-compile-command "make lock"
	$(UV) pip compile -q pyproject.toml --extra dev --python-version 3.12 --python-platform x86_64-manylinux_2_28 \
		--generate-hashes -c requirements/py312-mcore018-pins.txt -o $(LOCK018) --custom-compile-command "make lock"

clean:
	rm -rf $(VENV) $(VENV019) $(VENV018) build *.egg-info

# Every GPU check on one H100/H200 in under 8 minutes (benchmarks/gpu_check.py; docs/benchmarks.md "GPU checks").
# It runs with the environment's own Python, whose CUDA torch and megatron-core are already installed
# (`make gpu-check PYTHON=python`); it makes no venv and installs nothing. GPU_CHECK_ARGS passes options.
.PHONY: gpu-check
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)
