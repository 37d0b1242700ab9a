"""The chart, the plain manifests and the default catalog name the tags `make images` builds."""

from __future__ import annotations

import tomllib

import pytest
import yaml
from slm_operator.catalog import DEFAULT_CUDA_IMAGE, DEFAULT_IMAGE

from tests.conftest import ROOT
from tests.images.conftest import image_names

pytestmark = pytest.mark.unit

CHART = ROOT / "charts" / "slm-operator"


def test_the_version_is_one_across_package_chart_and_images() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version
    assert image_names()["SLM_VERSION"] == version


def test_default_images_are_the_built_tags() -> None:
    names = image_names()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    version = names["SLM_VERSION"]
    assert (
        f"{values['image']['repository']}:{values['image']['tag'] or version}"
        == (names["SLM_OPERATOR_IMAGE"])
    )
    assert names["SLM_RUNTIME_IMAGE"] == DEFAULT_IMAGE
    assert f"{names['SLM_RUNTIME_IMAGE']}-cuda" == DEFAULT_CUDA_IMAGE
    catalog_images = {
        option["image"] for tier in values["catalog"]["tiers"] for option in tier["options"]
    }
    assert catalog_images <= {DEFAULT_IMAGE, DEFAULT_CUDA_IMAGE}
    manifests = (ROOT / "deploy" / "slm-operator.yaml").read_text()
    assert names["SLM_OPERATOR_IMAGE"] in manifests
