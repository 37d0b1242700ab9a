"""`slmctl chat`: a conversation with a LocalModel through the API server's service proxy."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx
from slm_runtime.config import PORT_NAME

from slm_operator.cli_cluster import CliError, Cluster, Object, connect
from slm_operator.cli_output import _failure, _phase

ENV_TOKEN: Final = "SLM_API_TOKEN"
"""Bearer token for ``chat --url`` against a model with ``serving.authSecret``."""


@dataclass
class Endpoint:
    """Where to send chat requests and with which credentials."""

    base_url: str
    api: str
    model: str
    headers: dict[str, str]
    verify: ssl.SSLContext | bool = True
    cert: tuple[str, str] | None = None


def proxy_endpoint(cluster: Cluster, obj: Mapping[str, Any], api: str | None) -> Endpoint:
    """The model's Service through the API server's service proxy, with kubeconfig credentials."""
    meta, spec, st = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    name, namespace = meta["name"], meta["namespace"]
    if st.get("phase") == "Failed":
        raise CliError(f'LocalModel "{name}" has Failed: {_failure(st)}')
    if not st.get("readyReplicas"):
        raise CliError(
            f'LocalModel "{name}" is not serving yet (phase {_phase(obj)}); '
            f"see: slmctl status {name} -n {namespace}"
        )
    served = (spec.get("serving") or {}).get("apis") or ["ollama", "openai"]
    if api and api not in served:
        raise CliError(f'LocalModel "{name}" serves {", ".join(served)}, not {api}')
    conf = cluster.api.configuration
    if conf.refresh_api_key_hook is not None:
        conf.refresh_api_key_hook(conf)
    headers = {}
    token = conf.get_api_key_with_prefix("BearerToken") or conf.get_api_key_with_prefix(
        "authorization"
    )
    if token:
        headers["Authorization"] = token
    verify: ssl.SSLContext | bool = bool(conf.verify_ssl)
    if conf.verify_ssl:
        verify = ssl.create_default_context(cafile=conf.ssl_ca_cert or None)
    cert = (conf.cert_file, conf.key_file) if conf.cert_file and conf.key_file else None
    base = f"{cluster.host}/api/v1/namespaces/{namespace}/services/{name}:{PORT_NAME}/proxy"
    return Endpoint(base, api or served[0], name, headers, verify, cert)


def stream_chat(
    endpoint: Endpoint, messages: list[dict[str, str]], options: Object
) -> Iterator[str]:
    """Stream the assistant's reply as text pieces (Ollama NDJSON or OpenAI SSE)."""
    if endpoint.api == "ollama":
        url = f"{endpoint.base_url}/api/chat"
        body: Object = {"model": endpoint.model, "messages": messages, "stream": True}
        if options:
            body["options"] = options
    else:
        url = f"{endpoint.base_url}/v1/chat/completions"
        body = {"model": endpoint.model, "messages": messages, "stream": True}
        if "temperature" in options:
            body["temperature"] = options["temperature"]
        if "num_predict" in options:
            body["max_tokens"] = options["num_predict"]
    with (
        httpx.Client(
            verify=endpoint.verify, cert=endpoint.cert, timeout=httpx.Timeout(600, connect=10)
        ) as http,
        http.stream("POST", url, json=body, headers=endpoint.headers) as response,
    ):
        if response.status_code != 200:
            detail = response.read().decode(errors="replace").strip()
            raise CliError(f"the model answered {response.status_code}: {detail[:500]}")
        for line in response.iter_lines():
            piece = _piece(endpoint.api, line)
            if piece is None:
                return
            yield piece


def _piece(api: str, line: str) -> str | None:
    """The text in one stream line; None at the end of the stream."""
    if not line.strip():
        return ""
    if api == "openai":
        if not line.startswith("data:"):
            return ""
        data = line[5:].strip()
        if data == "[DONE]":
            return None
        chunk = json.loads(data)
        if "error" in chunk:
            raise CliError(f"the model failed: {chunk['error']}")
        choices = chunk.get("choices") or [{}]
        return str((choices[0].get("delta") or {}).get("content") or "")
    chunk = json.loads(line)
    if "error" in chunk:
        raise CliError(f"the model failed: {chunk['error']}")
    return str((chunk.get("message") or {}).get("content") or "")


def _say(endpoint: Endpoint, messages: list[dict[str, str]], options: Object) -> str:
    reply = []
    try:
        for piece in stream_chat(endpoint, messages, options):
            sys.stdout.write(piece)
            sys.stdout.flush()
            reply.append(piece)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the model at {endpoint.base_url}: {exc}") from None
    finally:
        sys.stdout.write("\n")
        sys.stdout.flush()
    return "".join(reply)


def cmd_chat(args: argparse.Namespace) -> int:
    """Chat with a model: a REPL on a terminal, one answer for --prompt or piped stdin."""
    if args.url:
        headers = {}
        if os.environ.get(ENV_TOKEN):
            headers["Authorization"] = f"Bearer {os.environ[ENV_TOKEN]}"
        endpoint = Endpoint(args.url.rstrip("/"), args.api or "ollama", args.name, headers)
    else:
        cluster = connect(args)
        endpoint = proxy_endpoint(
            cluster, cluster.call("GET", cluster.namespace, args.name), args.api
        )
    options: Object = {}
    if args.temperature is not None:
        options["temperature"] = args.temperature
    if args.max_tokens is not None:
        options["num_predict"] = args.max_tokens
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    if args.prompt is not None or not sys.stdin.isatty():
        prompt = args.prompt if args.prompt is not None else sys.stdin.read()
        if not prompt.strip():
            raise CliError("empty prompt: pass --prompt TEXT or pipe text on stdin")
        _say(endpoint, [*messages, {"role": "user", "content": prompt}], options)
        return 0
    print(f"Chatting with {endpoint.model} ({endpoint.api} API). Ctrl-D or /bye to quit.")
    while True:
        try:
            prompt = input(">>> ")
        except EOFError:
            print()
            return 0
        if prompt.strip() in ("/bye", "/exit", "/quit"):
            return 0
        if not prompt.strip():
            continue
        messages.append({"role": "user", "content": prompt})
        try:
            reply = _say(endpoint, messages, options)
        except KeyboardInterrupt:
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": reply})
