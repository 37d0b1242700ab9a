"""The reconcile: validate -> place -> render -> apply -> prune -> observe -> write status once.

One level-based function serves create, update and resume of a LocalModel, events of its
children, the periodic resync and the fallback timer (handlers.py wires them). The watch caches
(kopf indexes) hold every child, node and LocalModel, so a reconcile at rest reads nothing from
the API and writes nothing to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from kubernetes.client.exceptions import ApiException
from slm_runtime.config import Device, parse_duration

from slm_operator import metrics
from slm_operator.api import (
    COMPONENT_PULLER,
    LABEL_COMPONENT,
    CacheMode,
    InvalidSpecError,
    LocalModel,
    LocalModelStatus,
    Reason,
    parse_localmodel,
)
from slm_operator.apply import (
    APPLIED_HASH_ANNOTATION,
    apply_children,
    prune_children,
    with_hash,
)
from slm_operator.kube import (
    CHILD_KINDS,
    DEPLOYMENT,
    HPA,
    INFERENCE_POOL,
    JOB,
    POD,
    SERVICE_MONITOR,
    Kind,
    Kube,
    Object,
    rejection,
)
from slm_operator.observe import PULL_CONTAINER, observation, pull_progress
from slm_operator.place import NodeInfo, NoServableTier, Placement, place
from slm_operator.readiness import DeviceReader
from slm_operator.render import (
    SERVER_CONTAINER,
    RenderOptions,
    endpoint,
    render,
    selector_string,
)
from slm_operator.render import image as image_of
from slm_operator.settings import (
    AcceleratorCatalog,
    OperatorSettings,
    runtime_image_refusal,
)
from slm_operator.sizing import parse_quantity, pod_resources
from slm_operator.status import (
    Observation,
    RuntimeDevice,
    compute_status,
    failed_status,
    next_tier,
    runtime_fallback,
    should_step_down,
    status_patch,
    step_down_reason,
    unschedulable_for,
)

log = logging.getLogger(__name__)

TIER_ANNOTATION: Final = "slm.dev/tier"
HARDWARE_ANNOTATION: Final = "slm.dev/hardware"
RETRY_SECONDS: Final = 10.0
ROLLOUT_WAIT_SECONDS: Final = 10.0
"""How often a model waiting for a runtime image rollout slot looks again (a finished rollout
also wakes it at once)."""
PROGRESS_SECONDS: Final = 5.0

Key = tuple[str, str]
Ident = tuple[str, str, str]
T = TypeVar("T")


def hardware_hash(lm: LocalModel) -> str:
    """A short digest of spec.hardware: a recorded tier is kept only while it is unchanged."""
    text = lm.spec.hardware.model_dump_json(by_alias=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ident(obj: Mapping[str, Any]) -> Ident:
    """(apiVersion, kind, name) of an object."""
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])


def _snapshot(read: Callable[[], T]) -> T:
    """Read a watch cache from a worker thread; the event loop may be mutating it meanwhile."""
    for _ in range(5):
        try:
            return read()
        except RuntimeError:  # changed size during iteration
            continue
    return read()


def pack(body: Mapping[str, Any], *, keep_spec: bool = True) -> bytes:
    """An object as the caches keep it: compact JSON, without ``managedFields`` (often half of
    an object, and never read), and for Pods without ``spec`` (status and metadata say it all).

    Bytes take a fraction of the memory of the same object as Python dicts; a reconcile
    unpacks only the few objects of its own model.
    """
    obj = {k: v for k, v in _without_managed_fields(body).items() if keep_spec or k != "spec"}
    return json.dumps(obj, separators=(",", ":")).encode()


def _without_managed_fields(obj: Mapping[str, Any]) -> Object:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


def _unpack(value: Any) -> Any:
    return json.loads(value) if isinstance(value, bytes) else value


class Caches:
    """What the watches saw: LocalModels, nodes and CRDs in kopf indexes (bound at the first
    handler call), children and their pods in the operator's own store, kept by the operator's
    own watches (watches.py).

    kopf indexes: ``localmodels_idx`` (namespace, name) -> LocalModel body, ``nodes_idx`` name
    -> NodeInfo, ``crds_idx`` name -> True. Children: (namespace, instance) -> uid -> body, one
    store per kind. The store is written by the event before the model is queued, so a worker
    never reads a child older than the event that queued it.
    """

    def __init__(self) -> None:
        self.indexes: dict[str, Mapping[Any, Iterable[Any]]] = {}
        self._events: dict[str, dict[Key, dict[str, bytes]]] = {
            f"{kind.plural}_idx": {} for kind in (*CHILD_KINDS, POD)
        }
        self._events_lock = threading.Lock()
        self._recent: dict[Key, dict[Ident, Object]] = {}
        self._recent_lock = threading.Lock()

    def bind(self, kwargs: Mapping[str, Any]) -> None:
        """Keep references to the indexes kopf passes to every handler."""
        for name, value in kwargs.items():
            if name.endswith("_idx") and name not in self.indexes:
                self.indexes[name] = value

    def observe(self, kind: Kind, key: Key, obj: Mapping[str, Any], *, deleted: bool) -> None:
        """Cache a child from its watch event (watches.py)."""
        meta = obj.get("metadata", {})
        uid = str(meta.get("uid", ""))
        packed = None if deleted else pack(obj, keep_spec=kind != POD)
        if deleted:
            # An apply answer must not bring back a child that is gone.
            name = str(meta.get("name", ""))
            with self._recent_lock:
                self._recent.get(key, {}).pop((kind.api_version, kind.kind, name), None)
        with self._events_lock:
            store = self._events[f"{kind.plural}_idx"]
            if packed is None:
                store.get(key, {}).pop(uid, None)
                if not store.get(key, True):
                    del store[key]
            else:
                store.setdefault(key, {})[uid] = packed

    def replace_kind(
        self, kind: Kind, namespace: str | None, objects: Mapping[Key, Iterable[Object]]
    ) -> set[Key]:
        """Replace every cached object of a kind in ``namespace`` (every namespace when None) by
        a fresh listing; the keys whose objects changed."""
        fresh = {
            key: {
                str(o.get("metadata", {}).get("uid", "")): pack(o, keep_spec=kind != POD)
                for o in objs
            }
            for key, objs in objects.items()
        }
        with self._events_lock:
            store = self._events[f"{kind.plural}_idx"]
            mine = [k for k in store if namespace is None or k[0] == namespace]
            changed = {k for k in mine if store[k] != fresh.get(k)}
            changed |= {k for k in fresh if store.get(k) != fresh[k]}
            for k in mine:
                del store[k]
            store.update({k: v for k, v in fresh.items() if v})
        return changed

    def drop_kind(self, kind: Kind) -> None:
        """Forget every cached object of a kind (an optional kind whose CRD is gone)."""
        self.replace_kind(kind, None, {})

    def _values(self, index: str, key: Any) -> list[Any]:
        if index in self._events:
            with self._events_lock:
                packed = list(self._events[index].get(key, {}).values())
        else:
            idx = self.indexes.get(index)
            if idx is None:
                return []
            packed = _snapshot(lambda: list(idx[key]) if key in idx else [])
        return [_unpack(v) for v in packed]

    def model(self, key: Key) -> Object | None:
        """The LocalModel body as last seen."""
        values = self._values("localmodels_idx", key)
        return values[0] if values else None

    def model_keys(self) -> list[Key]:
        """Every known LocalModel."""
        idx = self.indexes.get("localmodels_idx")
        return _snapshot(lambda: list(idx.keys())) if idx else []

    def children_of(self, key: Key) -> list[Object]:
        """Every child of a LocalModel (pods included), as last seen."""
        found: list[Object] = []
        for kind in (*CHILD_KINDS, POD):
            found.extend(self._values(f"{kind.plural}_idx", key))
        return found

    def children_now(self, key: Key) -> list[Object]:
        """Every child of a LocalModel (pods included) as the API server has it: the watch's
        copy, or the answer of an apply the watch has not delivered yet."""
        found = {ident(c): c for c in self.children_of(key)}
        with self._recent_lock:
            recent = self._recent.get(key, {})
            for wanted, answer in list(recent.items()):
                cached = found.get(wanted)
                if cached is not None and _hash(cached) == _hash(answer):
                    del recent[wanted]  # the watch caught up
                else:
                    found[wanted] = answer
            if not recent:
                self._recent.pop(key, None)
        return list(found.values())

    def nodes(self) -> list[NodeInfo]:
        """Placement's view of every node."""
        idx = self.indexes.get("nodes_idx")
        if idx is None:
            return []
        return _snapshot(lambda: [n for store in idx.values() for n in store])

    def crd_installed(self, name: str) -> bool:
        """Whether a CRD of that name exists."""
        return bool(self._values("crds_idx", name))

    # Applies reach the watch a moment later; until then the apply's answer is the live object.

    def remember(self, key: Key, obj: Object) -> None:
        """Record what an apply returned."""
        with self._recent_lock:
            self._recent.setdefault(key, {})[ident(obj)] = _without_managed_fields(obj)

    def own_write(self, key: Key, obj: Mapping[str, Any]) -> bool:
        """Whether a watch event only echoes one of the operator's own applies (the version
        its answer had): the reconcile that wrote it has taken it into account already."""
        version = (obj.get("metadata") or {}).get("resourceVersion")
        with self._recent_lock:
            recent = self._recent.get(key, {}).get(ident(obj))
        return recent is not None and recent["metadata"].get("resourceVersion") == version

    def live(self, key: Key, kind: Kind, name: str) -> Object | None:
        """The child as the API server has it: the watch's copy, or a fresher apply answer."""
        wanted = (kind.api_version, kind.kind, name)
        cached: Object | None = next(
            (c for c in self._values(f"{kind.plural}_idx", key) if ident(c) == wanted), None
        )
        with self._recent_lock:
            recent = self._recent.get(key, {}).get(wanted)
            if recent is None:
                return cached
            if cached is not None and _hash(cached) == _hash(recent):
                del self._recent[key][wanted]
                return cached
            return recent

    def forget(self, key: Key) -> None:
        """Drop apply answers of a deleted LocalModel."""
        with self._recent_lock:
            self._recent.pop(key, None)


