"""The operator's own watches of its children and their pods.

One thread per kind and namespace (or one cluster-wide per kind): list, then watch from the
list's resourceVersion, and start over with a fresh list on any error. Events are decoded
to plain dicts and go straight into the caches; the model they belong to is queued.

kopf watches LocalModels, nodes and CRDs. Children are watched here instead, for two
reasons. A model's children and pods change a dozen times while it starts (1000 models:
some 15000 events), and each event costs kopf far more than a dict decode and a queue
append. And a watch request that meets a CRD deleted or not yet served (404) stops kopf's
whole operator, whereas here the thread waits for the CRD to change (``crd_changed``) or for
its back-off to pass, so the ServiceMonitor and InferencePool CRDs may come and go while the
operator runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

from kubernetes.client.exceptions import ApiException

from slm_operator.controller.kube import Kube
from slm_operator.kinds import Kind
from slm_operator.names import LABEL_INSTANCE

log = logging.getLogger(__name__)

Key = tuple[str, str]

WATCH_SECONDS: Final = 300
"""Server-side timeout of one watch request; the thread then watches again from where it was."""
MAX_BACKOFF: Final = 30.0


class Cache(Protocol):
    """Where the watch threads keep what they see (controller.cache.Caches)."""

    def replace_kind(
        self, kind: Kind, namespace: str | None, objects: dict[Key, list[dict[str, Any]]]
    ) -> set[Key]:
        """Set every object of ``kind`` in ``namespace`` (all when None); the keys that changed."""

    def observe(self, kind: Kind, key: Key, obj: dict[str, Any], *, deleted: bool) -> None:
        """Record one watch event."""

    def own_write(self, key: Key, obj: dict[str, Any]) -> bool:
        """Whether an event only echoes the operator's own apply."""


class KindWatch:
    """Keeps the cache of one kind current, in one namespace or cluster-wide."""

    def __init__(
        self,
        kube: Kube,
        kind: Kind,
        cache: Cache,
        enqueue: Callable[[Key, str], None],
        *,
        namespace: str | None,
        label_selector: str,
    ) -> None:
        self._kube = kube
        self._kind = kind
        self._cache = cache
        self._enqueue = enqueue
        self._namespace = namespace
        self._selector = label_selector
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.listed = threading.Event()
        """Set once the first listing is cached (a kind not served counts: it has no objects)."""
        self.served = threading.Event()
        """Set while the resource is listed and watched (tests and logs read it)."""

    @property
    def kind(self) -> Kind:
        """The kind watched."""
        return self._kind

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
                self.listed.set()
                self._watch(version)
                continue  # stopped
            except ApiException as exc:
                self.served.clear()
                if exc.status == 410:  # the watch fell too far behind: list again now
                    continue
                if exc.status == 404:
                    log.debug("%s not served; waiting for its CRD", self._kind.plural)
                    self._cache.replace_kind(self._kind, self._namespace, {})
                    self.listed.set()
                else:
                    log.warning("watching %s failed: %s", self._kind.plural, exc.reason)
            except Exception as exc:  # a dropped connection, a decode error: list again
                self.served.clear()
                log.warning("watching %s failed: %s", self._kind.plural, exc)
            woken = self._wake.wait(backoff)
            backoff = 1.0 if woken else min(backoff * 2, MAX_BACKOFF)

    def _list(self) -> str:
        items, version = self._kube.list(self._kind, self._namespace, self._selector)
        grouped: dict[Key, list[dict[str, Any]]] = {}
        for obj in items:
            key = _key(obj)
            if key is not None:
                grouped.setdefault(key, []).append(obj)
        for key in self._cache.replace_kind(self._kind, self._namespace, grouped):
            self._enqueue(key, "child")
        return version

    def _watch(self, version: str) -> None:
        """Follow events from ``version`` on, one server-timed request after another."""
        while not self._stop.is_set():
            for event in self._kube.watch(
                self._kind,
                self._namespace,
                label_selector=self._selector,
                resource_version=version,
                timeout_seconds=WATCH_SECONDS,
            ):
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":  # a Status: 410 when the version is too old to resume
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                key = None if kind == "BOOKMARK" else _key(obj)
                if key is None:
                    continue
                deleted = kind == "DELETED"
                self._cache.observe(self._kind, key, obj, deleted=deleted)
                if deleted or not self._cache.own_write(key, obj):
                    self._enqueue(key, "child")
            # The server ended the request: go on from the last event (a CRD gone answers 404).


def _key(obj: dict[str, Any]) -> Key | None:
    meta = obj.get("metadata") or {}
    instance = (meta.get("labels") or {}).get(LABEL_INSTANCE)
    namespace = meta.get("namespace")
    if not instance or not namespace:
        return None
    return (str(namespace), str(instance))


def start_watches(
    kube: Kube,
    kinds: Sequence[Kind],
    cache: Cache,
    enqueue: Callable[[Key, str], None],
    *,
    namespaces: Sequence[str],
    label_selector: str,
) -> list[KindWatch]:
    """One watch per kind and namespace (one cluster-wide per kind when none are given)."""
    watches = [
        KindWatch(kube, kind, cache, enqueue, namespace=ns, label_selector=label_selector)
        for kind in kinds
        for ns in ([*namespaces] if namespaces else [None])
    ]
    for w in watches:
        w.start()
    return watches
