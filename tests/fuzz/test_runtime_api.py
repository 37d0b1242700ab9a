"""Fuzzing the runtime's HTTP API with schemathesis: a real `slm-runtime serve` with the real Gemma.

The OpenAPI schema is the one the app's routes and request models produce (``create_app(...)
.openapi()``; the server does not publish it). Schemathesis generates valid and invalid requests
for every operation and sends them to the live process. The properties: no 5xx (501 is the
documented answer for what a format cannot do), every error in its API family's shape
(``{"error": "..."}`` for Ollama, ``{"error": {"message", "type", ...}}`` for OpenAI), invalid
requests answered 4xx, streamed bodies well-formed, and the process still alive and ready after
each request.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import CheckContext
from schemathesis.core.transport import Response
from slm_runtime.app import create_app
from slm_runtime.config import RuntimeConfig

from tests.runtime.conftest import Server, gemma_config, start_server

from .conftest import DEEP
from .conftest import EXAMPLES as PROFILE_EXAMPLES

pytestmark = [pytest.mark.runtime, pytest.mark.fuzz]

MODEL = "gemma"
MAX_TOKENS = 4
"""Generated requests may ask for any number of tokens; the suite caps them to keep generation
cheap (the cap is itself a valid value, so the request stays what the generator meant)."""
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
UNSUPPORTED = 501
EXAMPLES = max(5, PROFILE_EXAMPLES // 15)
"""Requests per operation and generation mode; a generating request takes about a second here."""
CHECKS = [
    "not_a_server_error",
    "response_schema_conformance",
    "content_type_conformance",
    "negative_data_rejection",
]
"""Schemathesis' own checks; the family error shape and stream checks below come on top."""


STREAMING = {
    "/api/generate": "application/x-ndjson",
    "/api/chat": "application/x-ndjson",
    "/v1/chat/completions": "text/event-stream",
    "/v1/completions": "text/event-stream",
    "/v1/responses": "text/event-stream",
}
"""Routes that answer ``stream: true`` with a stream; the routes declare only JSON."""


def _pin_model_names(schema: Any) -> Any:
    """Every request's ``model`` limited to the served name.

    Any other name is a 404 by design, so without this nearly every generated request would stop
    at the model check and never reach the engine.
    """
    if isinstance(schema, dict):
        pinned = {k: _pin_model_names(v) for k, v in schema.items()}
        properties = pinned.get("properties")
        if isinstance(properties, dict) and properties.get("model", {}).get("type") == "string":
            properties["model"] = {"type": "string", "enum": [MODEL, f"{MODEL}:latest"]}
        return pinned
    if isinstance(schema, list):
        return [_pin_model_names(v) for v in schema]
    return schema


def openapi_schema(config: RuntimeConfig) -> dict[str, Any]:
    """The app's OpenAPI document, from its routes and request models, for the served model.

    Two additions describe what the code does and the generated document leaves out: the served
    model name, and the stream media type of the streaming routes.
    """
    raw: dict[str, Any] = _pin_model_names(create_app(config).openapi())
    for path, media_type in STREAMING.items():
        content = raw["paths"][path]["post"]["responses"]["200"]["content"]
        content[media_type] = {}
    return raw


@pytest.fixture(scope="module")
def fuzz_server(gemma_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A Gemma server with a small context, so even uncapped generation ends quickly."""
    server = start_server(
        tmp_path_factory.mktemp("fuzz"),
        gemma_config(
            gemma_gguf,
            modelName=MODEL,
            parallel=2,
            parameters={"contextLength": 256, "numPredict": MAX_TOKENS, "numThread": 2},
            limits={"maxRequestBytes": 65536, "maxQueue": 4},
        ),
    )
    yield server
    server.stop(signal.SIGKILL)


def _cap_tokens(case: Case[Any]) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    targets: list[tuple[dict[str, Any], str]] = [(body, key) for key in TOKEN_FIELDS]
    options = body.get("options")
    if isinstance(options, dict):
        targets.append((options, "num_predict"))
    for fields, key in targets:
        value = fields.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
            fields[key] = MAX_TOKENS


def error_shape(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """Errors are 4xx (or 501) in the API family's own shape; never a 5xx."""
    status = response.status_code
    if status < 400:
        return None
    assert status < 500 or status == UNSUPPORTED, f"{status}: {response.text[:500]}"
    try:
        body = json.loads(response.text)
    except ValueError:
        raise AssertionError(f"error body is not JSON: {response.text[:200]!r}") from None
    if case.path.startswith("/v1/"):
        error = body.get("error") if isinstance(body, dict) else None
        assert isinstance(error, dict), f"OpenAI errors are {{'error': {{...}}}}: {body}"
        assert isinstance(error.get("message"), str), body
        assert error["message"], body
        assert isinstance(error.get("type"), str), body
        assert {"param", "code"} <= error.keys(), body
    else:
        assert isinstance(body, dict), body
        assert isinstance(body.get("error"), str), body
        assert body["error"], body
    return True


def stream_shape(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """A 200 stream is complete: NDJSON ending in a done line, SSE ending in [DONE], or the
    Responses API's typed events ending in response.completed or response.incomplete."""
    content_type = response.headers.get("content-type", [""])[0]
    if response.status_code != 200:
        return None
    if content_type.startswith("application/x-ndjson"):
        lines = [json.loads(line) for line in response.text.splitlines() if line.strip()]
        assert lines, "an empty NDJSON stream"
        assert all("error" not in line for line in lines), lines[-1]
        assert lines[-1].get("done") is True, lines[-1]
    elif content_type.startswith("text/event-stream") and case.path == "/v1/responses":
        events = [e for e in response.text.split("\n\n") if e.strip()]
        assert events, "an empty event stream"
        types = []
        for event in events:
            name, data = event.split("\n", 1)
            payload = json.loads(data.removeprefix("data: "))
            assert name == f"event: {payload['type']}", (name, payload["type"])
            types.append(payload["type"])
        assert types[-1] in ("response.completed", "response.incomplete"), types[-1:]
    elif content_type.startswith("text/event-stream"):
        events = [e for e in response.text.split("\n\n") if e.strip()]
        assert events, "an empty event stream"
        assert events[-1] == "data: [DONE]", events[-1:]
        for event in events[:-1]:
            payload = json.loads(event.removeprefix("data: "))
            assert "error" not in payload, payload
    return True


def api_schema() -> schemathesis.BaseSchema:
    """The runtime's OpenAPI schema with the suite's generation settings."""
    config = RuntimeConfig(model_name=MODEL, format="gguf", model_path="/models/model.gguf")
    loaded = schemathesis.openapi.from_dict(openapi_schema(config))
    loaded.config.update(request_timeout=120)
    loaded.config.checks.update(included_check_names=CHECKS)
    loaded.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        max_examples=EXAMPLES,
        deterministic=not DEEP,
    )
    # The coverage phase's boundary values take about 80 requests per operation: deep runs only.
    loaded.config.phases.update(
        phases=["examples", "coverage", "fuzzing"] if DEEP else ["examples", "fuzzing"]
    )
    return loaded


schema = api_schema()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_runtime_api_survives_generated_requests(case: Case[Any], fuzz_server: Server) -> None:
    _cap_tokens(case)
    with httpx.Client(timeout=120) as client:
        case.call_and_validate(
            base_url=fuzz_server.url, additional_checks=[error_shape, stream_shape]
        )
        assert fuzz_server.proc.poll() is None, f"the server exited:\n{fuzz_server.logs()}"
        ready = client.get(f"{fuzz_server.url}/readyz")
        assert ready.status_code == 200, ready.text
