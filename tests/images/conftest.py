"""The project's images, as `make images` built them, run by the real Docker engine."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.pull.conftest import nginx

__all__ = ["nginx"]  # the pull suite's nginx, for pulls from inside the image

IMAGES_ENV = ROOT / "hack" / "images" / "env.sh"


@cache
def image_names() -> dict[str, str]:
    """DOCKER and the image tags, as hack/images/env.sh (which `make images` uses) sets them."""
    keys = ("DOCKER", "SLM_VERSION", "SLM_OPERATOR_IMAGE", "SLM_RUNTIME_IMAGE")
    script = f"source {IMAGES_ENV}; " + "; ".join(f'echo "{key}=${{{key}}}"' for key in keys)
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


@dataclass(frozen=True)
class Docker:
    """The Docker CLI that `make images` uses."""

    binary: str

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        """``docker ARGS``; its stdout."""
        proc = subprocess.run(
            [self.binary, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
            )
        return proc.stdout

    def inspect(self, image: str) -> dict[str, Any]:
        """``docker image inspect`` of one image."""
        value = json.loads(self.run("image", "inspect", image))[0]
        assert isinstance(value, dict)
        return value


def _unavailable(reason: str) -> None:
    # In CI a missing engine or image is a failure: the image suites never turn into skips.
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (make setup installs Docker and builds the images)")
    pytest.skip(f"{reason}; run make setup (or make images)")


def docker_engine() -> Docker:
    """The Docker engine `make images` built with, answering."""
    binary = image_names()["DOCKER"]
    try:
        ok = subprocess.run([binary, "info"], capture_output=True, timeout=30).returncode == 0
    except FileNotFoundError:
        ok = False
    if not ok:
        _unavailable(f"no Docker engine answers {binary} info")
    return Docker(binary)


@pytest.fixture(scope="session")
def docker() -> Docker:
    """The Docker engine, answering."""
    return docker_engine()


def built(docker: Docker, image: str) -> str:
    """The tag, after checking that `make images` built it."""
    found = subprocess.run([docker.binary, "image", "inspect", image], capture_output=True)
    if found.returncode != 0:
        _unavailable(f"the image {image} is not built")
    return image


@pytest.fixture(scope="session")
def runtime_image(docker: Docker) -> str:
    """The CPU runtime image."""
    return built(docker, image_names()["SLM_RUNTIME_IMAGE"])


@pytest.fixture(scope="session")
def operator_image(docker: Docker) -> str:
    """The operator image."""
    return built(docker, image_names()["SLM_OPERATOR_IMAGE"])
