"""The wheel the images install holds every package of the source tree."""

from __future__ import annotations

import tomllib

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def test_every_source_package_is_in_the_distribution() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for name, folder in setuptools["package-dir"].items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            if "__pycache__" not in init.parts:
                relative = init.parent.relative_to(ROOT / folder)
                found.add(".".join([name, *relative.parts]))
    assert found == set(setuptools["packages"])
