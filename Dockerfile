# syntax=docker/dockerfile:1
# GPU image for training Hy3 with `megatron sft` (ms-swift + Megatron-Core) and for the `hy3` tools.
#
#   docker build -t megatron-hy .
#   docker run --gpus all --ipc=host --network=host -v /data:/data megatron-hy \
#       hy3 launch recipes/lora-141g-1n-16k-mtp.yaml --model /data/Hy3 --dataset /data/sft.jsonl --output-dir /data/out
#
# The stack users train with: Python 3.12, megatron-core 0.19.2. Every version is pinned. The packages
# pyproject.toml declares are pinned to the versions of the Python 3.12 / megatron-core 0.19.2 lock the project is
# tested with (requirements/py312-mcore019.lock; tests/test_dockerfile.py checks each pin against it and against
# pyproject's range, and torch against the Makefile's TORCH_PIN). The GPU-only packages are pinned to releases that
# megatron-core 0.19.2 accepts. Not built in CI (no GPU builder): transformer-engine, flash-attn and apex compile
# CUDA code, ~1-2 h on 16 cores.

# CUDA 13.0 + cuDNN devel: Transformer Engine's CUDA 13 build, and the compiled extensions below need nvcc and the
# cuDNN headers. Ubuntu 24.04 brings Python 3.12 (megatron-core 0.17 and later need it).
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    MAX_JOBS=16

RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-dev python3-venv git build-essential ninja-build iproute2 \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH}
# Build tools pinned too: the CUDA extensions below are built with them.
RUN pip install pip==26.3 setuptools==84.2.1 wheel==0.48.0 packaging==26.4 ninja==1.13.2 pybind11==3.1.0

# torch: same version as the Makefile's CPU pin, here the CUDA 13.0 build. Installed first, alone, so the
# CUDA extensions below compile against it and nothing later swaps it for another build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu130

# Transformer Engine: Megatron's fused layers, grouped GEMM for the 192 experts, context-parallel attention.
# megatron-core 0.19.2 declares transformer-engine[core_cu13,pytorch] without bounds; the newest TE release its code
# tests for is 2.14.0 (`is_te_min_version("2.14.0")`), so 2.14.1, that line's fix release.
RUN pip install --no-build-isolation "transformer-engine[core_cu13,pytorch]==2.14.1"

# flash-attn: ms-swift's default attention backend (`attention_backend: flash`) and padding-free packing.
RUN pip install --no-build-isolation flash-attn==2.8.3.post2

# apex: gradient-accumulation fusion (ms-swift switches it off with a warning when apex is missing).
# No releases on the package index; pinned to a commit of NVIDIA/apex master (2026-07-08).
ARG APEX_COMMIT=6424da3b4faa6c8f062da4a48c424fff3f02d42d
RUN git clone https://github.com/NVIDIA/apex /tmp/apex \
    && git -C /tmp/apex checkout ${APEX_COMMIT} \
    && cd /tmp/apex && APEX_CPP_EXT=1 APEX_CUDA_EXT=1 APEX_PARALLEL_BUILD=8 pip install -v --no-build-isolation . \
    && rm -rf /tmp/apex

# The Python stack, at the versions the project is tested with (ranges in pyproject.toml).
# mcore-bridge is what ms-swift 4.6 uses to load and save HF weights inside `megatron sft` (HyV3Bridge).
RUN pip install \
        megatron-core==0.19.2 \
        ms-swift==4.6.0 \
        mcore-bridge==1.6.5 \
        transformers==5.19.0 \
        peft==0.20.0 \
        safetensors==0.8.0 \
        modelscope==1.40.2 \
        numpy==2.5.5 \
        pyyaml==6.0.4 \
        xxhash==4.1.0 \
        tokenizers==0.23.3 \
        jinja2==3.1.6 \
        regex==2026.11.19 \
        datasets==4.8.4

# This package (its dependencies are all pinned above).
COPY pyproject.toml README.md /opt/megatron-hy/
COPY megatron_hy /opt/megatron-hy/megatron_hy
COPY recipes /opt/megatron-hy/recipes
COPY launch /opt/megatron-hy/launch
# converters/: the scripts a user runs without the CLI (python converters/hf_to_mcore.py --help)
COPY converters /opt/megatron-hy/converters
RUN pip install --no-deps /opt/megatron-hy

WORKDIR /opt/megatron-hy
CMD ["hy3", "--help"]