def _hash(obj: Mapping[str, Any]) -> str | None:
    annotations = obj.get("metadata", {}).get("annotations") or {}
    value = annotations.get(APPLIED_HASH_ANNOTATION)
    return str(value) if value is not None else None


class Reconciler:
    """Runs the reconcile for one LocalModel at a time; timers and retries re-trigger it."""

    def __init__(self, kube: Kube, settings: OperatorSettings, catalog: AcceleratorCatalog) -> None:
        self.kube = kube
        self.settings = settings
        self.catalog = catalog
        self.caches = Caches()
        self._guard = threading.Lock()
        self._written: dict[Key, LocalModelStatus] = {}
        self._timers: dict[Key, threading.Timer] = {}
        self._work = threading.Condition()
        self._queue: deque[Key] = deque()
        self._dirty: dict[Key, str] = {}
        self._processing: set[Key] = set()
        self._seen: dict[Key, str] = {}
        self._rendered: dict[Key, list[tuple[tuple[Any, ...], bytes]]] = {}
        """Per model: its last renders, by what they were for (see ``_desired``)."""
        self._deferred: set[Key] = set()
        """Models whose last reconcile applied children and left its status to the next one."""
        self.devices = DeviceReader(self.enqueue)
        """What each ready runtime pod reported it serves on (its /readyz, read once)."""
        self._rollouts: dict[Key, str] = {}
        """Models this operator is moving to a new runtime image, and that image."""
        self._waiting_rollout: set[Key] = set()
        """Models kept on their old runtime image until a rollout slot frees."""
        self._rollout_lock = threading.Lock()

    def enqueue(self, key: Key, cause: str) -> None:
        """Mark ``key`` for a reconcile by a worker; returns at once.

        A key waits in the queue at most once: triggers that arrive while it waits, or while it
        is being reconciled, fold into one more reconcile (which is level-based and reads the
        latest caches). A burst of events costs one reconcile, not one each, and the queue holds
        keys, not events, however far the workers fall behind.
        """
        with self._work:
            if key in self._dirty:
                return
            self._dirty[key] = cause
            if key in self._processing:
                return  # queued again when its reconcile ends
            self._queue.append(key)
            self._work.notify()

    def start_workers(self, count: int, after: Sequence[threading.Event] = ()) -> None:
        """Start ``count`` worker threads that reconcile queued keys, one key per worker, once
        every event in ``after`` is set (the caches are filled: a reconcile that saw no
        children would apply them all again)."""
        for i in range(count):
            worker = threading.Thread(
                target=self._work_loop, args=(after,), daemon=True, name=f"reconcile-{i}"
            )
            worker.start()

    def _work_loop(self, after: Sequence[threading.Event]) -> None:
        for gate in after:
            gate.wait()
        while True:
            with self._work:
                while not self._queue:
                    self._work.wait()
                key = self._queue.popleft()
                self._processing.add(key)
                cause = self._dirty.pop(key)
            try:
                self._trigger_once(key, cause)
            finally:
                with self._work:
                    self._processing.discard(key)
                    if key in self._dirty:
                        self._queue.append(key)
                        self._work.notify()

    def _trigger_once(self, key: Key, cause: str) -> None:
        body = self.caches.model(key)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return
        try:
            self.reconcile(body, cause=cause)
        except InvalidSpecError:
            pass  # already reported in status
        except Exception as exc:
            if isinstance(exc, ApiException) and _namespace_terminating(exc):
                # The namespace's deletion removes the LocalModel next: nothing to retry.
                log.info("%s/%s: its namespace is being deleted; nothing applied", *key)
                return
            log.exception("reconcile of %s/%s failed; retrying in %.0fs", *key, RETRY_SECONDS)
            self.schedule(key, RETRY_SECONDS)

    def changed_since_seen(self, key: Key, body: Mapping[str, Any]) -> bool:
        """Whether a LocalModel event brings anything a reconcile reads beyond its status.

        The operator's own status writes come back as events; they change neither the spec
        (``generation``) nor the metadata a reconcile uses, so they need no reconcile.
        """
        return self._seen.get(key) != _fingerprint(body)

    def schedule(self, key: Key, delay: float) -> None:
        """Reconcile ``key`` again after ``delay`` seconds (at most one pending timer each)."""
        with self._guard:
            old = self._timers.pop(key, None)
            if old is not None:
                old.cancel()
            timer = threading.Timer(delay, self.enqueue, args=(key, "timer"))
            timer.daemon = True
            self._timers[key] = timer
            timer.start()

    def forget(self, key: Key) -> None:
        """Drop every trace of a deleted LocalModel."""
        with self._guard:
            timer = self._timers.pop(key, None)
            if timer is not None:
                timer.cancel()
        self._written.pop(key, None)
        self._seen.pop(key, None)
        self._rendered.pop(key, None)
        self._deferred.discard(key)
        self.caches.forget(key)
        self.devices.forget(key)
        self.release_rollout(key)
        metrics.forget_model(key)

    def resync_all(self) -> None:
        """Re-observe every LocalModel (the slow safety net behind the watches)."""
        keys = set(self.caches.model_keys())
        if self.caches.indexes.get("localmodels_idx") is not None:  # the index is filled
            metrics.retain_models(keys)
        for key in keys:
            self.enqueue(key, "resync")

    # --- the reconcile ------------------------------------------------------------------------

    def reconcile(self, body: Mapping[str, Any], *, cause: str) -> LocalModelStatus:
        """Bring one LocalModel's children and status in line with its spec."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        # One worker holds a key at a time (the queue's processing set), so no lock is needed.
        with metrics.RECONCILE_SECONDS.time():
            self._seen[key] = version = _fingerprint(body)
            metrics.RECONCILES.labels(cause=cause).inc()
            try:
                return self._reconcile(key, body, version)
            except InvalidSpecError:
                raise
            except Exception:
                metrics.RECONCILE_ERRORS.inc()
                raise

    def _reconcile(self, key: Key, body: Mapping[str, Any], version: str) -> LocalModelStatus:
        now = datetime.now(UTC)
        try:
            lm = parse_localmodel(body)
        except InvalidSpecError as exc:
            self._fail(key, body, str(exc), Reason.INVALID_SPEC, now)
            raise
        refused = runtime_image_refusal(
            lm.spec.runtime.image, self.catalog, allow_custom=self.settings.allow_custom_images
        )
        if refused is not None:
            self._fail(key, body, refused, Reason.INVALID_SPEC, now)
            raise InvalidSpecError(refused)
        written = self._written.get(key)
        if written is not None:
            # The watch delivers our own status write a moment later; until then the cached body
            # holds the one before it, and conditions would restart their transition times.
            lm = lm.model_copy(update={"status": written})

        children = self.caches.children_now(key)
        deployment = next((c for c in children if ident(c) == _deployment_ident(lm)), None)
        crds = InstalledCrds(
            service_monitor=self.caches.crd_installed(SERVICE_MONITOR.crd),
            inference_pool=self.caches.crd_installed(INFERENCE_POOL.crd),
        )
        devices = self.devices.devices(
            key,
            (c for c in children if c["kind"] == POD.kind and not _is_puller(c)),
            lm.spec.serving.port,
        )
        obs = _observe(children, deployment, None, crds, devices)

        nodes = self.caches.nodes()
        requests = pod_resources(lm.spec, lm.status.model.size_bytes)
        pod_requests = {k: parse_quantity(v) for k, v in requests.get("requests", {}).items()}
        try:
            natural = place(lm.spec, nodes, self.catalog, pod_requests=pod_requests)
            placement = _keep_step_down(
                natural,
                _recorded_tier(lm, deployment),
                lambda tier: place(
                    lm.spec, nodes, self.catalog, start_at=tier, pod_requests=pod_requests
                ),
                lm.spec.hardware.tiers(),
            )
            stepped = None
            if should_step_down(lm.spec, placement, obs, now):
                stepped = step_down_reason(placement, obs, now)
                placement = _keep_step_down(
                    natural,
                    next_tier(lm.spec, placement),
                    lambda tier: place(
                        lm.spec, nodes, self.catalog, start_at=tier, pod_requests=pod_requests
                    ),
                    lm.spec.hardware.tiers(),
                )
                metrics.FALLBACKS.inc()
        except NoServableTier as exc:
            self._fail(key, body, f"spec.hardware: {exc}", Reason.INVALID_SPEC, now)
            raise InvalidSpecError(str(exc)) from exc
        self._arm_fallback_timer(key, lm, placement, obs, now)
        placement, rollout_wait = self._within_rollout_budget(key, lm, placement, deployment)

        # Only a Volume cache is pulled before its pods start; sizing PerPod pods from what their
        # own init containers pulled would roll them, and so pull again.
        sized_by_pull = lm.spec.cache.mode is CacheMode.VOLUME
        options = RenderOptions(
            service_monitor_supported=crds.service_monitor,
            inference_pool_supported=crds.inference_pool,
            cluster_domain=self.settings.cluster_domain,
            model_size_bytes=lm.status.model.size_bytes if sized_by_pull else None,
            metrics_from=tuple(self.settings.metrics_from),
            token_realm_hosts=tuple(self.settings.token_realm_hosts),
        )
        desired = self._desired(key, version, lm, placement, options)
        job_name = next((o["metadata"]["name"] for o in desired if o["kind"] == JOB.kind), None)
        obs = _observe(children, deployment, job_name, crds, devices)
        obs = self._with_progress(key, obs, children, job_name)
        # The pulled size sizes the pods from their first start (no rollout once status has it),
        # and no server starts (and crash-loops) before its model volume is filled.
        size = obs.model.size_bytes if obs.model and sized_by_pull else None
        hold = _first_pull_running(obs, job_name)
        final = replace(
            options,
            model_size_bytes=size or options.model_size_bytes,
            hold_replicas=hold,
            wake_replicas=not hold and _left_at_zero(lm, obs, children),
        )
        if final != options:
            desired = self._desired(key, version, lm, placement, final)
        try:
            result = apply_children(
                self.kube, desired, lambda kind, _ns, name: self.caches.live(key, kind, name)
            )
        except ApiException as exc:
            refused = rejection(exc)
            if refused is None:
                raise
            # Fields passed through as written (tolerations, affinity, ...) can make a child
            # that the API server refuses; no retry can fix that, only a spec change.
            message = f"the API server refused a child: {refused}; change the spec field it names"
            self._fail(key, body, message, Reason.INVALID_SPEC, now)
            raise InvalidSpecError(message) from exc
        answers: dict[Ident, Object] = {}
        for applied in result.applied:
            live = result.live.get(applied)
            if live is not None:
                answers[applied] = {**live, "apiVersion": applied[0], "kind": applied[1]}
                self.caches.remember(key, answers[applied])
        owned = [c for c in children if c["kind"] != POD.kind]
        pruned = prune_children(self.kube, lm.metadata.uid, desired, owned, CHILD_KINDS)
        metrics.WRITES.inc(len(result.applied) + len(pruned))
        if answers:
            # Status follows what the API server answered, not what was read before the applies:
            # a Deployment just released from its hold already asks for its replicas.
            children = [c for c in children if ident(c) not in answers] + list(answers.values())
            deployment = answers.get(_deployment_ident(lm), deployment)
            obs = _with_pull_progress(_observe(children, deployment, job_name, crds, devices), obs)

        status = compute_status(
            lm,
            placement,
            obs,
            now=now,
            endpoint=endpoint(lm, self.settings.cluster_domain),
            selector=selector_string(lm),
            rollout_wait=rollout_wait,
        )
        if stepped is not None:
            status.fallback_reason = stepped
        elif result.applied and key not in self._deferred:
            # Children just applied change soon (a new Deployment's pods start). The next
            # reconcile, queued behind the models already waiting, also takes in what happens
            # meanwhile (in a burst of new models, their pods becoming ready), which saves a
            # status write. Once only, so that a child applied on every reconcile still gets
            # its model a status.
            self._deferred.add(key)
            self.enqueue(key, cause="applied")
            return status
        self._deferred.discard(key)
        if self._write_status(key, lm.status, status):
            if stepped is not None:
                self.kube.post_event(
                    body,
                    reason=Reason.FELL_BACK.value,
                    message=f"moved to {placement.device.value}: {stepped}",
                    warning=True,
                )
            fell_back = runtime_fallback(lm.status, status)
            if fell_back is not None:
                self.kube.post_event(
                    body, reason=Reason.RUNTIME_FELL_BACK.value, message=fell_back, warning=True
                )
        metrics.observe_model(key, status)
        return status

    def _within_rollout_budget(
        self,
        key: Key,
        lm: LocalModel,
        placement: Placement,
        deployment: Mapping[str, Any] | None,
    ) -> tuple[Placement, str | None]:
        """The placement, or the same with the image the model's pods run now and a line for
        its status that says why.

        A new runtime image for every model (an operator upgrade, ``runtime.image``) restarts
        at most ``max_image_rollouts`` serving models at a time; the others keep their image
        until a slot frees, and a model whose rollout ends wakes them. Only a new image on the
        same tier waits: a model that names its image (``spec.runtime.image``), a new model, a
        model that no replica serves yet and a model that moves to another tier (whose image
        differs with it) take theirs at once.
        """
        live = _server_image(deployment)
        wanted = image_of(lm, placement)
        same_tier = _recorded_tier(lm, deployment) is placement.device
        serving = bool(((deployment or {}).get("status") or {}).get("readyReplicas"))
        wake: list[Key] = []
        held = first_hold = False
        with self._rollout_lock:
            for other, target in list(self._rollouts.items()):
                if self._rollout_finished(other, target):
                    del self._rollouts[other]
                    wake.extend(self._waiting_rollout)
            budgeted = not lm.spec.runtime.image and live is not None and same_tier and serving
            if not budgeted or live == wanted:
                if not budgeted or self._rollouts.get(key) != wanted:
                    self._release(key, wake)
            elif key in self._rollouts or len(self._rollouts) < self.settings.max_image_rollouts:
                self._rollouts[key] = wanted
                self._waiting_rollout.discard(key)
            else:
                held, first_hold = True, key not in self._waiting_rollout
                self._waiting_rollout.add(key)
        for other in wake:
            if other != key:
                self.enqueue(other, cause="a runtime image rollout ended")
        if not held or live is None:
            return placement, None
        if first_hold:
            log.info(
                "%s/%s keeps runtime image %s until one of %d rollouts to %s ends",
                *key, live, len(self._rollouts), wanted,
            )  # fmt: skip
        self.schedule(key, ROLLOUT_WAIT_SECONDS)
        wait = (
            f"runtime image {wanted} waits for a rollout slot: {self.settings.max_image_rollouts} "
            f"models move at a time (runtime.maxImageRollouts); serving on {live} meanwhile"
        )
        return replace(placement, image=live), wait

    def _release(self, key: Key, wake: list[Key]) -> None:
        """Give up the model's rollout slot (lock held), waking the models waiting for one."""
        self._waiting_rollout.discard(key)
        if self._rollouts.pop(key, None) is not None:
            wake.extend(self._waiting_rollout)

    def release_rollout(self, key: Key) -> None:
        """The model failed or went away: its slot (if any) goes to a waiting model."""
        wake: list[Key] = []
        with self._rollout_lock:
            self._release(key, wake)
        for other in wake:
            self.enqueue(other, cause="a runtime image rollout ended")

    def _rollout_finished(self, key: Key, target: str) -> bool:
        """Whether the model's Deployment has finished moving to ``target``: every replica
        updated and available and no old pod left, or (once the Deployment controller has seen
        the new template) its progress deadline passed; or the Deployment is gone. A Deployment
        that does not show ``target`` yet (its apply is on the way) has not finished."""
        deployment = next(
            (c for c in self.caches.children_now(key) if c.get("kind") == DEPLOYMENT.kind), None
        )
        if deployment is None:
            return True
        if _server_image(deployment) != target:
            return False
        spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
        meta = deployment.get("metadata") or {}
        if status.get("observedGeneration", 0) < meta.get("generation", 0):
            return False
        if any(
            c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
            for c in status.get("conditions") or []
        ):
            return True
        wanted = spec.get("replicas", 1)
        return bool(
            status.get("updatedReplicas", 0) >= wanted
            and status.get("availableReplicas", 0) >= wanted
            and status.get("replicas", 0) <= wanted
        )

    def _desired(
        self, key: Key, version: str, lm: LocalModel, placement: Placement, options: RenderOptions
    ) -> list[Object]:
        """The children to apply, stamped with their hashes.

        Rendering (the runtime config's YAML, every object's digest) is most of a reconcile's
        own work, and most reconciles (a pod became ready, a Deployment's status moved) find
        the same LocalModel, placement and options as the last one: that result is reused.
        ``version`` identifies the LocalModel as rendering sees it (``_fingerprint``). The last
        two renders are kept: a reconcile may render with its first options, then its final
        ones.
        """
        memo_key = (version, placement, options)  # compared, not hashed: Placement holds dicts
        memo = self._rendered.setdefault(key, [])
        for rendered_for, cached in memo:
            if rendered_for == memo_key:
                reused: list[Object] = json.loads(cached)
                return reused
        desired = render(lm, placement, options)
        for obj in desired:
            if obj["kind"] == DEPLOYMENT.kind:
                annotations = obj["metadata"].setdefault("annotations", {})
                annotations[TIER_ANNOTATION] = placement.device.value
                annotations[HARDWARE_ANNOTATION] = hardware_hash(lm)
        stamped = [with_hash(obj) for obj in desired]
        memo.append((memo_key, json.dumps(stamped, separators=(",", ":")).encode()))
        del memo[:-2]  # the last two
        return stamped

    def _with_progress(
        self, key: Key, obs: Observation, children: list[Object], job_name: str | None
    ) -> Observation:
        """While a pull runs, read its progress from the puller's log and look again soon."""
        job = obs.pull_job
        if job is None or job.finished is not None or not job.active:
            return obs
        running = [
            c
            for c in children
            if c["kind"] == POD.kind
            and _is_puller(c)
            and (c["metadata"].get("labels") or {}).get("job-name") == job_name
            and (c.get("status") or {}).get("phase") == "Running"
        ]
        self.schedule(key, PROGRESS_SECONDS)
        if not running:
            return obs
        tail = self.kube.pod_log_tail(key[0], running[0]["metadata"]["name"], PULL_CONTAINER)
        progress = pull_progress(tail)
        if progress is None:
            return obs
        return replace(obs, pull_job=replace(job, progress=progress))

    def _arm_fallback_timer(
        self, key: Key, lm: LocalModel, placement: Placement, obs: Any, now: datetime
    ) -> None:
        """Wake up when unschedulable pods will have waited ``fallbackAfter``."""
        waited = unschedulable_for(obs, now)
        if waited is None or next_tier(lm.spec, placement) is None:
            return
        remaining = parse_duration(lm.spec.hardware.fallback_after) - waited
        self.schedule(key, max(1.0, remaining + 0.5))

    def _write_status(self, key: Key, stored: LocalModelStatus, status: LocalModelStatus) -> bool:
        """Patch status when it differs from what is stored (or was last written)."""
        patch = status_patch(self._written.get(key, stored), status)
        if patch is None:
            return False
        self.kube.patch_status(key[0], key[1], patch)
        metrics.WRITES.inc()
        self._written[key] = status
        return True

    def _fail(
        self, key: Key, body: Mapping[str, Any], message: str, reason: Reason, now: datetime
    ) -> None:
        """Failed status for a spec that cannot work, built without a parsed model."""
        self.release_rollout(key)
        try:
            previous = LocalModelStatus.model_validate(body.get("status") or {})
        except ValueError:
            previous = LocalModelStatus()
        status = failed_status(
            previous,
            generation=body["metadata"].get("generation", 0),
            error=message,
            now=now,
            error_reason=reason,
        )
        if self._write_status(key, previous, status):
            self.kube.post_event(body, reason=reason.value, message=message, warning=True)
        metrics.observe_model(key, status)


