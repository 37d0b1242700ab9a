"""Watches of child kinds whose CRD may be absent, or come and go while the operator runs.

kopf watches a resource once its API discovery lists it, and a watch request that meets a
CRD deleted or not yet served (404) stops the whole operator. These kinds are therefore
watched here instead, by one thread per namespace (or one cluster-wide): list, then watch
from the list's resourceVersion, and start over with a fresh list on any error. While the
resource is not served, the thread waits for the CRD to change (``crd_changed``) or for its
back-off to pass.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from slm_operator.api import LABEL_INSTANCE
from slm_operator.kube import Kind

log = logging.getLogger(__name__)

Key = tuple[str, str]

WATCH_SECONDS: Final = 300
"""Server-side timeout of one watch request; the thread then watches again from where it was."""
READ_TIMEOUT: Final = WATCH_SECONDS + 30
"""A connection silent for longer than this is dead."""
MAX_BACKOFF: Final = 30.0


class Cache(Protocol):
    """Where the watch threads keep what they see (reconcile.Caches)."""

    def replace_kind(
        self, kind: Kind, namespace: str | None, objects: dict[Key, list[dict[str, Any]]]
    ) -> set[Key]:
        """Set every object of ``kind`` in ``namespace`` (all when None); the keys that changed."""

    def observe(self, kind: Kind, key: Key, obj: dict[str, Any], *, deleted: bool) -> None:
        """Record one watch event."""

    def own_write(self, key: Key, obj: dict[str, Any]) -> bool:
        """Whether an event only echoes the operator's own apply."""


class OptionalKindWatch:
    """Keeps the cache of one optional kind current, in one namespace or cluster-wide."""

    def __init__(
        self,
        api: client.ApiClient,
        kind: Kind,
        cache: Cache,
        enqueue: Callable[[Key, str], None],
        *,
        namespace: str | None,
        label_selector: str,
    ) -> None:
        self._objects = client.CustomObjectsApi(api)
        self._kind = kind
        self._cache = cache
        self._enqueue = enqueue
        self._namespace = namespace
        self._selector = label_selector
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.served = threading.Event()
        """Set while the resource is listed and watched (tests and logs read it)."""
        group, _, version = kind.api_version.rpartition("/")
        self._group, self._version = group, version

    def start(self) -> threading.Thread:
        """Run in a daemon thread."""
        where = self._namespace or "all"
        thread = threading.Thread(
            target=self._run, daemon=True, name=f"watch-{self._kind.plural}-{where}"
        )
        thread.start()
        return thread

    def stop(self) -> None:
        """Let the thread end at its next wake-up or watch timeout."""
        self._stop.set()
        self._wake.set()

    def crd_changed(self) -> None:
        """The CRD came, went or changed: try again now rather than after the back-off."""
        self._wake.set()

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            self._wake.clear()
            try:
                version = self._list()
                backoff = 1.0
                self.served.set()
                self._watch(version)
                continue  # stopped
            except ApiException as exc:
                self.served.clear()
                if exc.status == 410:  # the watch fell too far behind: list again now
                    continue
                if exc.status == 404:
                    log.debug("%s not served; waiting for its CRD", self._kind.plural)
                    self._cache.replace_kind(self._kind, self._namespace, {})
                else:
                    log.warning("watching %s failed: %s", self._kind.plural, exc.reason)
            except Exception as exc:  # a dropped connection, a decode error: list again
                self.served.clear()
                log.warning("watching %s failed: %s", self._kind.plural, exc)
            woken = self._wake.wait(backoff)
            backoff = 1.0 if woken else min(backoff * 2, MAX_BACKOFF)

    def _list(self) -> str:
        result: Any
        if self._namespace:
            result = self._objects.list_namespaced_custom_object(
                self._group, self._version, self._namespace, self._kind.plural,
                label_selector=self._selector,
            )  # fmt: skip
        else:
            result = self._objects.list_cluster_custom_object(
                self._group, self._version, self._kind.plural, label_selector=self._selector
            )
        grouped: dict[Key, list[dict[str, Any]]] = {}
        for obj in result.get("items", []):
            key = _key(obj)
            if key is not None:
                grouped.setdefault(key, []).append(obj)
        for key in self._cache.replace_kind(self._kind, self._namespace, grouped):
            self._enqueue(key, "child")
        return str(result.get("metadata", {}).get("resourceVersion", ""))

    def _watch(self, version: str) -> None:
        """Follow events from ``version`` on, one server-timed request after another."""
        func = (
            self._objects.list_namespaced_custom_object
            if self._namespace
            else self._objects.list_cluster_custom_object
        )
        args = [self._group, self._version, *([self._namespace] if self._namespace else [])]
        while not self._stop.is_set():
            stream = watch.Watch()  # type: ignore[no-untyped-call]
            for event in stream.stream(  # type: ignore[no-untyped-call]
                func,
                *args,
                self._kind.plural,
                label_selector=self._selector,
                resource_version=version,
                timeout_seconds=WATCH_SECONDS,
                allow_watch_bookmarks=True,
                _request_timeout=READ_TIMEOUT,
            ):
                obj = event.get("object")
                if event.get("type") == "BOOKMARK" or not isinstance(obj, dict):
                    continue
                key = _key(obj)
                if key is None:
                    continue
                deleted = event["type"] == "DELETED"
                self._cache.observe(self._kind, key, obj, deleted=deleted)
                if deleted or not self._cache.own_write(key, obj):
                    self._enqueue(key, "child")
            # Timed out or closed: go on from the last event (a CRD that went answers 404).
            version = stream.resource_version or version


def _key(obj: dict[str, Any]) -> Key | None:
    meta = obj.get("metadata") or {}
    instance = (meta.get("labels") or {}).get(LABEL_INSTANCE)
    namespace = meta.get("namespace")
    if not instance or not namespace:
        return None
    return (str(namespace), str(instance))


def start_watches(
    api: client.ApiClient,
    kinds: Sequence[Kind],
    cache: Cache,
    enqueue: Callable[[Key, str], None],
    *,
    namespaces: Sequence[str],
    label_selector: str,
) -> list[OptionalKindWatch]:
    """One watch per kind and namespace (one cluster-wide per kind when none are given)."""
    watches = [
        OptionalKindWatch(api, kind, cache, enqueue, namespace=ns, label_selector=label_selector)
        for kind in kinds
        for ns in ([*namespaces] if namespaces else [None])
    ]
    for w in watches:
        w.start()
    return watches
