"""Model sources as one concept: the CRD's pattern, the forms in messages and help, the
credentials a pod gets and whether a pull Job runs all come from ``sources.SOURCE_TYPES``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from slm_runtime.sources import (
    FORMS,
    SOURCE_PATTERN,
    SOURCE_SCHEMES,
    SOURCE_TYPES,
    Credentials,
    parse_source,
)

pytestmark = pytest.mark.unit

CRD = Path(__file__).resolve().parents[2] / "crds" / "slm.dev_localmodels.yaml"
EXAMPLE = {
    "hf": "hf://org/repo/model.gguf",
    "ollama": "ollama://gemma3:270m",
    "oci": "oci://registry.example/models/m:1",
    "https": "https://models.example/m.gguf",
    "http": "http://models.example/m.gguf",
    "pvc": "pvc://models/m.gguf",
    "file": "file:///models/m.gguf",
}


def test_every_scheme_the_crd_admits_is_a_source_type() -> None:
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    model = schema["properties"]["spec"]["properties"]["model"]
    source = model["properties"]["source"]
    assert source["pattern"] == SOURCE_PATTERN
    rules = {rule["rule"] for rule in model["x-kubernetes-validations"]}
    variant = model["properties"]["variants"]["items"]
    assert variant["properties"]["source"]["pattern"] == SOURCE_PATTERN
    variant_rules = {rule["rule"] for rule in variant["x-kubernetes-validations"]}
    for prefix, regex, _ in (t.admission for t in SOURCE_TYPES):
        rule = f"!self.source.startsWith('{prefix}') || self.source.matches('{regex}')"
        assert f"!has(self.source) || {rule}" in rules
        assert rule in variant_rules
    assert set(EXAMPLE) == set(SOURCE_SCHEMES)
    for scheme, text in EXAMPLE.items():
        assert re.fullmatch(SOURCE_PATTERN, text)
        parsed = parse_source(text, allow_insecure=True)
        assert scheme in type(parsed).schemes
        prefix, regex, _ = type(parsed).admission
        assert text.startswith(prefix)
        assert re.fullmatch(regex, text), f"the CRD would refuse {text}"
    assert not re.fullmatch(SOURCE_PATTERN, "ftp://models.example/m.gguf")


def test_each_source_type_says_how_it_is_reached() -> None:
    for source_type in SOURCE_TYPES:
        assert source_type.form in FORMS
        assert source_type.form.startswith(f"{source_type.schemes[0]}://")
        # A source that is not fetched sends no credentials anywhere.
        assert source_type.fetched or source_type.credentials is Credentials.NONE
    with pytest.raises(ValueError, match=re.escape(FORMS)):
        parse_source("ftp://models.example/m.gguf")
