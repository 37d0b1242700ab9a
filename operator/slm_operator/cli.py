"""slmctl: create, import, list, inspect and chat with LocalModels from the command line.

The commands and the parser; ``cli_cluster`` (the API server), ``cli_output`` (tables,
describe), ``cli_catalog`` (the model catalog) and ``cli_chat`` (chat) hold the rest."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn

import httpx
import shtab
from slm_runtime.config import Device, ModelFormat
from slm_runtime.sources import FORMS

from slm_operator import modelfile
from slm_operator.api import InvalidSpecError, parse_localmodel
from slm_operator.cli_catalog import (
    add_catalog_parser,
    add_operator_namespace,
    alias_refusal,
    built_in,
    read_catalogs,
)
from slm_operator.cli_chat import ENV_TOKEN, cmd_chat
from slm_operator.cli_cluster import FIELD_MANAGER, CliError, Cluster, Object, connect
from slm_operator.cli_output import _failure, _phase, describe, dump, list_table
from slm_operator.names import (
    API_VERSION,
    DNS1035_PATTERN,
    GROUP,
    KIND,
    NAME_MAX_LENGTH,
)
from slm_operator.variants import ALIAS_PATTERN

ENV_HF_ENDPOINT: Final = "HF_ENDPOINT"
ENV_HF_TOKEN: Final = "HF_TOKEN"
HF_DEFAULT_ENDPOINT: Final = "https://huggingface.co"


def build_localmodel(args: argparse.Namespace, namespace: str | None) -> Object:
    """The LocalModel ``slmctl run`` sends: only the fields the user set, validated first."""
    name, model = _name_and_model(args)
    if not re.fullmatch(DNS1035_PATTERN, name) or len(name) > NAME_MAX_LENGTH:
        raise CliError(f"invalid name {name!r}: {_NAME_RULE}")
    tiers = [t.strip() for t in args.hardware.split(",") if t.strip()] if args.hardware else []
    spec: Object = {"model": model}
    if tiers:
        spec["hardware"] = {"preferred": tiers[0], "fallback": tiers[1:]}
    if args.replicas is not None:
        spec["serving"] = {"replicas": args.replicas}
    metadata: Object = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    body: Object = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}
    _validate(body)
    return body


_NAME_RULE: Final = (
    f"use lowercase letters, digits and '-', starting with a letter, at most {NAME_MAX_LENGTH} "
    "characters"
)


def _name_and_model(args: argparse.Namespace) -> tuple[str, Object]:
    """The LocalModel's name and spec.model from NAME, --source and --alias: NAME alone is an
    alias, and an alias without NAME names the LocalModel."""
    name, alias = args.name, args.alias
    if args.source is None and alias is None:
        if name is None:
            raise CliError(
                "give the model: slmctl run ALIAS, slmctl run NAME --alias ALIAS or slmctl run "
                "NAME --source SOURCE (slmctl catalog lists the aliases)"
            )
        if not re.fullmatch(ALIAS_PATTERN, name):
            raise CliError(
                f"{name!r} is not a model alias (lowercase letters, digits, '.', '_' and '-'); "
                "to run a model by its source: slmctl run NAME --source SOURCE"
            )
        name, alias = None, name
    if args.source is not None:
        if name is None:
            raise CliError("give the LocalModel a NAME: slmctl run NAME --source SOURCE")
        model: Object = {"source": args.source}
        for key, value in (("format", args.format), ("sha256", args.sha256)):
            if value:
                model[key] = value
        if args.source.startswith("http://"):
            model["allowInsecure"] = True
        return name, model
    if args.format or args.sha256:
        raise CliError(
            "--format and --sha256 describe --source; an alias's variants carry their own "
            "(see: slmctl catalog)"
        )
    return name or alias_name(alias), {"alias": alias}


def alias_name(alias: str) -> str:
    """The LocalModel name for an alias run without NAME: the alias with '.' and '_' as '-'
    (``qwen2.5-0.5b`` -> ``qwen2-5-0-5b``)."""
    name = re.sub(r"[._]", "-", alias)
    if not re.fullmatch(DNS1035_PATTERN, name) or len(name) > NAME_MAX_LENGTH:
        raise CliError(
            f"alias {alias!r} does not make a LocalModel name ({_NAME_RULE}); give one: "
            f"slmctl run NAME --alias {alias}"
        )
    return name


def _validate(body: Mapping[str, Any]) -> None:
    try:
        parse_localmodel(body)
    except InvalidSpecError as exc:
        raise CliError(f"invalid LocalModel: {exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    """Create or update a LocalModel with server-side apply."""
    body = build_localmodel(args, args.namespace)
    name, alias = body["metadata"]["name"], body["spec"]["model"].get("alias")
    if name != (args.name or alias):
        print(
            f"note: {alias!r} is not a LocalModel name; naming it {name!r} (choose another with: "
            f"slmctl run NAME --alias {alias})",
            file=sys.stderr,
        )
    if args.dry_run:
        if alias:
            _check_alias_offline(args, alias)
        print(dump(body, args.output or "yaml"), end="")
        return 0
    cluster = connect(args)
    body = build_localmodel(args, cluster.namespace)
    if alias:
        _check_alias(cluster, args, alias)
    applied = cluster.call(
        "PATCH",
        cluster.namespace,
        name,
        body=body,
        query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        content_type="application/apply-patch+yaml",
    )
    if args.output:
        print(dump(applied, args.output), end="")
    else:
        print(f"localmodel.{GROUP}/{name} applied in namespace {cluster.namespace}")
        if args.wait is None:
            print(f"watch it with: slmctl status {name} -n {cluster.namespace}")
    if args.wait is not None:
        wait_ready(cluster, name, args.wait)
    return 0


def _check_alias(cluster: Cluster, args: argparse.Namespace, alias: str) -> None:
    """Refuse an alias the operator's catalog lacks; one that cannot be read is not checked
    (the operator fails the LocalModel then)."""
    catalogs = read_catalogs(cluster, args.operator_namespace)
    if catalogs.configmap is None:
        print(
            f"warning: alias {alias!r} not checked: {catalogs.note}; the operator fails the "
            "LocalModel if its catalog lacks it",
            file=sys.stderr,
        )
        return
    if catalogs.note:
        print(f"note: {catalogs.note}", file=sys.stderr)
    if refusal := alias_refusal(alias, catalogs):
        raise CliError(refusal)


def _check_alias_offline(args: argparse.Namespace, alias: str) -> None:
    """``--dry-run``: check the alias against the cluster's catalog when it can be read, else
    against the built-in one."""
    try:
        catalogs = read_catalogs(connect(args), args.operator_namespace)
    except CliError as exc:
        catalogs = built_in(str(exc))
    if catalogs.configmap is None:
        print(f"note: alias checked against the built-in catalog: {catalogs.note}", file=sys.stderr)
    if refusal := alias_refusal(alias, catalogs):
        raise CliError(refusal)


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
    cluster = connect(args)
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
    cluster = connect(args)
    obj = cluster.call("GET", cluster.namespace, args.name)
    if args.output == "table":
        print(describe(obj), end="")
    else:
        print(dump(obj, args.output), end="")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete a LocalModel; its children go with it by garbage collection."""
    cluster = connect(args)
    cluster.call("DELETE", cluster.namespace, args.name)
    print(f'localmodel.{GROUP} "{args.name}" deleted')
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    """Print a shell completion script."""
    print(shtab.complete(build_parser(), shell=args.shell), end="")
    return 0


