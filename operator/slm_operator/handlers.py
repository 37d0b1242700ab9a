"""kopf wiring: watches feed the caches, and every relevant change runs the one reconcile.

LocalModel create / update / resume run it directly (with kopf's error semantics); events of
owned children (found by label) re-run it for their owner; a slow resync thread re-observes
everything. No kopf timers or deletion handlers, hence no finalizers: children go by owner
references.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Final

import kopf
from prometheus_client import start_http_server

from slm_operator.api import (
    GROUP,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    MANAGER_NAME,
    PLURAL,
    VERSION,
    InvalidSpecError,
)
from slm_operator.kube import CHILD_KINDS, OPTIONAL_KINDS, POD, Kind, Kube
from slm_operator.observe import node_info
from slm_operator.reconcile import Reconciler
from slm_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

SERVICE_MONITOR_CRD: Final = "servicemonitors.monitoring.coreos.com"
MANAGED: Final = {LABEL_MANAGED_BY: MANAGER_NAME}

_state: dict[str, Reconciler] = {}


def reconciler() -> Reconciler:
    """The operator's reconciler, created at startup."""
    return _state["reconciler"]


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """kopf keeps its bookkeeping in annotations; Events are ours alone; metrics start."""
    operator_settings = OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.execution.max_workers = 8
    _state["reconciler"] = Reconciler(
        Kube.from_environment(), operator_settings, operator_settings.load_catalog()
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
def localmodels_idx(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
    """LocalModels by (namespace, name)."""
    return {(namespace, name): dict(body)}


@kopf.index("v1", "nodes", id="nodes_idx")
def nodes_idx(*, name: str, body: kopf.Body, **_: Any) -> Any:
    """Nodes as placement sees them."""
    return {name: node_info(body)}


@kopf.index(
    "apiextensions.k8s.io",
    "v1",
    "customresourcedefinitions",
    id="crds_idx",
    when=lambda name, **_: name == SERVICE_MONITOR_CRD,
)
def crds_idx(*, name: str, **_: Any) -> Any:
    """The optional CRDs the operator adapts to."""
    return {name: True}


def _child_index(*, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    instance = labels.get(LABEL_INSTANCE)
    if not instance:
        return None
    return {(namespace, instance): dict(body)}


def _child_event(
    *, namespace: str | None, labels: kopf.Labels, type: str | None, **kwargs: Any
) -> None:
    instance = labels.get(LABEL_INSTANCE)
    rec = reconciler()
    rec.caches.bind(kwargs)
    if instance and namespace and type is not None:  # initial listings: resume handles them
        rec.trigger((namespace, instance), cause="child")


def _optional_child_event(
    kind: Kind,
    *,
    namespace: str | None,
    labels: kopf.Labels,
    type: str | None,
    body: kopf.Body,
    **kwargs: Any,
) -> None:
    instance = labels.get(LABEL_INSTANCE)
    rec = reconciler()
    rec.caches.bind(kwargs)
    if instance and namespace:
        rec.caches.observe(kind, (namespace, instance), dict(body), deleted=type == "DELETED")
        if type is not None:
            rec.trigger((namespace, instance), cause="child")


def _register_children() -> None:
    for kind in (*CHILD_KINDS, POD):
        group, _, version = kind.api_version.rpartition("/")
        resource = (group, version, kind.plural) if group else (version, kind.plural)
        if kind in OPTIONAL_KINDS:
            # No kopf index: an index whose resource vanishes before its first listing
            # completes would hold every handler back for good.
            handler = functools.partial(_optional_child_event, kind)
            kopf.on.event(*resource, id=f"{kind.plural}_event", labels=MANAGED)(handler)
            continue
        kopf.index(*resource, id=f"{kind.plural}_idx", labels=MANAGED)(_child_index)
        kopf.on.event(*resource, id=f"{kind.plural}_event", labels=MANAGED)(_child_event)


_register_children()


@kopf.on.event(
    "apiextensions.k8s.io",
    "v1",
    "customresourcedefinitions",
    when=lambda name, **_: name == SERVICE_MONITOR_CRD,
)
def monitoring_crd_changed(*, type: str | None, **kwargs: Any) -> None:
    """Create or prune ServiceMonitors when their CRD comes or goes."""
    rec = reconciler()
    rec.caches.bind(kwargs)
    if type == "DELETED":
        for kind in OPTIONAL_KINDS:
            rec.caches.drop_kind(kind)
    if type is not None:
        rec.resync_all()


# --- the LocalModel itself --------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile_localmodel(*, body: kopf.Body, reason: str, **kwargs: Any) -> None:
    """Reconcile on create, spec change and operator start."""
    rec = reconciler()
    rec.caches.bind(kwargs)
    try:
        rec.reconcile(dict(body), cause=str(reason))
    except InvalidSpecError as exc:
        raise kopf.PermanentError(str(exc)) from exc


@kopf.on.event(GROUP, VERSION, PLURAL)
def localmodel_event(*, type: str | None, namespace: str | None, name: str, **kwargs: Any) -> None:
    """Forget a deleted LocalModel."""
    rec = reconciler()
    rec.caches.bind(kwargs)
    if type == "DELETED" and namespace:
        rec.forget((namespace, name))


__all__ = ["Kind", "reconciler"]
