"""The reconcile: one pass, read top to bottom.

    parse -> observe -> place -> render -> apply -> status

One level-based pass serves create, update and resume of a LocalModel, events of its children,
the periodic resync and its timers (handlers.py wires them). Each step runs once per pass. The
caches (controller/cache.py) hold every child, node and LocalModel, so a pass at rest reads
nothing from the API and writes nothing to it. ``Reconciler`` holds what a pass remembers of
the one before it, one record per model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

from kubernetes.client.exceptions import ApiException

from slm_operator import metrics
from slm_operator.aliases import ModelCatalog, default_models, with_alias
from slm_operator.api import InvalidSpecError, LocalModel, parse_localmodel
from slm_operator.catalog import AcceleratorCatalog, runtime_image_refusal
from slm_operator.children import PULL_CONTAINER, RenderOptions, endpoint, selector_string
from slm_operator.conditions import LocalModelStatus, Reason
from slm_operator.controller.apply import apply_children, prune_children, with_hash
from slm_operator.controller.cache import Caches, Ident, Key, ident
from slm_operator.controller.kube import Kube, Object, rejection
from slm_operator.controller.queue import WorkQueue
from slm_operator.controller.readiness import DeviceReader
from slm_operator.controller.rollouts import RolloutBudget
from slm_operator.kinds import (
    CHILD_KINDS,
    DEPLOYMENT,
    HPA,
    INFERENCE_POOL,
    JOB,
    POD,
    SERVICE_MONITOR,
)
from slm_operator.names import COMPONENT_PULLER, LABEL_COMPONENT
from slm_operator.place import Decision, NoServableTier, Placement, decide, record_tier
from slm_operator.place import recorded_tier as recorded_tier_of
from slm_operator.render import pull_job_name, render
from slm_operator.settings import OperatorSettings
from slm_operator.sizing import pulled_size, requests_by_tier
from slm_operator.spec import CacheMode
from slm_operator.status import (
    VARIANT_SELECTED,
    compute_status,
    failed_status,
    runtime_fallback,
    status_patch,
    variant_choice,
)
from slm_operator.summary import (
    NodeInfo,
    Observation,
    deployment_summary,
    job_summary,
    observation,
    pull_job_seen,
    pull_progress,
)

log = logging.getLogger(__name__)

RETRY_SECONDS: Final = 10.0
PROGRESS_SECONDS: Final = 5.0
"""How often a running pull's progress is read again."""


@dataclass
class ModelRecord:
    """What the operator remembers of one LocalModel between passes."""

    seen: str | None = None
    """What the last pass read of it other than status (``_fingerprint``)."""
    written: LocalModelStatus | None = None
    """The status it last wrote (the watch brings it back a moment later)."""
    rendered: tuple[tuple[Any, ...], bytes] | None = None
    """The last render, and what it was for (the model's fingerprint, placement, options)."""
    deferred: bool = False
    """The last pass applied children and left the status to the next one."""


@dataclass(frozen=True)
class InstalledCrds:
    """Which optional child kinds the cluster serves."""

    service_monitor: bool
    inference_pool: bool


@dataclass(frozen=True)
class Observed:
    """What the observe step found: the model's children, the nodes and their summary."""

    children: list[Object]
    deployment: Object | None
    nodes: list[NodeInfo]
    crds: InstalledCrds
    observation: Observation


@dataclass(frozen=True)
class Rendered:
    """The render step's result: the children to apply and the observation for status."""

    desired: list[Object]
    placement: Placement
    observation: Observation
    rollout_wait: str | None
    job_name: str | None


@dataclass
class Applied:
    """What the apply step wrote, and what the API server answered."""

    applied: list[Ident] = field(default_factory=list)
    pruned: list[Ident] = field(default_factory=list)
    answers: dict[Ident, Object] = field(default_factory=dict)