@dataclass(frozen=True)
class InstalledCrds:
    """Which optional child kinds the cluster serves."""

    service_monitor: bool
    inference_pool: bool


def _observe(
    children: list[Object],
    deployment: Object | None,
    job_name: str | None,
    crds: InstalledCrds,
    devices: Mapping[str, RuntimeDevice],
) -> Observation:
    """The observation status reads; the pull Job is the one currently rendered, if any."""
    return observation(
        devices=devices,
        deployment=deployment,
        pull_job=next(
            (c for c in children if c["kind"] == JOB.kind and c["metadata"]["name"] == job_name),
            None,
        ),
        job_pods=[
            c
            for c in children
            if c["kind"] == POD.kind
            and _is_puller(c)
            and (c["metadata"].get("labels") or {}).get("job-name") == job_name
        ],
        runtime_pods=[c for c in children if c["kind"] == POD.kind and not _is_puller(c)],
        service_monitor_crd=crds.service_monitor,
        inference_pool_crd=crds.inference_pool,
    )


def _with_pull_progress(obs: Observation, before: Observation) -> Observation:
    """``obs`` with the pull progress read for ``before`` (the same Job)."""
    job, now = before.pull_job, obs.pull_job
    if job is None or job.progress is None or now is None or now.name != job.name:
        return obs
    return replace(obs, pull_job=replace(now, progress=job.progress))


