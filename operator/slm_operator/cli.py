"""slmctl: create, import, list, inspect and chat with LocalModels from the command line."""

from __future__ import annotations

import argparse
import json
import os
import re
import ssl
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, NoReturn

import httpx
import shtab
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from slm_runtime.config import PORT_NAME, Device, ModelFormat
from slm_runtime.sources import FORMS
from urllib3.exceptions import HTTPError as Urllib3Error

from slm_operator import modelfile
from slm_operator.api import InvalidSpecError, parse_localmodel
from slm_operator.names import (
    API_VERSION,
    DNS1035_PATTERN,
    GROUP,
    KIND,
    NAME_MAX_LENGTH,
    PLURAL,
    VERSION,
)

FIELD_MANAGER: Final = "slmctl"
ENV_TOKEN: Final = "SLM_API_TOKEN"
"""Bearer token for ``chat --url`` against a model with ``serving.authSecret``."""
ENV_HF_ENDPOINT: Final = "HF_ENDPOINT"
ENV_HF_TOKEN: Final = "HF_TOKEN"
HF_DEFAULT_ENDPOINT: Final = "https://huggingface.co"

Object = dict[str, Any]


class CliError(Exception):
    """A failure to report as one line on stderr with exit status 1."""


# --- output -----------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (templates, system prompts) as YAML literal blocks."""


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def dump(obj: Any, output: str) -> str:
    """An object as YAML (block strings kept readable) or indented JSON."""
    if output == "json":
        return json.dumps(obj, indent=2) + "\n"
    return yaml.dump(
        obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def _age(timestamp: str | None, now: datetime | None = None) -> str:
    """kubectl-style age: 45s, 12m, 3h, 5d."""
    if not timestamp:
        return "<unknown>"
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size or (unit == "m" and seconds >= size):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded like kubectl's: three spaces between, no trailing space."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines) + "\n"


def _phase(obj: Mapping[str, Any]) -> str:
    st = obj.get("status") or {}
    phase = str(st.get("phase") or "Pending")
    progress = (st.get("model") or {}).get("progress")
    return f"{phase} ({progress})" if phase == "Pulling" and progress else phase


def list_table(items: Sequence[Mapping[str, Any]], all_namespaces: bool) -> str:
    """The ``slmctl ls`` table: the columns of ``kubectl get lm``, pull progress with the phase."""
    header = ["NAME", "MODEL", "BACKEND", "READY", "PHASE", "AGE"]
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    rows = [header]
    for obj in items:
        meta, spec, st = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
        row = [
            meta["name"],
            str((spec.get("model") or {}).get("source", "")),
            str(st.get("backend") or "<none>"),
            f"{st.get('readyReplicas', 0)}/{(spec.get('serving') or {}).get('replicas', 1)}",
            _phase(obj),
            _age(meta.get("creationTimestamp")),
        ]
        if all_namespaces:
            row.insert(0, meta.get("namespace", ""))
        rows.append(row)
    return table(rows)


def describe(obj: Mapping[str, Any]) -> str:
    """The ``slmctl status`` text: phase, backend, fallback, model and pull progress, conditions."""
    meta, spec, st = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    model, hardware = st.get("model") or {}, spec.get("hardware") or {}
    fields = [
        ("Name", meta["name"]),
        ("Namespace", meta.get("namespace", "")),
        ("Phase", st.get("phase") or "Pending (not yet reconciled: is the operator running?)"),
        ("Source", (spec.get("model") or {}).get("source", "")),
        ("Backend", st.get("backend") or "<none>"),
        ("Preferred", hardware.get("preferred", Device.NPU.value)),
    ]
    if st.get("fallbackReason"):
        fields.append(("Fallback reason", st["fallbackReason"]))
    if model.get("progress"):
        fields.append(("Pull progress", model["progress"]))
    if model.get("digest"):
        fields.append(("Digest", model["digest"]))
    if model.get("sizeBytes") is not None:
        fields.append(("Size", f"{model['sizeBytes'] / 2**20:.1f} MiB"))
    wanted = (spec.get("serving") or {}).get("replicas", 1)
    fields.append(("Replicas", f"{st.get('readyReplicas', 0)}/{wanted} ready"))
    fields.append(("Endpoint", st.get("endpoint") or "<none>"))
    width = max(len(k) for k, _ in fields) + 2
    text = "".join(f"{k + ':':<{width}}{v}\n" for k, v in fields)
    if st.get("phase") == "Failed":
        text += f"{'Error:':<{width}}{_failure(st)}\n"
    conditions = st.get("conditions") or []
    if conditions:
        rows = [["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]]
        rows += [
            [
                c.get("type", ""),
                c.get("status", ""),
                c.get("reason", ""),
                _age(c.get("lastTransitionTime")),
                c.get("message", ""),
            ]
            for c in conditions
        ]
        text += "Conditions:\n" + "".join(f"  {line}\n" for line in table(rows).splitlines())
    return text


def _failure(st: Mapping[str, Any]) -> str:
    for kind in ("Ready", "ModelAvailable", "Degraded"):
        for cond in st.get("conditions") or []:
            if cond.get("type") == kind and cond.get("status") != "True" and cond.get("message"):
                return f"{cond.get('reason')}: {cond['message']}"
    return "see the conditions below"


# --- the API server ---------------------------------------------------------------------------


@dataclass
class Cluster:
    """A connection to the API server with the kubeconfig's credentials."""

    api: client.ApiClient
    namespace: str

    @classmethod
    def connect(cls, kubeconfig: str | None, context: str | None, namespace: str | None) -> Cluster:
        """Load the kubeconfig (``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``)."""
        configuration = client.Configuration()
        try:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
            _, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError) as exc:
            where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise CliError(
                f"cannot load a kubeconfig from {where}: {exc}; pass --kubeconfig FILE or set "
                "KUBECONFIG"
            ) from None
        if context:
            contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
            active = next((c for c in contexts if c["name"] == context), active)
        default_ns = (active or {}).get("context", {}).get("namespace") or "default"
        configuration.retries = 1
        return cls(client.ApiClient(configuration), namespace or default_ns)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Object:
        """One API call; raise ApiException on a non-2xx answer, CliError when unreachable."""
        request = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api.call_api(*request)
            data = response.read()  # type: ignore[no-untyped-call]
        except Urllib3Error as exc:
            raise CliError(f"cannot reach the API server at {self.host}: {exc}") from None
        if not 200 <= response.status <= 299:
            raise ApiException(status=response.status, reason=response.reason, body=data)
        result: Object = json.loads(data) if data else {}
        return result

    @property
    def host(self) -> str:
        """The API server URL."""
        return str(self.api.configuration.host)

    def path(self, namespace: str | None, name: str | None = None) -> str:
        """The LocalModel collection or object path."""
        base = f"/apis/{GROUP}/{VERSION}"
        base += f"/namespaces/{namespace}/{PLURAL}" if namespace else f"/{PLURAL}"
        return f"{base}/{name}" if name else base

    def call(
        self, method: str, namespace: str | None, name: str | None = None, **kw: Any
    ) -> Object:
        """A LocalModel API call with errors a user can act on."""
        try:
            return self.request(method, self.path(namespace, name), **kw)
        except ApiException as exc:
            raise self._explain(exc, namespace, name) from None

    def _explain(self, exc: ApiException, namespace: str | None, name: str | None) -> CliError:
        try:
            body = json.loads(exc.body or b"{}")
        except (ValueError, TypeError):
            body = {}
        message = body.get("message") or exc.reason
        if exc.status == 404:
            if name and (body.get("details") or {}).get("name") == name:
                return CliError(f'LocalModel "{name}" not found in namespace "{namespace}"')
            return CliError(
                f"the LocalModel API ({PLURAL}.{GROUP}/{VERSION}) is not installed on "
                f"{self.host}; install the CRDs: kubectl apply --server-side -f crds/ "
                "(or helm install the slm-operator chart)"
            )
        if exc.status in (401, 403):
            return CliError(f"the API server refused the request ({exc.status}): {message}")
        if exc.status == 422:
            return CliError(f"the API server rejected the LocalModel: {message}")
        return CliError(f"API server error {exc.status}: {message}")


# --- commands ---------------------------------------------------------------------------------


def build_localmodel(args: argparse.Namespace, namespace: str | None) -> Object:
    """The LocalModel ``slmctl run`` sends: only the fields the user set, validated first."""
    if not re.fullmatch(DNS1035_PATTERN, args.name) or len(args.name) > NAME_MAX_LENGTH:
        raise CliError(
            f"invalid name {args.name!r}: use lowercase letters, digits and '-', starting with a "
            f"letter, at most {NAME_MAX_LENGTH} characters"
        )
    tiers = [t.strip() for t in args.hardware.split(",") if t.strip()] if args.hardware else []
    model: Object = {"source": args.source}
    for key, value in (("format", args.format), ("sha256", args.sha256)):
        if value:
            model[key] = value
    if args.source.startswith("http://"):
        model["allowInsecure"] = True
    spec: Object = {"model": model}
    if tiers:
        spec["hardware"] = {"preferred": tiers[0], "fallback": tiers[1:]}
    if args.replicas is not None:
        spec["serving"] = {"replicas": args.replicas}
    metadata: Object = {"name": args.name}
    if namespace:
        metadata["namespace"] = namespace
    body: Object = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}
    _validate(body)
    return body


def _validate(body: Mapping[str, Any]) -> None:
    try:
        parse_localmodel(body)
    except InvalidSpecError as exc:
        raise CliError(f"invalid LocalModel: {exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    """Create or update a LocalModel with server-side apply."""
    if args.dry_run:
        print(dump(build_localmodel(args, args.namespace), args.output or "yaml"), end="")
        return 0
    cluster = _connect(args)
    body = build_localmodel(args, cluster.namespace)
    applied = cluster.call(
        "PATCH",
        cluster.namespace,
        args.name,
        body=body,
        query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        content_type="application/apply-patch+yaml",
    )
    if args.output:
        print(dump(applied, args.output), end="")
    else:
        print(f"localmodel.{GROUP}/{args.name} applied in namespace {cluster.namespace}")
        if args.wait is None:
            print(f"watch it with: slmctl status {args.name} -n {cluster.namespace}")
    if args.wait is not None:
        wait_ready(cluster, args.name, args.wait)
    return 0


def wait_ready(cluster: Cluster, name: str, timeout: float) -> None:
    """Poll until the current generation is Ready; print each phase change to stderr."""
    deadline = time.monotonic() + timeout
    shown = ""
    while True:
        obj = cluster.call("GET", cluster.namespace, name)
        st = obj.get("status") or {}
        current = (st.get("observedGeneration") or 0) >= obj["metadata"].get("generation", 0)
        phase = _phase(obj) if current and st.get("phase") else "Pending"
        if phase != shown:
            print(f"{name}: {phase}", file=sys.stderr)
            shown = phase
        if current and st.get("phase") == "Ready":
            return
        if current and st.get("phase") == "Failed":
            raise CliError(f'LocalModel "{name}" has Failed: {_failure(st)}')
        if time.monotonic() > deadline:
            raise CliError(
                f'LocalModel "{name}" is not Ready after {timeout:.0f}s (phase {phase}); '
                f"see: slmctl status {name} -n {cluster.namespace}"
            )
        time.sleep(1)


def cmd_import(args: argparse.Namespace) -> int:
    """Convert an Ollama Modelfile into LocalModel YAML on stdout."""
    path = Path(args.modelfile)
    try:
        text = sys.stdin.read() if args.modelfile == "-" else path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {args.modelfile}: {exc.strerror}") from None
    try:
        parsed = modelfile.parse(text)
        name = args.name or modelfile.default_name(parsed)
        source = modelfile.source_for(parsed, args.source_override)
        sha256 = None
        if isinstance(source, modelfile.HfRepo):
            files = hf_repo_files(args.hf_endpoint, source)
            source, sha256 = modelfile.pick_quant_file(source, files)
        body = modelfile.to_localmodel(parsed, name, source, args.namespace, sha256)
    except ValueError as exc:
        raise CliError(f"{args.modelfile}: {exc}") from None
    for warning in parsed.warnings:
        print(f"warning: {args.modelfile}: {warning}", file=sys.stderr)
    _validate(body)
    print(dump(body, args.output), end="")
    return 0


def hf_repo_files(endpoint: str, repo: modelfile.HfRepo) -> dict[str, str | None]:
    """The repo's file listing on the Hub (path -> LFS sha256), page by page.

    ``$HF_TOKEN`` is sent for a private or gated repo, to the endpoint only.
    """
    url: str | None = f"{endpoint.rstrip('/')}/api/models/{repo.repo_id}/tree/main"
    params: dict[str, str] | None = {"recursive": "true"}
    headers = (
        {"Authorization": f"Bearer {token}"} if (token := os.environ.get(ENV_HF_TOKEN)) else {}
    )
    files: dict[str, str | None] = {}
    try:
        with httpx.Client(timeout=httpx.Timeout(30, connect=10), headers=headers) as http:
            while url:
                resp = http.get(url, params=params)
                if resp.status_code != 200:
                    raise CliError(
                        f"cannot list hf.co/{repo.repo_id} on {endpoint} (HTTP "
                        f"{resp.status_code}: {resp.text[:200].strip()}); {repo.hint()}"
                    )
                for entry in resp.json():
                    if isinstance(entry, dict) and entry.get("type") == "file":
                        lfs = entry.get("lfs") or {}
                        files[str(entry["path"])] = lfs.get("oid") or lfs.get("sha256")
                url, params = resp.links.get("next", {}).get("url"), None
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise CliError(
            f"cannot list hf.co/{repo.repo_id} on {endpoint} ({type(exc).__name__}: {exc}); "
            f"{repo.hint()}"
        ) from None
    return files


def cmd_ls(args: argparse.Namespace) -> int:
    """List LocalModels in a namespace or all of them."""
    cluster = _connect(args)
    result = cluster.call("GET", None if args.all_namespaces else cluster.namespace)
    items = sorted(
        result.get("items", []),
        key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]),
    )
    if args.output != "table":
        print(dump(result, args.output), end="")
    elif not items:
        where = "any namespace" if args.all_namespaces else f"namespace {cluster.namespace}"
        print(f"No LocalModels in {where}.", file=sys.stderr)
    else:
        print(list_table(items, args.all_namespaces), end="")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Show one LocalModel's phase, backend, fallback reason, pull progress and conditions."""
    cluster = _connect(args)
    obj = cluster.call("GET", cluster.namespace, args.name)
    if args.output == "table":
        print(describe(obj), end="")
    else:
        print(dump(obj, args.output), end="")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete a LocalModel; its children go with it by garbage collection."""
    cluster = _connect(args)
    cluster.call("DELETE", cluster.namespace, args.name)
    print(f'localmodel.{GROUP} "{args.name}" deleted')
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    """Print a shell completion script."""
    print(shtab.complete(build_parser(), shell=args.shell), end="")
    return 0


# --- chat -------------------------------------------------------------------------------------


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
        cluster = _connect(args)
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


# --- parser -----------------------------------------------------------------------------------


def _connect(args: argparse.Namespace) -> Cluster:
    return Cluster.connect(args.kubeconfig, args.context, args.namespace)


def _tiers(value: str) -> str:
    tiers = [t.strip() for t in value.split(",") if t.strip()]
    allowed = [d.value for d in Device]
    bad = [t for t in tiers if t not in allowed]
    if not tiers or bad or len(set(tiers)) != len(tiers):
        raise argparse.ArgumentTypeError(
            f"{value!r}: give tiers from {','.join(allowed)} in order of preference, each once "
            "(e.g. npu,gpu,cpu or cpu)"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """The slmctl command line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)"
    ).complete = shtab.FILE  # type: ignore[attr-defined]
    common.add_argument("--context", help="kubeconfig context to use")
    common.add_argument("-n", "--namespace", help="namespace (default: the context's)")

    parser = argparse.ArgumentParser(
        prog="slmctl",
        description="Run small language models on Kubernetes as LocalModels.",
        epilog="Shell completion: source <(slmctl completion bash)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[common], help="create or update a LocalModel")
    run.add_argument("name", help="LocalModel name (DNS-1035 label)")
    run.add_argument(
        "--source",
        required=True,
        help=f"the model: {FORMS}",
    )
    run.add_argument("--hardware", type=_tiers, help="tiers in order, e.g. npu,gpu,cpu or cpu")
    run.add_argument("--format", choices=[f.value for f in ModelFormat], help="model format")
    run.add_argument("--sha256", help="pin the model's digest (64 lowercase hex)")
    run.add_argument("--replicas", type=int, help="number of pods")
    run.add_argument(
        "--wait",
        nargs="?",
        const=600.0,
        type=float,
        metavar="SECONDS",
        help="wait until Ready, showing each phase (default 600 s)",
    )
    run.add_argument("--dry-run", action="store_true", help="print the LocalModel, send nothing")
    run.add_argument("-o", "--output", choices=["yaml", "json"], help="print the object")
    run.set_defaults(func=cmd_run)

    imp = sub.add_parser(
        "import", help="convert an Ollama Modelfile into LocalModel YAML on stdout"
    )
    imp.add_argument("modelfile", help="path to the Modelfile, or - for stdin").complete = (  # type: ignore[attr-defined]
        shtab.FILE
    )
    imp.add_argument("--name", help="LocalModel name (default: derived from FROM)")
    imp.add_argument("--source-override", help="use this source instead of FROM's")
    imp.add_argument(
        "--hf-endpoint",
        default=os.environ.get(ENV_HF_ENDPOINT) or HF_DEFAULT_ENDPOINT,
        help=f"Hugging Face endpoint that lists hf.co/ORG/REPO:QUANT files (env {ENV_HF_ENDPOINT})",
    )
    imp.add_argument("-n", "--namespace", help="set metadata.namespace")
    imp.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    imp.set_defaults(func=cmd_import)

    ls = sub.add_parser("ls", aliases=["list"], parents=[common], help="list LocalModels")
    ls.add_argument("-A", "--all-namespaces", action="store_true", help="list in every namespace")
    ls.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    ls.set_defaults(func=cmd_ls)

    st = sub.add_parser("status", parents=[common], help="show a LocalModel's state")
    st.add_argument("name")
    st.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    st.set_defaults(func=cmd_status)

    rm = sub.add_parser("delete", aliases=["rm"], parents=[common], help="delete a LocalModel")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_delete)

    chat = sub.add_parser("chat", parents=[common], help="chat with a LocalModel")
    chat.add_argument("name")
    chat.add_argument("-p", "--prompt", help="ask once and exit (default: read stdin or a REPL)")
    chat.add_argument("--system", help="system message")
    chat.add_argument("--api", choices=["ollama", "openai"], help="API to use")
    chat.add_argument("--temperature", type=float)
    chat.add_argument("--max-tokens", type=int)
    chat.add_argument(
        "--url",
        help=f"talk to this URL directly (e.g. a port-forward) instead of the API server's "
        f"service proxy; ${ENV_TOKEN} is sent as the bearer token",
    )
    chat.set_defaults(func=cmd_chat)

    comp = sub.add_parser("completion", help="print a shell completion script")
    comp.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    comp.set_defaults(func=cmd_completion)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``slmctl``."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except CliError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    return status


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


if __name__ == "__main__":
    sys.exit(main())
