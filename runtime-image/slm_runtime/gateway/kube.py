"""The gateway's few calls to the Kubernetes API, over httpx with the pod's ServiceAccount:
list-then-watch of LocalModels and EndpointSlices, a model's Secret token, and the scale
subresource of a model's Deployment (the only object the gateway writes)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

import httpx

from slm_runtime.config import SECRET_KEY_TOKEN

log = logging.getLogger("slm_gateway.kube")

SERVICE_ACCOUNT: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
LOCALMODELS: Final = "/apis/slm.dev/v1alpha1"
ENDPOINT_SLICES: Final = "/apis/discovery.k8s.io/v1"
WATCH_SECONDS: Final = 290
SECRET_TTL_SECONDS: Final = 30.0

Obj = dict[str, Any]


class SecretUnavailableError(Exception):
    """A model's token Secret could not be read just now."""


class _WatchExpiredError(Exception):
    """The API server ended a watch with an ERROR event (410 Gone: list again)."""


class _Token(httpx.Auth):
    """The projected ServiceAccount token, read again as the kubelet rotates it."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def auth_flow(self, request: httpx.Request) -> Any:
        token = self._path.read_text(encoding="utf-8").strip()
        request.headers["Authorization"] = f"Bearer {token}"
        yield request


def in_cluster_client() -> httpx.AsyncClient:
    """A client for the API server the pod runs under."""
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    host = f"[{host}]" if ":" in host else host
    return httpx.AsyncClient(
        base_url=f"https://{host}:{port}",
        verify=str(SERVICE_ACCOUNT / "ca.crt"),
        auth=_Token(SERVICE_ACCOUNT / "token"),
        timeout=httpx.Timeout(30.0, read=WATCH_SECONDS + 30.0),
    )


def _path(group: str, plural: str, namespace: str | None) -> str:
    return f"{group}/namespaces/{namespace}/{plural}" if namespace else f"{group}/{plural}"


class Kube:
    """What the gateway asks of the API server."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self._secrets: dict[tuple[str, str], tuple[float, bytes | None]] = {}

    async def watch(
        self,
        group: str,
        plural: str,
        namespace: str | None,
        sync: Callable[[Iterable[Obj], str | None], None],
        event: Callable[[str, Obj], None],
        synced: asyncio.Event,
        selector: str | None = None,
    ) -> None:
        """List, hand the list to ``sync``, then stream events to ``event``, watching again from
        the last resourceVersion seen (bookmarks included) when a watch times out; list again
        only when the API server no longer has that version (410) or the watch fails. Runs
        until cancelled."""
        path = _path(group, plural, namespace)
        params = {"labelSelector": selector} if selector else {}
        backoff = 0.5
        version: str | None = None
        while True:
            try:
                if version is None:
                    listed = await self.client.get(path, params=params)
                    listed.raise_for_status()
                    body = listed.json()
                    sync(body.get("items") or [], namespace)
                    synced.set()
                    version = str(body["metadata"]["resourceVersion"])
                watch = {
                    **params,
                    "watch": "true",
                    "resourceVersion": version,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": str(WATCH_SECONDS),
                }
                async with self.client.stream("GET", path, params=watch) as stream:
                    stream.raise_for_status()
                    async for line in stream.aiter_lines():
                        if not line:
                            continue
                        change = json.loads(line)
                        if change["type"] == "ERROR":
                            status = change.get("object") or {}
                            raise _WatchExpiredError(status.get("message", "watch error"))
                        version = str(change["object"]["metadata"]["resourceVersion"])
                        if change["type"] != "BOOKMARK":
                            event(change["type"], change["object"])
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except (httpx.HTTPError, ValueError, KeyError, _WatchExpiredError) as exc:
                log.warning("watch of %s ended (%s); listing again", path, exc)
                version = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def token_digest(self, namespace: str, secret: str) -> bytes | None:
        """sha256 of the Secret's ``token``, cached briefly; None when there is no such Secret,
        ``b""`` when it has no (or an empty) ``token``, which opens nothing. The token itself is
        not kept. SecretUnavailableError when it cannot be read now (a transient failure is not
        cached, and not taken for a wrong token)."""
        now = time.monotonic()
        cached = self._secrets.get((namespace, secret))
        if cached and now - cached[0] < SECRET_TTL_SECONDS:
            return cached[1]
        try:
            got = await self.client.get(f"/api/v1/namespaces/{namespace}/secrets/{secret}")
        except httpx.HTTPError as exc:
            raise SecretUnavailableError(f"cannot read Secret {namespace}/{secret}: {exc}") from exc
        if got.status_code not in (200, 404):
            raise SecretUnavailableError(
                f"cannot read Secret {namespace}/{secret}: HTTP {got.status_code}"
            )
        digest = None
        if got.status_code == 200:
            try:
                value = base64.b64decode((got.json().get("data") or {}).get(SECRET_KEY_TOKEN, ""))
            except ValueError as exc:
                raise SecretUnavailableError(f"Secret {namespace}/{secret}: {exc}") from exc
            digest = hashlib.sha256(value).digest() if value else b""
        self._secrets[(namespace, secret)] = (now, digest)
        return digest

    async def scale(self, namespace: str, name: str, *, when: int, to: int) -> bool:
        """Set the Deployment's replicas to ``to`` if they are ``when`` now, through the scale
        subresource with the read's resourceVersion as a precondition; True when written."""
        path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"
        got = await self.client.get(path)
        got.raise_for_status()
        current = got.json()
        if (current.get("spec") or {}).get("replicas", 0) != when:
            return False
        patch = {
            "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
            "spec": {"replicas": to},
        }
        written = await self.client.patch(
            path,
            content=json.dumps(patch),
            headers={"Content-Type": "application/merge-patch+json"},
            params={"fieldManager": "slm-gateway"},
        )
        if written.status_code == 409:
            return False  # someone else wrote in between; the next look decides again
        written.raise_for_status()
        return True