def _namespace_terminating(exc: ApiException) -> bool:
    """Whether the API server refused a write because the object's namespace is being deleted."""
    body = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else str(exc.body)
    return exc.status == 403 and "NamespaceTerminating" in body


def _fingerprint(body: Mapping[str, Any]) -> str:
    """What of a LocalModel a reconcile reads, other than status: spec generation and metadata."""
    meta = body.get("metadata", {})
    seen = {
        k: meta.get(k) for k in ("uid", "generation", "labels", "annotations", "deletionTimestamp")
    }
    return json.dumps(seen, sort_keys=True, default=str)


def _first_pull_running(obs: Observation, job_name: str | None) -> bool:
    """A pull Job is rendered, has not completed, and no server is ready to keep serving."""
    if job_name is None:
        return False
    done = obs.pull_job is not None and obs.pull_job.finished == "Complete"
    serving = obs.deployment is not None and obs.deployment.ready_replicas > 0
    return not done and not serving


def _left_at_zero(lm: LocalModel, obs: Observation, children: list[Object]) -> bool:
    """An autoscaled Deployment that the gateway took to zero (its HPA is still there: the
    operator's own hold during a first pull removes it) whose LocalModel may not be at zero any
    more: nobody else would scale it up."""
    autoscaling = lm.spec.autoscaling
    return (
        autoscaling.enabled
        and not autoscaling.scales_to_zero
        and obs.deployment is not None
        and obs.deployment.spec_replicas == 0
        and any(child["kind"] == HPA.kind for child in children)
    )


