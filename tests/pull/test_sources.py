"""The source grammar: every form parses to the right fields, and bad input names what is wrong."""

from __future__ import annotations

import pytest
from slm_runtime.config import ModelFormat
from slm_runtime.sources import (
    FileSource,
    HfSource,
    HttpsSource,
    OciSource,
    OllamaSource,
    PvcSource,
    Source,
    infer_format,
    model_path,
    parse_source,
)

pytestmark = pytest.mark.unit

DIGEST = "sha256:" + "ab" * 32

VALID: list[tuple[str, Source]] = [
    (
        "hf://unsloth/gemma-3-270m-it-GGUF/gemma-3-270m-it-Q4_K_M.gguf",
        HfSource(repo_id="unsloth/gemma-3-270m-it-GGUF", path="gemma-3-270m-it-Q4_K_M.gguf"),
    ),
    (
        "hf://microsoft/Phi-3-mini-4k-instruct-onnx@v1.0/cpu_and_mobile/cpu-int4",
        HfSource(
            repo_id="microsoft/Phi-3-mini-4k-instruct-onnx",
            revision="v1.0",
            path="cpu_and_mobile/cpu-int4",
        ),
    ),
    (
        "hf://org/repo@" + "0" * 40 + "/m.gguf",
        HfSource(repo_id="org/repo", revision="0" * 40, path="m.gguf"),
    ),
    ("ollama://qwen2.5:0.5b", OllamaSource(model="qwen2.5", tag="0.5b")),
    ("ollama://gemma3", OllamaSource(model="gemma3", tag="latest")),
    ("ollama://me/tiny:q4", OllamaSource(model="tiny", tag="q4", namespace="me")),
    (
        "ollama://127.0.0.1:5000/library/gemma3:270m",
        OllamaSource(model="gemma3", tag="270m", namespace="library", host="127.0.0.1:5000"),
    ),
    (
        "ollama://registry.example.com/team/m:v1",
        OllamaSource(model="m", tag="v1", namespace="team", host="registry.example.com"),
    ),
    (
        "oci://host:5000/repo:tag",
        OciSource(host="host:5000", repository="repo", tag="tag"),
    ),
    (
        f"oci://ghcr.io/org/models/gemma@{DIGEST}",
        OciSource(host="ghcr.io", repository="org/models/gemma", digest=DIGEST),
    ),
    (
        f"oci://[::1]:5000/a/b:v1@{DIGEST}",
        OciSource(host="[::1]:5000", repository="a/b", tag="v1", digest=DIGEST),
    ),
    (
        "https://example.com/models/gemma.gguf?download=true",
        HttpsSource(url="https://example.com/models/gemma.gguf?download=true"),
    ),
    ("https://127.0.0.1:8443/a%20b.gguf", HttpsSource(url="https://127.0.0.1:8443/a%20b.gguf")),
    ("pvc://models-pvc/gemma/model.gguf", PvcSource(claim="models-pvc", path="gemma/model.gguf")),
    ("file:///opt/models/gemma.gguf", FileSource(path="/opt/models/gemma.gguf")),
]


@pytest.mark.parametrize(("text", "expected"), VALID, ids=[t for t, _ in VALID])
def test_valid_sources_parse(text: str, expected: Source) -> None:
    assert parse_source(text) == expected


@pytest.mark.parametrize(("text", "expected"), VALID, ids=[t for t, _ in VALID])
def test_canonical_form_parses_back_to_the_same_source(text: str, expected: Source) -> None:
    assert parse_source(str(expected)) == expected


