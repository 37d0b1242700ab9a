"""slmctl's connection to the API server, and the error its commands stop with."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from typing import Any, Final

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as Urllib3Error

from slm_operator.controller.kube import call
from slm_operator.names import (
    GROUP,
    PLURAL,
    VERSION,
)

FIELD_MANAGER: Final = "slmctl"


Object = dict[str, Any]


class CliError(Exception):
    """A failure to report as one line on stderr with exit status 1."""


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
        try:
            data = call(self.api, method, path, body=body, query=query, content_type=content_type)
        except Urllib3Error as exc:
            raise CliError(f"cannot reach the API server at {self.host}: {exc}") from None
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


def connect(args: argparse.Namespace) -> Cluster:
    return Cluster.connect(args.kubeconfig, args.context, args.namespace)