def _keep_step_down(
    natural: Placement,
    tier: Device | None,
    place_from: Callable[[Device], Placement],
    tiers: list[Device],
) -> Placement:
    """The placement from a stepped-down ``tier`` when it is below the natural choice.

    Tiers the natural placement skipped anyway keep their own reason (a format the tier cannot
    serve, no capacity); only the ones left because pods stayed unschedulable say so.
    """
    if tier is None or tier not in tiers or natural.device not in tiers:
        return natural
    if tiers.index(tier) <= tiers.index(natural.device):
        return natural
    stepped = place_from(tier)
    own = {s.device: s for s in natural.skipped}
    skipped = tuple(own.get(s.device, s) for s in stepped.skipped)
    return replace(stepped, skipped=skipped)


def _deployment_ident(lm: LocalModel) -> Ident:
    return (DEPLOYMENT.api_version, DEPLOYMENT.kind, lm.metadata.name)


def _server_image(deployment: Mapping[str, Any] | None) -> str | None:
    """The image of a Deployment's runtime container, as its pod template has it."""
    template = ((deployment or {}).get("spec") or {}).get("template") or {}
    for container in (template.get("spec") or {}).get("containers") or []:
        if container.get("name") == SERVER_CONTAINER:
            image: str | None = container.get("image")
            return image
    return None


def _is_puller(pod: Mapping[str, Any]) -> bool:
    labels = pod.get("metadata", {}).get("labels") or {}
    return labels.get(LABEL_COMPONENT) == COMPONENT_PULLER


def _recorded_tier(lm: LocalModel, deployment: Mapping[str, Any] | None) -> Device | None:
    """The tier the Deployment was placed on, while spec.hardware is unchanged."""
    annotations = (deployment or {}).get("metadata", {}).get("annotations") or {}
    if annotations.get(HARDWARE_ANNOTATION) != hardware_hash(lm):
        return None
    tier = annotations.get(TIER_ANNOTATION)
    return Device(tier) if tier in {d.value for d in Device} else None
