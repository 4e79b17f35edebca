"""The install: the locks, pyproject.toml's ranges and the Dockerfile's pins agree.

Three locks: Python 3.11 with megatron-core 0.16.1 (CPU torch), Python 3.12 with megatron-core 0.19.2 (the stack the
Docker image builds) and Python 3.12 with 0.18.0. The Dockerfile cannot be built here (no GPU builder), so its pins
are checked against the 0.19.2 lock and the ranges."""

from __future__ import annotations

import re

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import REPO

try:
    import tomllib
except ModuleNotFoundError:   # Python 3.10: the dev extra brings tomli
    import tomli as tomllib

DOCKERFILE = (REPO / "Dockerfile").read_text()
# each lock (requirements/NAME.lock) and its Python
LOCKS = {"cpu-py311": "3.11", "py312-mcore019": "3.12", "py312-mcore018": "3.12"}
IMAGE_LOCK = "py312-mcore019"
IMAGE_PYTHON = LOCKS[IMAGE_LOCK]
LOCK_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)==(\S+) \\$", re.M)
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


def lock_text(name: str) -> str:
    return (REPO / "requirements" / f"{name}.lock").read_text()


def locked(name: str = IMAGE_LOCK) -> dict[str, str]:
    return {canonicalize_name(pkg): version for pkg, version in LOCK_PIN.findall(lock_text(name))}


def declared(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return [Requirement(d) for d in deps]


def makefile_torch_pin() -> str:
    return re.search(r"TORCH_PIN \?= torch==(\S+)", (REPO / "Makefile").read_text()).group(1)


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_each_lock_pins_every_declared_dependency_inside_its_range(name):
    lock, python = locked(name), LOCKS[name]
    for req in declared() + declared("dev"):
        if req.marker is not None and not req.marker.evaluate({"python_version": python}):
            continue
        pkg = canonicalize_name(req.name)
        assert pkg in lock, f"{req.name} is declared in pyproject.toml but not in requirements/{name}.lock"
        assert req.specifier.contains(Version(lock[pkg]), prereleases=True), \
            f"{req.name}=={lock[pkg]} is outside {req.specifier} (requirements/{name}.lock)"


def test_the_locks_hold_the_supported_megatron_core_ends_and_nemos_release():
    assert locked("cpu-py311")["megatron-core"] == "0.16.1"
    assert Version(locked("py312-mcore019")["megatron-core"]) >= Version("0.19")
    assert locked("py312-mcore018")["megatron-core"] == "0.18.0"
    # megatron-core 0.17 and later need Python 3.12: the range must say so, or pip on 3.11 would look for them
    low, high = (r for r in declared() if canonicalize_name(r.name) == "megatron-core")
    for req in (low, high):
        for name, python in LOCKS.items():
            if req.marker.evaluate({"python_version": python}):
                assert Version(locked(name)["megatron-core"]) in req.specifier


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_every_locked_package_is_hash_checked_and_torch_is_pinned(name):
    entries = re.split(r"\n(?=[A-Za-z0-9])", lock_text(name))
    packages = [e for e in entries if LOCK_PIN.match(e)]
    assert len(packages) == len(locked(name)) > 50
    for entry in packages:
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), f"no hash for {entry.splitlines()[0]}"
    # 3.11: the CPU wheel on disk; 3.12: the same release from the package index (a CUDA build that runs on a CPU)
    want = makefile_torch_pin() if LOCKS[name] == "3.11" else Version(makefile_torch_pin()).public
    assert locked(name)["torch"] == want
    assert (REPO / "requirements" / "torch-cpu.txt").read_text().strip() == f"torch=={makefile_torch_pin()}"


def test_dockerfile_pins_are_the_locked_versions():
    lock = locked()
    for name, version in pins().items():
        if name in lock and name != "torch":
            assert version == lock[name], f"Dockerfile pins {name}=={version}, the lock has {lock[name]}"


def test_every_declared_dependency_is_pinned_inside_its_range():
    pinned = pins()
    for req in declared():
        if req.marker is not None and not req.marker.evaluate({"python_version": IMAGE_PYTHON}):
            continue
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is a dependency but the Dockerfile does not pin it"
        assert Version(pinned[name]) in req.specifier, f"{req.name}=={pinned[name]} is outside {req.specifier}"


def test_torch_matches_the_makefile_pin():
    # the image takes the CUDA build of the same release as the CPU lock's local `+cpu` version
    assert pins()["torch"] == Version(makefile_torch_pin()).public


def test_gpu_stack_is_pinned():
    pinned = pins()
    for name in ("transformer-engine", "flash-attn", "mcore-bridge", "ms-swift", "megatron-core", "modelscope"):
        assert name in pinned, f"{name} not pinned"
    # megatron-core 0.19.2 declares transformer-engine without bounds; its code tests for releases up to 2.14.0
    assert Version("2.14") <= Version(pinned["transformer-engine"]) < Version("2.15")
    assert re.search(r"ARG APEX_COMMIT=[0-9a-f]{40}\n", DOCKERFILE), "apex must be pinned to a full commit"


def test_the_package_itself_is_installed_without_pulling_other_versions():
    assert "pip install --no-deps /opt/megatron-hy" in DOCKERFILE


def test_the_image_has_what_the_readme_runs():
    for folder in ("megatron_hy", "recipes", "launch", "converters"):
        assert f"COPY {folder} /opt/megatron-hy/{folder}" in DOCKERFILE, f"the image lacks {folder}/"
