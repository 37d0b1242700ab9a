"""kopf wiring: watches feed the caches, and every relevant change runs the one reconcile.

Events of a LocalModel (its listing at start, creation, spec or metadata changes), seen by
kopf, and of its owned children and pods (found by label), seen by the operator's own
watches (watches.py), queue it; a slow resync thread re-observes everything. No kopf change
handlers, timers or deletion handlers, hence no annotations and no finalizers on the
LocalModel: children go by owner references.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any, Final

import kopf
from prometheus_client import start_http_server

from slm_operator.controller.kube import Kube
from slm_operator.controller.watches import KindWatch, start_watches
from slm_operator.kinds import CHILD_KINDS, OPTIONAL_KINDS, POD, Kind
from slm_operator.names import GROUP, LABEL_MANAGED_BY, MANAGER_NAME, PLURAL, VERSION
from slm_operator.reconcile import Reconciler
from slm_operator.settings import OperatorSettings
from slm_operator.summary import node_info

log = logging.getLogger(__name__)

OPTIONAL_CRDS: Final = {kind.crd: kind for kind in OPTIONAL_KINDS}
"""The CRDs of the optional child kinds (ServiceMonitor, InferencePool), by name."""
RECONCILE_WORKERS: Final = 16
"""Threads that reconcile queued models; event handlers only queue them. A reconcile mostly
waits on the API server's answers, so a burst of new models needs many in flight."""

_state: dict[str, Reconciler] = {}
_watches: list[KindWatch] = []


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
    """Events are ours alone; the children's watches, the workers (once every cache is
    filled), metrics and the resync thread start."""
    operator_settings = OperatorSettings()
    settings.posting.enabled = False
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.watching.server_timeout = 300
    _state["reconciler"] = rec = Reconciler(
        Kube.from_environment(connections=RECONCILE_WORKERS),
        operator_settings,
        operator_settings.load_catalog(),
        operator_settings.load_models(),
    )
    namespaces = list(memo.get("namespaces") or [])
    kinds = (*CHILD_KINDS, POD)
    _watches.extend(
        start_watches(
            Kube.with_connections(len(kinds) * max(1, len(namespaces))),  # a watch holds one
            kinds,
            rec.caches,
            rec.enqueue,
            namespaces=namespaces,
            label_selector=f"{LABEL_MANAGED_BY}={MANAGER_NAME}",
        )
    )
    rec.start_workers(RECONCILE_WORKERS, after=[rec.caches.listed, *(w.listed for w in _watches)])
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


# --- the caches of LocalModels, nodes and CRDs -------------------------------------------------
# kopf indexes, so that kopf lists all three before it runs any handler; what they see goes to
# the operator's caches, which worker threads read under their lock.


@kopf.index(GROUP, VERSION, PLURAL, id="localmodels_idx")
async def localmodels_idx(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
    """LocalModels, kept in the caches by (namespace, name)."""
    if namespace:
        reconciler().caches.put_model((namespace, name), body)
    return {(namespace, name): True}


@kopf.index("v1", "nodes", id="nodes_idx")
async def nodes_idx(*, name: str, body: kopf.Body, **_: Any) -> Any:
    """Nodes as placement sees them, kept in the caches."""
    reconciler().caches.put_node(body, node_info(body))
    return {name: True}


@kopf.on.event("v1", "nodes")
async def node_event(*, type: str | None, body: kopf.Body, **_: Any) -> None:
    """A node deleted leaves placement's view (an index handler never sees a deletion)."""
    if type == "DELETED":
        reconciler().caches.drop_node(body)


@kopf.index(
    "apiextensions.k8s.io",
    "v1",
    "customresourcedefinitions",
    id="crds_idx",
    when=lambda name, **_: name in OPTIONAL_CRDS,
)
async def crds_idx(*, name: str, body: kopf.Body, **_: Any) -> Any:
    """The optional CRDs the operator adapts to, kept in the caches."""
    reconciler().caches.put_crd(body)
    return {name: True}


@kopf.on.event(
    "apiextensions.k8s.io",
    "v1",
    "customresourcedefinitions",
    when=lambda name, **_: name in OPTIONAL_CRDS,
)
async def optional_crd_changed(*, name: str, type: str | None, body: kopf.Body, **_: Any) -> None:
    """Create or prune ServiceMonitors or InferencePools when their CRD comes or goes."""
    rec = reconciler()
    kind = OPTIONAL_CRDS[name]
    if type == "DELETED" and rec.caches.drop_crd(body):
        rec.caches.drop_kind(kind)
    for watch in _watches:
        if watch.kind == kind:
            watch.crd_changed()
    if type is not None:
        rec.resync_all()


# --- the LocalModel itself --------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, PLURAL)
async def localmodel_event(
    *, type: str | None, namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> None:
    """Reconcile a LocalModel when it appears (or is listed at start) or its spec or metadata
    change; forget it when deleted. Events of the operator's own status writes are skipped.

    A plain event handler rather than kopf's create/update/resume handlers: those keep their
    bookkeeping in annotations on the object, a second write per change.
    """
    rec = reconciler()
    rec.caches.listed.set()  # kopf runs no handler before every index is filled
    if not namespace:
        return
    key = (namespace, name)
    if type == "DELETED":
        rec.forget(key, body)
    elif rec.changed_since_seen(key, body):
        rec.enqueue(key, cause="created" if type in (None, "ADDED") else "updated")


__all__ = ["Kind", "reconciler"]
