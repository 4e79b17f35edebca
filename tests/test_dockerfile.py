"""The Dockerfile cannot be built here (no GPU builder); its pins are checked against pyproject.toml."""

from __future__ import annotations

import re

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import REPO

tomllib = pytest.importorskip("tomllib")   # Python 3.11+

DOCKERFILE = (REPO / "Dockerfile").read_text()
PIN = re.compile(r"(?<![\w.-])([A-Za-z][A-Za-z0-9_.-]*)(?:\[[^\]]*\])?==([0-9][0-9A-Za-z.+-]*)")


def pins() -> dict[str, str]:
    found = {}
    for line in DOCKERFILE.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for name, version in PIN.findall(line):
            name = canonicalize_name(name)
            assert found.get(name, version) == version, f"{name} pinned twice with different versions"
            found[name] = version
    return found


def test_every_declared_dependency_is_pinned_inside_its_range():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = pins()
    for dep in deps:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is a dependency but the Dockerfile does not pin it"
        assert Version(pinned[name]) in req.specifier, f"{req.name}=={pinned[name]} is outside {req.specifier}"


def test_torch_matches_the_makefile_pin():
    makefile_pin = re.search(r"TORCH_PIN \?= torch==(\S+)", (REPO / "Makefile").read_text()).group(1)
    assert pins()["torch"] == makefile_pin


def test_gpu_stack_is_pinned():
    pinned = pins()
    for name in ("transformer-engine", "flash-attn", "mcore-bridge", "ms-swift", "megatron-core", "modelscope"):
        assert name in pinned, f"{name} not pinned"
    # megatron-core 0.16.1 declares transformer-engine>=2.9,<2.12 for its GPU extra
    assert Version("2.9") <= Version(pinned["transformer-engine"]) < Version("2.12")
    assert re.search(r"ARG APEX_COMMIT=[0-9a-f]{40}\n", DOCKERFILE), "apex must be pinned to a full commit"


def test_the_package_itself_is_installed_without_pulling_other_versions():
    assert "pip install --no-deps /opt/megatron-hy" in DOCKERFILE


def test_the_image_has_what_the_readme_runs():
    for folder in ("megatron_hy", "recipes", "launch", "converters"):
        assert f"COPY {folder} /opt/megatron-hy/{folder}" in DOCKERFILE, f"the image lacks {folder}/"