INVALID: list[tuple[str, str]] = [
    ("", "empty"),
    ("gemma.gguf", "no scheme"),
    ("s3://bucket/key", "'s3' is not supported"),
    ("hf://org/repo", "needs an org, a repo and a file path"),
    ("hf://org/repo@/m.gguf", "no revision after it"),
    ("hf://-org/repo/m.gguf", "hf org '-org'"),
    ("hf://org/re--po/m.gguf", "hf repo 're--po'"),
    ("hf://org/repo@refs~pr/m.gguf", "hf revision 'refs~pr'"),
    ("hf://org/repo/../secret", "'..'"),
    ("hf://org/repo/a//b", "empty, '.' or '..' component"),
    ("ollama://Gemma3:1b", "ollama model 'Gemma3'"),
    ("ollama://qwen2.5:", "ollama tag ''"),
    ("ollama://a/b/c/d:1", "does not match"),
    ("ollama://bad_host!/ns/m:1", "host 'bad_host!'"),
    ("ollama://host:99999/ns/m:1", "port '99999'"),
    ("oci://host:5000/repo", "needs a :TAG or an @sha256:HEX"),
    ("oci://host:5000", "needs a registry host and a repository"),
    ("oci://host/Repo:v1", "component 'Repo'"),
    ("oci://host/repo@sha256:abc", "64 lowercase hex"),
    ("oci://host/repo:-bad", "oci tag '-bad'"),
    ("oci://host:port/repo:v1", "port 'port'"),
    ("http://example.com/m.gguf", "allowInsecure: true"),
    ("https://user:pw@example.com/m.gguf", "credentialsSecret"),
    ("https://example.com/", "must name a file"),
    ("https://example.com", "must name a file"),
    ("https://example.com/m.gguf#x", "fragment"),
    ("https://example.com/a<b>.gguf", "percent-encoded"),
    ("https://example.com/a%zz.gguf", "percent-encoded"),
    ("https:///m.gguf", "no host"),
    ("https://example.com/a b.gguf", "whitespace"),
    ("pvc://Models/m.gguf", "claim name 'Models'"),
    ("pvc://models", "pvc://CLAIM/PATH"),
    ("pvc://models//m.gguf", "must be relative"),
    ("file://opt/m.gguf", "absolute path"),
    ("file:///opt/../etc/passwd", "'..'"),
    ("hf://" + "a" * 3000, "at most 2048"),
]


@pytest.mark.parametrize(("text", "message"), INVALID, ids=[t[:60] for t, _ in INVALID])
def test_invalid_sources_name_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")) as err:
        parse_source(text)
    assert "Traceback" not in str(err.value)


def test_http_parses_when_insecure_is_allowed() -> None:
    source = parse_source("http://127.0.0.1:8080/m.gguf", allow_insecure=True)
    assert isinstance(source, HttpsSource)
    assert source.insecure
    assert source.file_name == "m.gguf"


def test_credentials_never_echo_in_the_error() -> None:
    with pytest.raises(ValueError, match="credentialsSecret") as err:
        parse_source("https://user:hunter2@example.com/m.gguf")
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf://o/r/m.Q4.gguf", ModelFormat.GGUF),
        ("hf://o/r/onnx/model.onnx", ModelFormat.ONNX),
        ("hf://o/r/cpu-int4", None),
        ("ollama://gemma3:270m", ModelFormat.GGUF),
        ("oci://h/r:v1", None),
        ("https://h/m.GGUF?x=1", ModelFormat.GGUF),
        ("file:///m/model.gguf", ModelFormat.GGUF),
    ],
)
def test_infer_format(text: str, expected: ModelFormat | None) -> None:
    assert infer_format(parse_source(text)) == expected


def test_oci_reference_prefers_the_digest() -> None:
    source = parse_source(f"oci://h/r:v1@{DIGEST}")
    assert isinstance(source, OciSource)
    assert source.reference == DIGEST


@pytest.mark.parametrize(
    ("text", "model_format", "expected"),
    [
        ("hf://o/r/m.gguf", ModelFormat.GGUF, "/models/model.gguf"),
        ("oci://h/r:v1", ModelFormat.ONNX, "/models/model"),
        ("ollama://gemma3:270m", ModelFormat.GGUF, "/models/model.gguf"),
        ("pvc://claim/dir/m.gguf", ModelFormat.GGUF, "/models/dir/m.gguf"),
        ("file:///opt/m/model.gguf", ModelFormat.GGUF, "/opt/m/model.gguf"),
    ],
)
def test_model_path(text: str, model_format: ModelFormat, expected: str) -> None:
    assert model_path(parse_source(text), model_format) == expected
