"""I/O: a thin, typed REST layer over the Kubernetes client for the kinds the operator manages.

The operator knows every kind it touches, so paths come from a static table rather than API
discovery; server-side apply always uses the one field manager.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from slm_operator.kinds import CRD, EVENT, LOCAL_MODEL, POD, Kind, kind_of
from slm_operator.names import FIELD_MANAGER

log = logging.getLogger(__name__)

Object = dict[str, Any]


def call(
    api: client.ApiClient,
    method: str,
    path: str,
    *,
    body: Any = None,
    query: list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
) -> bytes:
    """One REST call with the client's credentials: the answer's body, or ApiException on a
    non-2xx status."""
    request = api.param_serialize(
        method,
        path,
        query_params=query or [],
        header_params={"Accept": "application/json", "Content-Type": content_type},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*request)
    data = response.read()  # type: ignore[no-untyped-call]
    if not 200 <= response.status <= 299:
        raise ApiException(status=response.status, reason=response.reason, body=data)
    answer: bytes = data
    return answer


class Kube:
    """Synchronous calls the operator makes; every method is one request."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._api = api_client

    @classmethod
    def from_environment(cls, connections: int = 0) -> Kube:
        """In-cluster credentials when running in a pod, else the local kubeconfig; room for
        ``connections`` requests at once (the client's default when fewer)."""
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        return cls.with_connections(connections)

    @classmethod
    def with_connections(cls, count: int) -> Kube:
        """A client of its own with room for ``count`` connections held at once, using the
        configuration ``from_environment`` loaded."""
        configuration = client.Configuration.get_default_copy()
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize, count)
        return cls(client.ApiClient(configuration))

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        decode: bool = True,
    ) -> Object | None:
        data = call(self._api, method, path, body=body, query=query, content_type=content_type)
        if not data or not decode:
            return None
        result: Object = json.loads(data)
        return result

    def get(self, kind: Kind, namespace: str | None, name: str) -> Object | None:
        """The object, or None when it does not exist."""
        try:
            return self._request("GET", kind.path(namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(
        self, kind: Kind, namespace: str | None, label_selector: str = ""
    ) -> tuple[list[Object], str]:
        """Items of a kind (in ``namespace``, or everywhere when None), optionally filtered by
        labels, each with its apiVersion and kind, and the resourceVersion to watch from."""
        query = [("labelSelector", label_selector)] if label_selector else []
        result = self._request("GET", kind.path(namespace), query=query) or {}
        items: list[Object] = result.get("items") or []
        for item in items:  # a list's items lack these; watch events carry them
            item.setdefault("apiVersion", kind.api_version)
            item.setdefault("kind", kind.kind)
        return items, str((result.get("metadata") or {}).get("resourceVersion", ""))

    def watch(
        self,
        kind: Kind,
        namespace: str | None,
        *,
        label_selector: str,
        resource_version: str,
        timeout_seconds: int,
    ) -> Iterator[Object]:
        """Watch events (``{"type": ..., "object": {...}}``) from ``resource_version`` on, as
        plain dicts, until the server ends the request after ``timeout_seconds``."""
        query = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        if label_selector:
            query.append(("labelSelector", label_selector))
        request = self._api.param_serialize(
            "GET",
            kind.path(namespace),
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        # A connection silent for longer than the server's own timeout is dead.
        response = self._api.call_api(*request, _request_timeout=(30, timeout_seconds + 30))
        raw = response.response
        try:
            if not 200 <= response.status <= 299:
                raise ApiException(status=response.status, reason=response.reason, body=raw.data)
            for line in iter_resp_lines(raw):  # type: ignore[no-untyped-call]
                if line:
                    event: Object = json.loads(line)
                    yield event
        finally:  # a stream stopped early leaves unread data: never reuse its connection
            raw.close()
            raw.release_conn()

    def apply(self, obj: Mapping[str, Any]) -> Object:
        """Server-side apply with the operator's field manager, taking over conflicting fields."""
        kind = kind_of(obj)
        meta = obj["metadata"]
        result = self._request(
            "PATCH",
            kind.path(meta.get("namespace"), meta["name"]),
            body=dict(obj),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )
        assert result is not None  # noqa: S101 - the API server always returns the object
        return result

    def create(self, obj: Mapping[str, Any]) -> Object | None:
        """Create an object; None when it already exists."""
        kind = kind_of(obj)
        try:
            return self._request(
                "POST",
                kind.path(obj["metadata"].get("namespace")),
                body=dict(obj),
                query=[("fieldManager", FIELD_MANAGER)],
            )
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise

    def delete(self, kind: Kind, namespace: str | None, name: str) -> bool:
        """Delete in the background; False when it was already gone."""
        try:
            self._request(
                "DELETE",
                kind.path(namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """Merge-patch the LocalModel status subresource with a ``{"status": {...}}`` body."""
        self._request(
            "PATCH",
            LOCAL_MODEL.path(namespace, name) + "/status",
            body=dict(patch),
            content_type="application/merge-patch+json",
            decode=False,
        )

    def pod_log_tail(self, namespace: str, name: str, container: str, lines: int = 5) -> str:
        """The last lines a container printed; empty when no node serves its logs."""
        try:
            request = self._api.param_serialize(
                "GET",
                POD.path(namespace, name) + "/log",
                query_params=[("container", container), ("tailLines", str(lines))],
                header_params={"Accept": "*/*"},
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(*request, _request_timeout=5)
            data = response.read()  # type: ignore[no-untyped-call]
        except Exception as exc:  # logs are best effort: kwok nodes serve none
            log.debug("no log for %s/%s: %s", namespace, name, exc)
            return ""
        if not 200 <= response.status <= 299:
            return ""
        return bytes(data).decode("utf-8", errors="replace")

    def crd_exists(self, name: str) -> bool:
        """Whether a CustomResourceDefinition is installed."""
        return self.get(CRD, None, name) is not None

    def post_event(
        self, involved: Mapping[str, Any], *, reason: str, message: str, warning: bool = False
    ) -> None:
        """Record a core/v1 Event on a LocalModel (best effort: a failure is only logged)."""
        meta = involved["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", LOCAL_MODEL.api_version),
                "kind": involved.get("kind", LOCAL_MODEL.kind),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": FIELD_MANAGER},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self._request("POST", EVENT.path(meta["namespace"]), body=event)
        except ApiException as exc:
            log.warning("could not record event %s on %s: %s", reason, meta["name"], exc.reason)


def rejection(exc: ApiException) -> str | None:
    """The API server's message when it refused an object as invalid (422), else None."""
    if exc.status != 422:
        return None
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return str(exc.reason or "invalid")
    return str(body.get("message") or exc.reason or "invalid")