# --- parser -----------------------------------------------------------------------------------


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
    run.add_argument(
        "name",
        nargs="?",
        help="LocalModel name (DNS-1035 label); given alone, the alias to run, which also names "
        "the LocalModel ('.' and '_' become '-')",
    )
    model = run.add_mutually_exclusive_group()
    model.add_argument("--source", help=f"the model: {FORMS}")
    model.add_argument(
        "--alias", help="a model in the operator's catalog (slmctl catalog), e.g. phi-4-mini"
    )
    run.add_argument("--hardware", type=_tiers, help="tiers in order, e.g. npu,gpu,cpu or cpu")
    run.add_argument(
        "--format", choices=[f.value for f in ModelFormat], help="model format (with --source)"
    )
    run.add_argument("--sha256", help="pin the model's digest, 64 lowercase hex (with --source)")
    run.add_argument("--replicas", type=int, help="number of pods")
    run.add_argument(
        "--wait",
        nargs="?",
        const=600.0,
        type=float,
        metavar="SECONDS",
        help="wait until Ready, showing each phase (default 600 s)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the LocalModel, send nothing (an alias is checked against the cluster's "
        "catalog when it can be read)",
    )
    run.add_argument("-o", "--output", choices=["yaml", "json"], help="print the object")
    add_operator_namespace(run)
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

    add_catalog_parser(sub, common)

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
