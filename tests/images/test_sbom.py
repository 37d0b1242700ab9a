"""`make sbom`: an SPDX document per image, listing the packages the locks pinned."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.conftest import ROOT
from tests.images.conftest import Docker, image_names

pytestmark = pytest.mark.image


def locked_version(lock: str, package: str) -> str:
    """The version ``requirements/<lock>.txt`` pins for ``package``."""
    text = (ROOT / "requirements" / f"{lock}.txt").read_text()
    match = re.search(rf"^{re.escape(package)}==(\S+)", text, re.MULTILINE)
    assert match, f"{package} is not pinned in requirements/{lock}.txt"
    return match.group(1)


@pytest.mark.timeout(1200)
def test_the_runtime_sbom_lists_the_pinned_packages(docker: Docker, runtime_image: str) -> None:
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "images" / "sbom.sh"), "runtime"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=1200,
    ).stdout
    path = ROOT / out.strip().splitlines()[-1]
    document = json.loads(path.read_text())
    assert document["spdxVersion"].startswith("SPDX-2.")
    assert image_names()["SLM_RUNTIME_IMAGE"].split(":")[0] in document["name"]
    found = {(p["name"], p.get("versionInfo")) for p in document["packages"]}
    for package, lock in (
        ("llama_cpp_python", "llama-cpp-python"),
        ("onnxruntime-genai", "runtime"),
        ("fastapi", "runtime"),
    ):
        version = locked_version(lock, package.replace("_", "-"))
        names = {package, package.replace("_", "-")}
        assert any(name in names and v == version for name, v in found), (
            f"{package} {version} is not in {path.name}"
        )
    assert ("slm-operator", image_names()["SLM_VERSION"]) in found