class Reconciler:
    """Runs the pass for one LocalModel at a time; the work queue's timers re-trigger it."""

    def __init__(
        self,
        kube: Kube,
        settings: OperatorSettings,
        catalog: AcceleratorCatalog,
        models: ModelCatalog | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.catalog = catalog
        self.models = models if models is not None else default_models()
        """The aliases spec.model.alias may name."""
        self.caches = Caches()
        self.queue = WorkQueue(self._handle)
        self.devices = DeviceReader(self.queue.enqueue)
        """What each ready runtime pod reported it serves on (its /readyz, read once)."""
        self.rollouts = RolloutBudget(
            settings.max_image_rollouts,
            self.caches.children_now,
            self.queue.enqueue,
            self.queue.schedule,
        )
        self._records: dict[Key, ModelRecord] = {}

    # --- what handlers.py calls ---------------------------------------------------------------

    def enqueue(self, key: Key, cause: str) -> None:
        """Queue ``key`` for a pass by a worker; returns at once."""
        self.queue.enqueue(key, cause)

    def start_workers(self, count: int, after: Iterable[Any] = ()) -> None:
        """Start the workers once every event in ``after`` is set (the caches are filled)."""
        self.queue.start_workers(count, list(after))

    def changed_since_seen(self, key: Key, body: Mapping[str, Any]) -> bool:
        """Whether a LocalModel event brings anything a pass reads beyond its status.

        The operator's own status writes come back as events; they change neither the spec
        (``generation``) nor the metadata a pass uses, so they need no pass.
        """
        record = self._records.get(key)
        return record is None or record.seen != _fingerprint(body)

    def forget(self, key: Key, body: Mapping[str, Any]) -> None:
        """Drop every trace of a deleted LocalModel, unless one created since holds its name."""
        if not self.caches.forget(key, body):
            return
        self._records.pop(key, None)
        self.queue.forget(key)
        self.devices.forget(key)
        self.rollouts.release(key)
        metrics.forget_model(key)

    def resync_all(self) -> None:
        """Queue every LocalModel (the slow safety net behind the watches)."""
        keys = set(self.caches.model_keys())
        if self.caches.listed.is_set():
            metrics.retain_models(keys)
        for key in keys:
            self.queue.enqueue(key, "resync")

    def _handle(self, key: Key, cause: str) -> None:
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
            self.queue.schedule(key, RETRY_SECONDS)

    # --- the pass -----------------------------------------------------------------------------

    def reconcile(self, body: Mapping[str, Any], *, cause: str) -> LocalModelStatus:
        """Bring one LocalModel's children and status in line with its spec."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        # One worker holds a key at a time (the queue's record), so no lock is needed.
        with metrics.RECONCILE_SECONDS.time():
            record = self._records.setdefault(key, ModelRecord())
            record.seen = _fingerprint(body)
            metrics.RECONCILES.labels(cause=cause).inc()
            try:
                return self._pass(key, body, record)
            except InvalidSpecError:
                raise
            except Exception:
                metrics.RECONCILE_ERRORS.inc()
                raise

    def _pass(self, key: Key, body: Mapping[str, Any], record: ModelRecord) -> LocalModelStatus:
        now = datetime.now(UTC)
        lm = self._parse(key, body, record, now)
        observed = self._observe(key, lm)
        decision = self._place(key, body, lm, observed, now)
        # What the pods run from here on: the variant of the placed tier.
        lm = lm.serving(decision.placement.variant)
        rendered = self._render(key, lm, record, decision, observed)
        applied = self._apply(key, body, lm, rendered.desired, observed, now)
        return self._status(key, body, lm, record, decision, rendered, observed, applied, now)

    def _parse(
        self, key: Key, body: Mapping[str, Any], record: ModelRecord, now: datetime
    ) -> LocalModel:
        """The LocalModel, typed and checked, with the status this operator last wrote."""
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
        try:
            lm = with_alias(lm, self.models)
        except InvalidSpecError as exc:
            self._fail(key, body, str(exc), Reason.INVALID_SPEC, now)
            raise
        if record.written is not None:
            # The watch delivers our own status write a moment later; until then the cached body
            # holds the one before it, and conditions would restart their transition times.
            lm = lm.model_copy(update={"status": record.written})
        return lm

    def _observe(self, key: Key, lm: LocalModel) -> Observed:
        """The model's children as the caches have them (with apply answers the watches have
        not delivered yet), the nodes, and what the runtime pods and a running pull report."""
        children = self.caches.children_now(key)
        wanted = (DEPLOYMENT.api_version, DEPLOYMENT.kind, lm.metadata.name)
        deployment = next((c for c in children if ident(c) == wanted), None)
        crds = InstalledCrds(
            service_monitor=self.caches.crd_installed(SERVICE_MONITOR.crd),
            inference_pool=self.caches.crd_installed(INFERENCE_POOL.crd),
        )
        runtime_pods = [c for c in children if c["kind"] == POD.kind and not _is_puller(c)]
        devices = self.devices.devices(key, runtime_pods, lm.spec.serving.port)
        jobs = [(job, _pods_of_job(children, job)) for job in children if job["kind"] == JOB.kind]
        summary = observation(
            deployment=deployment,
            pull_jobs=jobs,
            runtime_pods=runtime_pods,
            service_monitor_crd=crds.service_monitor,
            inference_pool_crd=crds.inference_pool,
            devices=devices,
            progress=self._pull_progress(key, jobs),
        )
        return Observed(children, deployment, self.caches.nodes(), crds, summary)

    def _pull_progress(self, key: Key, jobs: list[tuple[Object, list[Object]]]) -> dict[str, str]:
        """What a running pull printed last (read from the puller's log), by Job name: the
        newest running Job's, one log read at most (an older one is on its way out)."""
        running = [
            (job, pod)
            for job, pods in jobs
            if _pulling(job)
            for pod in pods
            if (pod.get("status") or {}).get("phase") == "Running"
        ]
        if not running:
            return {}
        job, pod = max(running, key=lambda r: str(r[0]["metadata"].get("creationTimestamp", "")))
        read = pull_progress(
            self.kube.pod_log_tail(key[0], pod["metadata"]["name"], PULL_CONTAINER)
        )
        return {} if read is None else {job["metadata"]["name"]: read}

    def _place(
        self, key: Key, body: Mapping[str, Any], lm: LocalModel, observed: Observed, now: datetime
    ) -> Decision:
        """The tier (``place.decide``), with a timer for when pods will have waited
        ``fallbackAfter``."""
        pod_requests = requests_by_tier(lm)
        try:
            decision = decide(
                lm.spec,
                observed.nodes,
                self.catalog,
                recorded_tier_of(lm.spec, observed.deployment),
                observed.observation,
                now,
                pod_requests=pod_requests,
            )
        except NoServableTier as exc:
            self._fail(key, body, f"spec.hardware: {exc}", Reason.INVALID_SPEC, now)
            raise InvalidSpecError(str(exc)) from exc
        if decision.stepped_down is not None:
            metrics.FALLBACKS.inc()
        if decision.decide_again_in is not None:
            self.queue.schedule(key, decision.decide_again_in)
        return decision

    def _render(
        self,
        key: Key,
        lm: LocalModel,
        record: ModelRecord,
        decision: Decision,
        observed: Observed,
    ) -> Rendered:
        """The children to apply, each stamped with its hash: on the image the rollout budget
        allows, held at zero replicas while the first pull runs."""
        placement, rollout_wait = self.rollouts.admit(
            key, lm, decision.placement, observed.deployment
        )
        # Only a Volume cache is pulled before its pods start; sizing PerPod pods from what their
        # own init containers pulled would roll them, and so pull again.
        sized_by_pull = lm.spec.cache.mode is CacheMode.VOLUME
        options = RenderOptions(
            service_monitor_supported=observed.crds.service_monitor,
            inference_pool_supported=observed.crds.inference_pool,
            cluster_domain=self.settings.cluster_domain,
            model_size_bytes=pulled_size(lm) if sized_by_pull else None,
            metrics_from=tuple(self.settings.metrics_from),
            token_realm_hosts=tuple(self.settings.token_realm_hosts),
        )
        job_name = pull_job_name(lm, placement, options)
        obs = observed.observation.for_pull_job(job_name)
        job = obs.pull_job
        if job is not None and job.finished is None and job.active:
            self.queue.schedule(key, PROGRESS_SECONDS)
        # The pulled size sizes the pods from their first start (no rollout once status has it),
        # and no server starts (and crash-loops) before its model volume is filled.
        size = obs.model.size_bytes if obs.model and sized_by_pull else None
        hold = _first_pull_running(obs, job_name)
        options = replace(
            options,
            model_size_bytes=size or options.model_size_bytes,
            hold_replicas=hold,
            wake_replicas=not hold and _left_at_zero(lm, obs, observed.children),
        )
        desired = self._stamped(record, lm, placement, options)
        return Rendered(desired, placement, obs, rollout_wait, job_name)

    def _stamped(
        self, record: ModelRecord, lm: LocalModel, placement: Placement, options: RenderOptions
    ) -> list[Object]:
        """``render``, with the tier noted on the Deployment and every object's hash.

        Rendering (the runtime config's YAML, every object's digest) is most of a pass's own
        work, and most passes (a pod became ready, a Deployment's status moved) find the same
        LocalModel, placement and options as the last one: that result is reused.
        """
        rendered_for = (record.seen, placement, options)  # compared: Placement holds dicts
        if record.rendered is not None and record.rendered[0] == rendered_for:
            reused: list[Object] = json.loads(record.rendered[1])
            return reused
        desired = render(lm, placement, options)
        for obj in desired:
            if obj["kind"] == DEPLOYMENT.kind:
                record_tier(obj, lm.spec, placement)
        stamped = [with_hash(obj) for obj in desired]
        record.rendered = (rendered_for, json.dumps(stamped, separators=(",", ":")).encode())
        return stamped

    def _apply(
        self,
        key: Key,
        body: Mapping[str, Any],
        lm: LocalModel,
        desired: list[Object],
        observed: Observed,
        now: datetime,
    ) -> Applied:
        """Apply what differs from the live children, prune what is no longer rendered."""
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
        applied = Applied(applied=list(result.applied))
        for child in result.applied:
            live = result.live.get(child)
            if live is not None:
                applied.answers[child] = {**live, "apiVersion": child[0], "kind": child[1]}
                self.caches.remember(key, applied.answers[child])
        owned = [c for c in observed.children if c["kind"] != POD.kind]
        applied.pruned = prune_children(self.kube, lm.metadata.uid, desired, owned, CHILD_KINDS)
        metrics.WRITES.inc(len(applied.applied) + len(applied.pruned))
        return applied

    def _status(
        self,
        key: Key,
        body: Mapping[str, Any],
        lm: LocalModel,
        record: ModelRecord,
        decision: Decision,
        rendered: Rendered,
        observed: Observed,
        applied: Applied,
        now: datetime,
    ) -> LocalModelStatus:
        """Compute the status from what the API server has now, and write it when it changed;
        a pass that applied children leaves it to the next pass, once."""
        obs = _with_answers(rendered.observation, applied.answers, lm, observed.children)
        status = compute_status(
            lm,
            rendered.placement,
            obs,
            now=now,
            endpoint=endpoint(lm, self.settings.cluster_domain),
            selector=selector_string(lm),
            rollout_wait=rendered.rollout_wait,
        )
        if decision.stepped_down is not None:
            status.fallback_reason = decision.stepped_down
        elif applied.applied and not record.deferred:
            # Children just applied change soon (a new Deployment's pods start). The next pass,
            # queued behind the models already waiting, also takes in what happens meanwhile (in
            # a burst of new models, their pods becoming ready), which saves a status write.
            # Once only, so that a child applied on every pass still gets its model a status.
            record.deferred = True
            self.queue.enqueue(key, cause="applied")
            return status
        record.deferred = False
        if self._write_status(key, record, lm.status, status):
            if decision.stepped_down is not None:
                self.kube.post_event(
                    body,
                    reason=Reason.FELL_BACK.value,
                    message=f"moved to {rendered.placement.device.value}: {decision.stepped_down}",
                    warning=True,
                )
            chosen = variant_choice(lm.status, status, rendered.placement)
            if chosen is not None:
                self.kube.post_event(body, reason=VARIANT_SELECTED, message=chosen)
            fell_back = runtime_fallback(lm.status, status)
            if fell_back is not None:
                self.kube.post_event(
                    body, reason=Reason.RUNTIME_FELL_BACK.value, message=fell_back, warning=True
                )
        metrics.observe_model(key, status)
        return status

    # --- status writes ------------------------------------------------------------------------

    def _write_status(
        self, key: Key, record: ModelRecord, stored: LocalModelStatus, status: LocalModelStatus
    ) -> bool:
        """Patch status when it differs from what is stored (or was last written)."""
        patch = status_patch(record.written or stored, status)
        if patch is None:
            return False
        self.kube.patch_status(key[0], key[1], patch)
        metrics.WRITES.inc()
        record.written = status
        return True

    def _fail(
        self, key: Key, body: Mapping[str, Any], message: str, reason: Reason, now: datetime
    ) -> None:
        """Failed status for a spec that cannot work, built without a parsed model."""
        self.rollouts.release(key)
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
        record = self._records.setdefault(key, ModelRecord())
        if self._write_status(key, record, previous, status):
            self.kube.post_event(body, reason=reason.value, message=message, warning=True)
        metrics.observe_model(key, status)


def _with_answers(
    obs: Observation, answers: Mapping[Ident, Object], lm: LocalModel, children: list[Object]
) -> Observation:
    """Status follows what the API server answered, not what was read before the applies: a
    Deployment just released from its hold already asks for its replicas."""
    deployment = answers.get((DEPLOYMENT.api_version, DEPLOYMENT.kind, lm.metadata.name))
    job = next((a for (_, kind, _), a in answers.items() if kind == JOB.kind), None)
    return obs.with_applied(
        deployment_summary(deployment) if deployment is not None else None,
        pull_job_seen(job, _pods_of_job(children, job)) if job is not None else None,
    )


def _pods_of_job(children: list[Object], job: Mapping[str, Any]) -> list[Object]:
    name = job["metadata"]["name"]
    return [
        c
        for c in children
        if c["kind"] == POD.kind
        and _is_puller(c)
        and (c["metadata"].get("labels") or {}).get("job-name") == name
    ]


def _pulling(job: Mapping[str, Any]) -> bool:
    """A Job with an active pod and no terminal condition (as its summary reads them)."""
    summary = job_summary(job, ())
    return summary.finished is None and bool(summary.active)


def _namespace_terminating(exc: ApiException) -> bool:
    """Whether the API server refused a write because the object's namespace is being deleted."""
    body = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else str(exc.body)
    return exc.status == 403 and "NamespaceTerminating" in body


def _fingerprint(body: Mapping[str, Any]) -> str:
    """What of a LocalModel a pass reads, other than status: spec generation and metadata."""
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


def _is_puller(pod: Mapping[str, Any]) -> bool:
    labels = pod.get("metadata", {}).get("labels") or {}
    return labels.get(LABEL_COMPONENT) == COMPONENT_PULLER
