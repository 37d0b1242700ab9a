"""kopf wiring: watches feed the caches, and every relevant change runs the one reconcile.

Events of a LocalModel (its listing at start, creation, spec or metadata changes) and of its
owned children (found by label) run it; a slow resync thread re-observes everything. No kopf
change handlers, timers or deletion handlers, hence no annotations and no finalizers on the
LocalModel: children go by owner references.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable
from typing import Any, Final

import kopf
from kubernetes import client
from prometheus_client import start_http_server

from slm_operator.api import (
    GROUP,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    MANAGER_NAME,
    PLURAL,
    VERSION,
)
from slm_operator.kube import CHILD_KINDS, OPTIONAL_KINDS, POD, Kind, Kube
from slm_operator.observe import node_info
from slm_operator.optional_watch import OptionalKindWatch, start_watches
from slm_operator.reconcile import Reconciler, pack
from slm_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

SERVICE_MONITOR_CRD: Final = "servicemonitors.monitoring.coreos.com"
RECONCILE_WORKERS: Final = 4
"""Threads that reconcile queued models; event handlers only queue them."""
MANAGED: Final = {LABEL_MANAGED_BY: MANAGER_NAME}

_state: dict[str, Reconciler] = {}
_optional_watches: list[OptionalKindWatch] = []
_started = threading.Event()
"""Set once kopf has listed every watched resource and runs handlers."""


def reconciler() -> Reconciler:
    """The operator's reconciler, created at startup."""
    return _state["reconciler"]


class NoDiffBase(kopf.DiffBaseStorage):
    """No change handlers, so nothing to diff: kopf's default copies every object on every
    event to find out what changed, and that copy was the largest part of its own work."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        """An empty essence: no handler asks what changed."""
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        """Nothing is stored."""
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        """Nothing is stored."""


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Events are ours alone; the workers, the optional kinds' watches, metrics and the
    resync thread start."""
    operator_settings = OperatorSettings()
    settings.posting.enabled = False
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.watching.server_timeout = 300
    _state["reconciler"] = rec = Reconciler(
        Kube.from_environment(), operator_settings, operator_settings.load_catalog()
    )
    rec.start_workers(RECONCILE_WORKERS)
    _optional_watches.extend(
        start_watches(
            client.ApiClient(),  # its own connections: a watch holds one for minutes
            OPTIONAL_KINDS,
            rec.caches,
            rec.enqueue,
            namespaces=list(memo.get("namespaces") or []),
            label_selector=f"{LABEL_MANAGED_BY}={MANAGER_NAME}",
        )
    )
    start_http_server(operator_settings.metrics_port)
    resync = threading.Thread(
        target=_resync_loop, args=(operator_settings.resync_seconds,), daemon=True, name="resync"
    )
    resync.start()


def _resync_loop(interval: float) -> None:
    stop = threading.Event()
    while not stop.wait(interval):
        try:
            reconciler().resync_all()
        except Exception:
            log.exception("resync failed")


# --- indexes: the watch caches ----------------------------------------------------------------


@kopf.index(GROUP, VERSION, PLURAL, id="localmodels_idx")
async def localmodels_idx(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
    """LocalModels by (namespace, name)."""
    return {(namespace, name): pack(body)}


@kopf.index("v1", "nodes", id="nodes_idx")
async def nodes_idx(*, name: str, body: kopf.Body, **_: Any) -> Any:
    """Nodes as placement sees them."""
    return {name: node_info(body)}


@kopf.index(
    "apiextensions.k8s.io",
    "v1",
    "customresourcedefinitions",
    id="crds_idx",
    when=lambda name, **_: name == SERVICE_MONITOR_CRD,
)
async def crds_idx(*, name: str, **_: Any) -> Any:
    """The optional CRDs the operator adapts to."""
    return {name: True}


async def _child_index(
    kind: Kind, *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> None:
    """A child appeared or changed: cache it, then queue its model.

    The index holds nothing itself: kopf fills indexes before any handler runs, which holds
    every reconcile back until all children are listed at start. Children are cached by the
    operator, and in this one handler per event, so that the cache is written before the model
    is queued (kopf stores an index value only after its function returns).
    """
    instance = labels.get(LABEL_INSTANCE)
    if not instance or not namespace:
        return None
    rec = reconciler()
    key = (namespace, instance)
    rec.caches.observe(kind, key, body, deleted=False)
    # Until the listing is done, the model's own listing queues it; echoes of the operator's
    # own applies bring nothing new.
    if _started.is_set() and not rec.caches.own_write(key, body):
        rec.enqueue(key, cause="child")
    return None


async def _child_deleted(
    kind: Kind, *, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **kwargs: Any
) -> None:
    """A child is gone: uncache it and queue its model, which puts it back if it should be."""
    instance = labels.get(LABEL_INSTANCE)
    rec = reconciler()
    rec.caches.bind(kwargs)
    if instance and namespace:
        rec.caches.observe(kind, (namespace, instance), body, deleted=True)
        rec.enqueue((namespace, instance), cause="child")


def _deleted(type: str | None, **_: Any) -> bool:
    return type == "DELETED"


def _register_children() -> None:
    for kind in (*CHILD_KINDS, POD):
        group, _, version = kind.api_version.rpartition("/")
        resource = (group, version, kind.plural) if group else (version, kind.plural)
        if kind in OPTIONAL_KINDS:
            continue  # watched by optional_watch.py: kopf stops the operator on a 404
        index = functools.partial(_child_index, kind)
        kopf.index(*resource, id=f"{kind.plural}_idx", labels=MANAGED)(index)
        deleted = functools.partial(_child_deleted, kind)
        kopf.on.event(*resource, id=f"{kind.plural}_deleted", labels=MANAGED, when=_deleted)(
            deleted
        )


_register_children()


@kopf.on.event(
    "apiextensions.k8s.io",
    "v1",
    "customresourcedefinitions",
    when=lambda name, **_: name == SERVICE_MONITOR_CRD,
)
async def monitoring_crd_changed(*, type: str | None, **kwargs: Any) -> None:
    """Create or prune ServiceMonitors when their CRD comes or goes."""
    rec = reconciler()
    rec.caches.bind(kwargs)
    if type == "DELETED":
        for kind in OPTIONAL_KINDS:
            rec.caches.drop_kind(kind)
    for watch in _optional_watches:
        watch.crd_changed()
    if type is not None:
        rec.resync_all()


# --- the LocalModel itself --------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, PLURAL)
async def localmodel_event(
    *, type: str | None, namespace: str | None, name: str, body: kopf.Body, **kwargs: Any
) -> None:
    """Reconcile a LocalModel when it appears (or is listed at start) or its spec or metadata
    change; forget it when deleted. Events of the operator's own status writes are skipped.

    A plain event handler rather than kopf's create/update/resume handlers: those keep their
    bookkeeping in annotations on the object, a second write per change.
    """
    rec = reconciler()
    rec.caches.bind(kwargs)
    _started.set()  # kopf runs no handler before every index is filled
    if not namespace:
        return
    key = (namespace, name)
    if type == "DELETED":
        rec.forget(key)
    elif rec.changed_since_seen(key, body):
        rec.enqueue(key, cause="created" if type in (None, "ADDED") else "updated")


__all__ = ["Kind", "reconciler"]
