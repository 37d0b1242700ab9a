"""The hash-pinned locks in requirements/ agree with pyproject.toml (`make lock` rewrites them)."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

# Each lock and the extras of pyproject.toml it installs, as hack/lock.sh compiles them.
PROFILES = {
    "dev": ("operator", "runtime", "openvino", "dev"),
    "operator": ("operator",),
    "runtime": ("runtime", "openvino"),
    "runtime-cuda": ("runtime", "cuda"),
}
LLAMA = "llama-cpp-python"
# Pins a lock leaves to another file: the images build llama-cpp-python from the pin in
# requirements/llama-cpp-python.txt in a layer of its own; onnxruntime-openvino (dev, CPU image)
# and onnxruntime-gpu (CUDA image) install the `onnxruntime` module in place of the package
# onnxruntime-genai names, which would overwrite it; the CUDA image takes onnxruntime-genai-cuda.
ELSEWHERE = {
    "dev": {"onnxruntime"},
    "runtime": {LLAMA, "onnxruntime"},
    "runtime-cuda": {LLAMA, "onnxruntime", "onnxruntime-genai"},
}
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^ \\;]+)")


def pins(profile: str) -> dict[str, tuple[Version, int]]:
    """Package -> (pinned version, number of hashes) of one lock."""
    found: dict[str, tuple[Version, int]] = {}
    name = ""
    for line in (ROOT / "requirements" / f"{profile}.txt").read_text().splitlines():
        if match := PIN.match(line):
            name = canonicalize_name(match.group(1))
            found[name] = (Version(match.group(2)), 0)
        elif line.strip().startswith("--hash=sha256:") and name:
            version, hashes = found[name]
            found[name] = (version, hashes + 1)
    return found


def required(extras: tuple[str, ...]) -> list[Requirement]:
    """The project's own dependencies and those of ``extras``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = list(project["dependencies"])
    for extra in extras:
        names += project["optional-dependencies"][extra]
    return [Requirement(name) for name in names]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_dependency_is_pinned_with_hashes_within_its_range(profile: str) -> None:
    locked = pins(profile)
    assert locked, f"requirements/{profile}.txt pins nothing"
    unhashed = sorted(name for name, (_, hashes) in locked.items() if hashes == 0)
    assert not unhashed, f"requirements/{profile}.txt pins without a hash: {unhashed}"
    stale = []
    for requirement in required(PROFILES[profile]):
        name = canonicalize_name(requirement.name)
        if name in ELSEWHERE.get(profile, set()):
            assert name not in locked, f"{name} has no place in requirements/{profile}.txt"
            continue
        if name not in locked or not requirement.specifier.contains(locked[name][0], True):
            stale.append(f"{requirement} (locked: {locked.get(name, ('nothing',))[0]})")
    assert not stale, f"requirements/{profile}.txt is stale, run make lock: {stale}"


def test_the_cuda_toolkit_builds_against_the_cuda_libraries_the_image_ships() -> None:
    toolkit = pins("cuda-toolkit")
    assert {"nvidia-cuda-nvcc", "nvidia-nvvm", "nvidia-cublas"} <= set(toolkit)
    assert all(hashes for _, hashes in toolkit.values())
    image = pins("runtime-cuda")
    shared = set(toolkit) & set(image)
    assert {"nvidia-cuda-runtime", "nvidia-cublas"} <= shared
    assert {name: toolkit[name] for name in shared} == {name: image[name] for name in shared}


def test_the_images_llama_cpp_python_pin_is_the_dev_lock_s() -> None:
    """The images and the development virtualenv build the same llama.cpp."""
    assert pins(LLAMA) == {LLAMA: pins("dev")[LLAMA]}
