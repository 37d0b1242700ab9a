"""Rendering, pure: a LocalModel and its Placement -> every child object, whole, in stable order.

The objects follow ARCHITECTURE.md's names and runtime contract; the operator applies them with
server-side apply and prunes what is no longer rendered. Choices worth knowing:

- Model storage. ``pvc://`` and ``file://`` sources are verify-only whatever the cache mode: the
  claim (or the image's file) is used in place and an init container runs ``slm-runtime pull`` in
  verify mode, so a missing file or a digest mismatch stops the pod with the puller's message.
  Otherwise ``cache.mode`` decides: Volume renders a PVC and a pull Job, PerPod an init container
  pulling into an emptyDir, Image an image volume by digest that must carry the model where the
  puller would have put it (``/model.gguf`` or the ``/model`` folder).
- Hashed names. The PVC's suffix covers what its contents and immutable fields depend on (source,
  sha256, format, size, storage class, access mode). The pull Job's suffix covers the PVC's plus
  the Job's whole pod template, which is immutable too: a new runtime image or a changed node
  selector makes a new Job (the old one is pruned) instead of a 422. The puller skips a model that
  is already present and verified, so a new Job costs one re-hash, not a download.
- The server exits when its model is missing, so while a Volume cache's first pull runs the
  operator can pass ``RenderOptions.hold_replicas`` to render the Deployment at zero replicas.
- Pull pods carry ``app.kubernetes.io/name=slm-puller`` and component ``model-puller``, so neither
  the Service nor the Deployment's selector ever matches them.
- NetworkPolicy. The API, health and metrics share one port and a NetworkPolicy cannot tell paths
  apart, so the API port admits ``allowFrom`` (the namespace when empty) plus
  ``RenderOptions.metrics_from`` (where Prometheus runs). Keep the API itself closed to scrapers
  with ``serving.authSecret``; /metrics stays open without a token.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from slm_runtime.config import (
    CONFIG_DIR,
    CONFIGMAP_KEY,
    ENV_API_TOKEN,
    ENV_HOME,
    ENV_SOURCE_PASSWORD,
    ENV_SOURCE_TOKEN,
    ENV_SOURCE_USERNAME,
    HEALTHZ_PATH,
    METRICS_PATH,
    MODELS_DIR,
    PORT_NAME,
    READYZ_PATH,
    RUNTIME_GID,
    RUNTIME_UID,
    SECRET_KEY_PASSWORD,
    SECRET_KEY_TOKEN,
    SECRET_KEY_USERNAME,
    TERMINATION_LOG_PATH,
    TMP_DIR,
    RuntimeConfig,
    pull_command,
    serve_command,
)
from slm_runtime.cpus import CPU_REQUEST_DIVISOR, ENV_CPU_REQUEST
from slm_runtime.sources import (
    Credentials,
    FileSource,
    OciSource,
    PvcSource,
    Source,
    model_path,
    parse_source,
)

from slm_operator.api import LocalModel
from slm_operator.catalog import DEFAULT_IMAGE
from slm_operator.kinds import (
    CONFIG_MAP,
    DEPLOYMENT,
    HPA,
    INFERENCE_POOL,
    JOB,
    NETWORK_POLICY,
    PDB,
    PVC,
    SERVICE,
    SERVICE_MONITOR,
)
from slm_operator.names import (
    API_VERSION,
    APP_NAME,
    COMPONENT_PULLER,
    COMPONENT_SERVER,
    KIND,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGER_NAME,
)
from slm_operator.place import Placement
from slm_operator.sizing import pod_resources
from slm_operator.spec import CacheMode, EndpointPickerRef, ReclaimPolicy

Object = dict[str, Any]

CONFIG_HASH_ANNOTATION: Final = "slm.dev/config-hash"
"""On the pod template: a digest of the rendered runtime config, so a config change rolls pods."""

DEFAULT_CONTAINER_ANNOTATION: Final = "kubectl.kubernetes.io/default-container"
"""Makes ``kubectl logs`` and ``kubectl exec`` pick the server over the pull init container."""

PULLER_APP_NAME: Final = "slm-puller"
"""``app.kubernetes.io/name`` of pull Job pods: never matched by the Service or Deployment."""

SERVER_CONTAINER: Final = "server"
PULL_CONTAINER: Final = "pull"
"""The pull Job's container and the PerPod / verify init container (summary.py reads it)."""

CONFIG_VOLUME: Final = "config"
MODEL_VOLUME: Final = "model"
TMP_VOLUME: Final = "tmp"
TMP_SIZE_LIMIT: Final = "1Gi"

ENV_ALLOW_INSECURE: Final = "SLM_ALLOW_INSECURE"
"""Read by ``slm-runtime pull``: admit an http:// source the spec allowed."""

ENV_TOKEN_REALM_HOSTS: Final = "SLM_TOKEN_REALM_HOSTS"
"""Read by ``slm-runtime pull`` (pull/registry.py): hosts, besides a registry's own, whose token
service may receive the source credentials (e.g. auth.docker.io for Docker Hub)."""

PULL_RESOURCES: Final = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}
"""The puller streams to disk and hashes as it goes: little memory, no cpu limit."""

JOB_NAME_MAX_LENGTH: Final = 63
"""A Job's name becomes its pods' ``job-name`` label, so the API server allows 63 characters."""
_PULL_INFIX: Final = "-pull-"

PULL_BACKOFF_LIMIT: Final = 4
PULL_BAD_INPUT_EXIT_CODE: Final = 2
"""``slm-runtime pull`` exits 2 on input it can never accept: the Job fails at once."""

STARTUP_PERIOD_SECONDS: Final = 1
STARTUP_FAILURE_THRESHOLD: Final = 900
"""Up to 15 minutes for the model to load before the kubelet restarts the container, looked at
every second, so a model that loads in one turns Ready about a second later (a cold start from
zero replicas waits on it)."""
READINESS_PERIOD_SECONDS: Final = 2
READINESS_FAILURE_THRESHOLD: Final = 3
"""A replica that stops answering /readyz leaves the Service's endpoints within 6 seconds."""
PRESTOP_SLEEP_SECONDS: Final = 5
"""Keeps serving while endpoints drop the pod, before SIGTERM starts the runtime's drain."""
REVISION_HISTORY_LIMIT: Final = 3
PROGRESS_DEADLINE_SECONDS: Final = STARTUP_PERIOD_SECONDS * STARTUP_FAILURE_THRESHOLD + 300
"""Longer than the startup window, so a slow model load is not reported as a failed rollout."""

IN_FLIGHT_METRIC: Final = "slm_runtime_requests_in_flight"


@dataclass(frozen=True)
class RenderOptions:
    """What rendering needs beyond the LocalModel and its placement (settings and observations)."""

    service_monitor_supported: bool = True
    """Whether the monitoring.coreos.com ServiceMonitor CRD is installed."""
    inference_pool_supported: bool = True
    """Whether the inference.networking.k8s.io InferencePool CRD is installed."""
    cluster_domain: str = "cluster.local"
    model_size_bytes: int | None = None
    """The pulled model's size from status, for derived memory requests."""
    pull_image: str | None = None
    """Image of the pull containers; the server's image when None."""
    metrics_from: tuple[Mapping[str, Any], ...] = ()
    """NetworkPolicyPeers (e.g. Prometheus' namespace) also admitted when a policy is enabled."""
    token_realm_hosts: tuple[str, ...] = ()
    """Hosts, besides a registry's own, whose token service the puller may send credentials to."""
    hold_replicas: bool = False
    """Render the Deployment with zero replicas and no HPA or PDB, e.g. while the first pull Job
    fills the model volume, so no server starts (and crash-loops) without its model."""
    wake_replicas: bool = False
    """Render an autoscaled Deployment with one replica: it is at zero (the gateway took it there)
    but its spec no longer lets it be (minReplicas went from 0 to 1 or more), and an HPA does not
    act on a Deployment at zero."""


# --- small pieces -----------------------------------------------------------------------------


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def labels(lm: LocalModel, component: str = COMPONENT_SERVER) -> dict[str, str]:
    """The four standard labels of a child."""
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: lm.metadata.name,
        LABEL_MANAGED_BY: MANAGER_NAME,
        LABEL_COMPONENT: component,
    }


def selector_labels(lm: LocalModel) -> dict[str, str]:
    """The Deployment's (immutable) selector, also the Service's, PDB's and policy's."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: lm.metadata.name}


def selector_string(lm: LocalModel) -> str:
    """The pod selector as a string (``status.selector`` for the scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in selector_labels(lm).items())


def endpoint(lm: LocalModel, cluster_domain: str | None = None) -> str:
    """The in-cluster URL of the API (``http://<lm>.<ns>.svc:<port>``).

    With a cluster domain other than the default the name is fully qualified, since the short
    form relies on the pod's search path.
    """
    host = f"{lm.metadata.name}.{lm.metadata.namespace}.svc"
    if cluster_domain and cluster_domain != "cluster.local":
        host = f"{host}.{cluster_domain}"
    return f"http://{host}:{lm.spec.serving.port}"


def _owner(lm: LocalModel) -> list[Object]:
    return [
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": lm.metadata.name,
            "uid": lm.metadata.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def _metadata(
    lm: LocalModel, name: str, component: str = COMPONENT_SERVER, *, owned: bool = True
) -> Object:
    meta: Object = {
        "name": name,
        "namespace": lm.metadata.namespace,
        "labels": labels(lm, component),
    }
    if owned:
        meta["ownerReferences"] = _owner(lm)
    return meta


def _source(lm: LocalModel) -> Source:
    return parse_source(lm.spec.model.source, allow_insecure=lm.spec.model.allow_insecure)


def _verify_only(source: Source) -> bool:
    return not source.fetched


def model_hash(lm: LocalModel) -> str:
    """Eight hex digits over what the model PVC's contents and immutable fields depend on."""
    spec = lm.spec
    return _digest(
        {
            "source": spec.model.source,
            "sha256": spec.model.sha256,
            "format": spec.model.resolved_format().value,
            "size": spec.cache.size,
            "storageClassName": spec.cache.storage_class_name,
            "accessMode": spec.cache.access_mode.value,
        }
    )[:8]


def pvc_name(lm: LocalModel) -> str:
    """``<lm>-model-<hash8>``."""
    return f"{lm.metadata.name}-model-{model_hash(lm)}"


def image(lm: LocalModel, placement: Placement) -> str:
    """The runtime image: spec.runtime.image, else the placed catalog option's."""
    return lm.spec.runtime.image or placement.image or DEFAULT_IMAGE


def runtime_config(lm: LocalModel, placement: Placement) -> RuntimeConfig:
    """The RuntimeConfig the ConfigMap carries."""
    spec = lm.spec
    model_format = spec.model.resolved_format()
    return RuntimeConfig(
        model_name=lm.metadata.name,
        format=model_format,
        model_path=model_path(_source(lm), model_format, MODELS_DIR),
        source=spec.model.source,
        parameters=spec.parameters,
        system=spec.system,
        template=spec.template,
        parallel=spec.serving.parallel,
        devices=list(placement.devices),
        openvino_device=placement.openvino_device,
        apis=list(spec.serving.apis),
        port=spec.serving.port,
    )


def _pod_security_context() -> Object:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_GID,
        "fsGroup": RUNTIME_GID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security_context() -> Object:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _tmp_volume() -> Object:
    return {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}}


def _tmp_mount() -> Object:
    return {"name": TMP_VOLUME, "mountPath": TMP_DIR}


def _model_mount(*, read_only: bool) -> Object:
    # The API server drops a false readOnly, so only true is written (else every compare drifts).
    mount: Object = {"name": MODEL_VOLUME, "mountPath": MODELS_DIR}
    if read_only:
        mount["readOnly"] = True
    return mount


def _secret_env(name: str, secret: str, key: str, *, optional: bool) -> Object:
    ref: Object = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def _pull_env(lm: LocalModel, source: Source, realm_hosts: Sequence[str]) -> list[Object]:
    """HOME, the insecure opt-in, the trusted token services and the source credentials: only
    the pull container gets these."""
    env: list[Object] = [{"name": ENV_HOME, "value": TMP_DIR}]
    if lm.spec.model.allow_insecure:
        env.append({"name": ENV_ALLOW_INSECURE, "value": "true"})
    if realm_hosts and source.credentials is Credentials.REGISTRY:
        env.append({"name": ENV_TOKEN_REALM_HOSTS, "value": ",".join(realm_hosts)})
    secret = lm.spec.model.credentials_secret
    if secret and source.credentials is not Credentials.NONE:
        # hf and https take a bearer token, so a missing Secret or key is reported by the
        # kubelet; registries accept a token or a username/password pair, so each key is optional.
        token_only = source.credentials is Credentials.TOKEN
        env.append(_secret_env(ENV_SOURCE_TOKEN, secret, SECRET_KEY_TOKEN, optional=not token_only))
        if not token_only:
            env.append(_secret_env(ENV_SOURCE_USERNAME, secret, SECRET_KEY_USERNAME, optional=True))
            env.append(_secret_env(ENV_SOURCE_PASSWORD, secret, SECRET_KEY_PASSWORD, optional=True))
    return env


def _pull_container(
    lm: LocalModel,
    source: Source,
    pull_image: str,
    *,
    model_writable: bool,
    with_model: bool,
    realm_hosts: Sequence[str] = (),
) -> Object:
    spec = lm.spec
    mounts = [_tmp_mount()]
    if with_model:
        mounts.insert(0, _model_mount(read_only=not model_writable))
    return {
        "name": PULL_CONTAINER,
        "image": pull_image,
        "imagePullPolicy": spec.runtime.image_pull_policy.value,
        "command": pull_command(
            spec.model.source,
            MODELS_DIR,
            spec.model.sha256,
            spec.model.resolved_format().value,
        ),
        "env": _pull_env(lm, source, realm_hosts),
        "resources": PULL_RESOURCES,
        "securityContext": _container_security_context(),
        "terminationMessagePath": TERMINATION_LOG_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }


def _node_selector(lm: LocalModel, placement: Placement) -> dict[str, str]:
    # The tier's labels win over the user's: they are what the accelerator needs.
    return dict(sorted({**lm.spec.scheduling.node_selector, **placement.node_selector}.items()))


def _tolerations(lm: LocalModel, placement: Placement) -> list[Object]:
    merged: list[Object] = []
    for toleration in [*placement.tolerations, *lm.spec.scheduling.tolerations]:
        if toleration not in merged:
            merged.append(dict(toleration))
    return merged


def _cpu_request_env() -> Object:
    """The server's cpu request, in millicores, for its default generation thread count.

    Without a cpu limit the container has no quota, and its affinity is every core of the node.
    """
    return {
        "name": ENV_CPU_REQUEST,
        "valueFrom": {
            "resourceFieldRef": {
                "containerName": SERVER_CONTAINER,
                "resource": "requests.cpu",
                "divisor": CPU_REQUEST_DIVISOR,
            }
        },
    }


def _image_pull_secrets(lm: LocalModel) -> list[Object]:
    return [{"name": ref.name} for ref in lm.spec.runtime.image_pull_secrets]


def _set_if(target: Object, key: str, value: Any) -> None:
    if value:
        target[key] = value


# --- objects ----------------------------------------------------------------------------------


def config_map(lm: LocalModel, placement: Placement) -> Object:
    """``<lm>-config``: the RuntimeConfig as YAML under ``config.yaml``."""
    return {
        "apiVersion": CONFIG_MAP.api_version,
        "kind": CONFIG_MAP.kind,
        "metadata": _metadata(lm, f"{lm.metadata.name}-config"),
        "data": {CONFIGMAP_KEY: runtime_config(lm, placement).to_yaml()},
    }


def model_pvc(lm: LocalModel) -> Object:
    """``<lm>-model-<hash8>``; without an owner reference when the reclaim policy is Retain."""
    cache = lm.spec.cache
    spec: Object = {
        "accessModes": [cache.access_mode.value],
        "resources": {"requests": {"storage": cache.size}},
    }
    if cache.storage_class_name is not None:
        spec["storageClassName"] = cache.storage_class_name
    owned = cache.reclaim_policy is not ReclaimPolicy.RETAIN
    return {
        "apiVersion": PVC.api_version,
        "kind": PVC.kind,
        "metadata": _metadata(lm, pvc_name(lm), COMPONENT_PULLER, owned=owned),
        "spec": spec,
    }


def _pull_job_name(lm: LocalModel, job_hash: str) -> str:
    # The longest LocalModel names are cut short; the hash covers the pod labels, which carry
    # the whole name, so two models sharing a prefix still get distinct Jobs.
    room = JOB_NAME_MAX_LENGTH - len(_PULL_INFIX) - len(job_hash)
    return f"{lm.metadata.name[:room]}{_PULL_INFIX}{job_hash}"


def pull_job(lm: LocalModel, placement: Placement, options: RenderOptions) -> Object:
    """``<lm>-pull-<hash8>``: fills the model PVC once; no TTL, so status can read its result.

    ``<lm>`` is cut to its first 49 characters, as the Job's name is limited to 63.
    """
    source = _source(lm)
    scheduling = lm.spec.scheduling
    pod_labels = {**labels(lm, COMPONENT_PULLER), LABEL_NAME: PULLER_APP_NAME}
    pod_spec: Object = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security_context(),
        "containers": [
            _pull_container(
                lm,
                source,
                options.pull_image or image(lm, placement),
                model_writable=True,
                with_model=True,
                realm_hosts=options.token_realm_hosts,
            )
        ],
        "volumes": [
            {"name": MODEL_VOLUME, "persistentVolumeClaim": {"claimName": pvc_name(lm)}},
            _tmp_volume(),
        ],
    }
    # Scheduled like the servers (without their accelerator), so a zonal volume is provisioned
    # where they can mount it.
    _set_if(pod_spec, "nodeSelector", _node_selector(lm, placement))
    _set_if(pod_spec, "tolerations", _tolerations(lm, placement))
    _set_if(pod_spec, "affinity", scheduling.affinity)
    _set_if(pod_spec, "imagePullSecrets", _image_pull_secrets(lm))
    template = {"metadata": {"labels": pod_labels}, "spec": pod_spec}
    job_hash = _digest({"model": model_hash(lm), "template": template})[:8]
    return {
        "apiVersion": JOB.api_version,
        "kind": JOB.kind,
        "metadata": _metadata(lm, _pull_job_name(lm, job_hash), COMPONENT_PULLER),
        "spec": {
            "backoffLimit": PULL_BACKOFF_LIMIT,
            "podFailurePolicy": {
                "rules": [
                    # A pull pod evicted or preempted does not count against backoffLimit.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": PULL_CONTAINER,
                            "operator": "In",
                            "values": [PULL_BAD_INPUT_EXIT_CODE],
                        },
                    },
                ]
            },
            "template": template,
        },
    }


def _model_storage(
    lm: LocalModel,
    source: Source,
    server_image: str,
    pull_image: str,
    realm_hosts: Sequence[str],
) -> tuple[list[Object], list[Object], bool]:
    """(init containers, model volumes, whether the server mounts /models) for the pod."""
    cache = lm.spec.cache
    if isinstance(source, FileSource):
        # The file is inside the server's image, so that image verifies it.
        verify = _pull_container(lm, source, server_image, model_writable=False, with_model=False)
        return [verify], [], False
    if isinstance(source, PvcSource):
        volume = {
            "name": MODEL_VOLUME,
            "persistentVolumeClaim": {"claimName": source.claim, "readOnly": True},
        }
        verify = _pull_container(lm, source, pull_image, model_writable=False, with_model=True)
        return [verify], [volume], True
    if cache.mode is CacheMode.VOLUME:
        volume = {
            "name": MODEL_VOLUME,
            "persistentVolumeClaim": {"claimName": pvc_name(lm), "readOnly": True},
        }
        return [], [volume], True
    if cache.mode is CacheMode.PER_POD:
        volume = {"name": MODEL_VOLUME, "emptyDir": {"sizeLimit": cache.size}}
        pull = _pull_container(
            lm,
            source,
            pull_image,
            model_writable=True,
            with_model=True,
            realm_hosts=realm_hosts,
        )
        # The emptyDir lives on the node's disk: request it so the scheduler accounts for it.
        pull["resources"] = {
            "requests": {**PULL_RESOURCES["requests"], "ephemeral-storage": cache.size},
            "limits": PULL_RESOURCES["limits"],
        }
        return [pull], [volume], True
    if not isinstance(source, OciSource) or source.digest is None:
        raise ValueError(
            "spec.cache.mode: Image needs an oci:// source pinned by digest "
            "(oci://HOST/REPO@sha256:HEX)"
        )
    reference = f"{source.host}/{source.repository}@{source.digest}"
    volume = {"name": MODEL_VOLUME, "image": {"reference": reference, "pullPolicy": "IfNotPresent"}}
    return [], [volume], True


def _server_resources(lm: LocalModel, placement: Placement, options: RenderOptions) -> Object:
    base = pod_resources(lm.spec, options.model_size_bytes)
    requests = {**base.get("requests", {}), **placement.resources}
    limits = {**base.get("limits", {}), **placement.resources}
    resources: Object = {}
    _set_if(resources, "requests", dict(sorted(requests.items())))
    _set_if(resources, "limits", dict(sorted(limits.items())))
    return resources


def _probe(path: str, period: int, failure_threshold: int) -> Object:
    return {
        "httpGet": {"path": path, "port": PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failure_threshold,
    }


def config_hash(config: Mapping[str, Any]) -> str:
    """Digest of the ConfigMap's data; on the pod template so a config change rolls the pods."""
    return _digest(config["data"])[:16]


def deployment(
    lm: LocalModel, placement: Placement, options: RenderOptions, config: Mapping[str, Any]
) -> Object:
    """``<lm>``: the model server pods."""
    spec = lm.spec
    scheduling = spec.scheduling
    source = _source(lm)
    server_image = image(lm, placement)
    init_containers, model_volumes, mounts_model = _model_storage(
        lm, source, server_image, options.pull_image or server_image, options.token_realm_hosts
    )

    env: list[Object] = [{"name": ENV_HOME, "value": TMP_DIR}, _cpu_request_env()]
    if spec.serving.auth_secret:
        env.append(
            _secret_env(ENV_API_TOKEN, spec.serving.auth_secret, SECRET_KEY_TOKEN, optional=False)
        )
    env.extend({"name": k, "value": v} for k, v in sorted(placement.env.items()))

    mounts: list[Object] = [
        {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
        _tmp_mount(),
    ]
    if mounts_model:
        mounts.insert(1, _model_mount(read_only=True))

    drain = runtime_config(lm, placement).limits.drain_timeout_seconds
    grace = PRESTOP_SLEEP_SECONDS + math.ceil(drain) + 10

    server: Object = {
        "name": SERVER_CONTAINER,
        "image": server_image,
        "imagePullPolicy": spec.runtime.image_pull_policy.value,
        "command": serve_command(),
        "ports": [{"name": PORT_NAME, "containerPort": spec.serving.port, "protocol": "TCP"}],
        "env": env,
        "resources": _server_resources(lm, placement, options),
        "startupProbe": _probe(READYZ_PATH, STARTUP_PERIOD_SECONDS, STARTUP_FAILURE_THRESHOLD),
        "readinessProbe": _probe(
            READYZ_PATH, READINESS_PERIOD_SECONDS, READINESS_FAILURE_THRESHOLD
        ),
        "livenessProbe": _probe(HEALTHZ_PATH, 20, 3),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        "securityContext": _container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }

    pod_spec: Object = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security_context(),
        "terminationGracePeriodSeconds": grace,
    }
    _set_if(pod_spec, "initContainers", init_containers)
    pod_spec["containers"] = [server]
    pod_spec["volumes"] = [
        {"name": CONFIG_VOLUME, "configMap": {"name": config["metadata"]["name"]}},
        *model_volumes,
        _tmp_volume(),
    ]
    _set_if(pod_spec, "nodeSelector", _node_selector(lm, placement))
    _set_if(pod_spec, "tolerations", _tolerations(lm, placement))
    _set_if(pod_spec, "affinity", scheduling.affinity)
    _set_if(pod_spec, "topologySpreadConstraints", scheduling.topology_spread_constraints)
    _set_if(pod_spec, "priorityClassName", scheduling.priority_class_name)
    _set_if(pod_spec, "runtimeClassName", placement.runtime_class_name)
    _set_if(pod_spec, "imagePullSecrets", _image_pull_secrets(lm))

    pod_labels = {**scheduling.pod_labels, **labels(lm)}
    annotations = {
        **scheduling.pod_annotations,
        CONFIG_HASH_ANNOTATION: config_hash(config),
        DEFAULT_CONTAINER_ANNOTATION: SERVER_CONTAINER,
    }
    rolling: Object
    if placement.accelerated:
        # A surge pod on a full accelerator node would sit Pending and look like a fallback.
        rolling = {"maxSurge": 0, "maxUnavailable": 1}
    else:
        rolling = {"maxSurge": "25%", "maxUnavailable": 0}

    deployment_spec: Object = {}
    if options.hold_replicas:
        deployment_spec["replicas"] = 0
    elif not spec.autoscaling.enabled:
        deployment_spec["replicas"] = spec.serving.replicas
    elif options.wake_replicas:
        deployment_spec["replicas"] = 1
    deployment_spec.update(
        {
            "revisionHistoryLimit": REVISION_HISTORY_LIMIT,
            "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
            "selector": {"matchLabels": selector_labels(lm)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": rolling},
            "template": {
                "metadata": {
                    "labels": dict(sorted(pod_labels.items())),
                    "annotations": dict(sorted(annotations.items())),
                },
                "spec": pod_spec,
            },
        }
    )
    return {
        "apiVersion": DEPLOYMENT.api_version,
        "kind": DEPLOYMENT.kind,
        "metadata": _metadata(lm, lm.metadata.name),
        "spec": deployment_spec,
    }


def service(lm: LocalModel) -> Object:
    """``<lm>``: ClusterIP in front of the API port."""
    return {
        "apiVersion": SERVICE.api_version,
        "kind": SERVICE.kind,
        "metadata": _metadata(lm, lm.metadata.name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(lm),
            "ports": [
                {
                    "name": PORT_NAME,
                    "port": lm.spec.serving.port,
                    "targetPort": PORT_NAME,
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }


def service_monitor(lm: LocalModel) -> Object:
    """``<lm>``: Prometheus Operator scrape of /metrics on the Service. Every series gets a
    ``localmodel`` label (the LocalModel's name, from the Service's instance label), which the
    chart's PrometheusRule and Grafana dashboard group by."""
    monitoring = lm.spec.monitoring
    metadata = _metadata(lm, lm.metadata.name)
    metadata["labels"] = {**monitoring.labels, **metadata["labels"]}
    instance = "__meta_kubernetes_service_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", LABEL_INSTANCE)
    return {
        "apiVersion": SERVICE_MONITOR.api_version,
        "kind": SERVICE_MONITOR.kind,
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": selector_labels(lm)},
            "endpoints": [
                {
                    "port": PORT_NAME,
                    "path": METRICS_PATH,
                    "interval": monitoring.interval,
                    "relabelings": [{"sourceLabels": [instance], "targetLabel": "localmodel"}],
                }
            ],
        },
    }


def inference_pool(lm: LocalModel, picker: EndpointPickerRef) -> Object:
    """``<lm>``: the model's pods as a Gateway API Inference Extension pool. A conformant gateway
    sends the requests of an HTTPRoute that names the pool to the pod its endpoint picker
    chooses; the picker reads the runtime's queue, running and KV-cache gauges on /metrics."""
    return {
        "apiVersion": INFERENCE_POOL.api_version,
        "kind": INFERENCE_POOL.kind,
        "metadata": _metadata(lm, lm.metadata.name),
        "spec": {
            "selector": {"matchLabels": selector_labels(lm)},
            "targetPorts": [{"number": lm.spec.serving.port}],
            "endpointPickerRef": {
                "kind": "Service",
                "name": picker.name,
                "port": {"number": picker.port},
                "failureMode": picker.failure_mode.value,
            },
        },
    }


def pod_disruption_budget(lm: LocalModel) -> Object:
    """``<lm>``: at most one server down at a time during voluntary disruptions."""
    return {
        "apiVersion": PDB.api_version,
        "kind": PDB.kind,
        "metadata": _metadata(lm, lm.metadata.name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(lm)}},
    }


def horizontal_pod_autoscaler(lm: LocalModel) -> Object:
    """``<lm>``: scales the Deployment on cpu and, with an adapter, on in-flight requests."""
    autoscaling = lm.spec.autoscaling
    metrics: list[Object] = []
    if autoscaling.target_cpu_utilization is not None:
        metrics.append(
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {
                        "type": "Utilization",
                        "averageUtilization": autoscaling.target_cpu_utilization,
                    },
                },
            }
        )
    if autoscaling.target_inflight_requests is not None:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": IN_FLIGHT_METRIC},
                    "target": {
                        "type": "AverageValue",
                        "averageValue": str(autoscaling.target_inflight_requests),
                    },
                },
            }
        )
    spec: Object = {
        "scaleTargetRef": {
            "apiVersion": DEPLOYMENT.api_version,
            "kind": DEPLOYMENT.kind,
            "name": lm.metadata.name,
        },
        "minReplicas": max(1, autoscaling.min_replicas),  # 0 <-> 1 is the gateway's
        "maxReplicas": autoscaling.max_replicas,
    }
    _set_if(spec, "metrics", metrics)
    return {
        "apiVersion": HPA.api_version,
        "kind": HPA.kind,
        "metadata": _metadata(lm, lm.metadata.name),
        "spec": spec,
    }


def network_policy(lm: LocalModel, options: RenderOptions) -> Object:
    """``<lm>``: ingress to the API port from allowFrom (the namespace when empty) and scrapers."""
    policy = lm.spec.serving.network_policy
    peers: list[Object] = [dict(p) for p in policy.allow_from] or [{"podSelector": {}}]
    for peer in options.metrics_from:
        if peer not in peers:
            peers.append(dict(peer))
    return {
        "apiVersion": NETWORK_POLICY.api_version,
        "kind": NETWORK_POLICY.kind,
        "metadata": _metadata(lm, lm.metadata.name),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(lm)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": peers,
                    "ports": [{"protocol": "TCP", "port": lm.spec.serving.port}],
                }
            ],
        },
    }


def _wants_pdb(lm: LocalModel) -> bool:
    if lm.spec.autoscaling.enabled:
        return lm.spec.autoscaling.min_replicas > 1
    return lm.spec.serving.replicas > 1


def _pulls_into_volume(lm: LocalModel) -> bool:
    """A Volume cache that a pull Job fills (a source that is only verified has none)."""
    return lm.spec.cache.mode is CacheMode.VOLUME and not _verify_only(_source(lm))


def pull_job_name(lm: LocalModel, placement: Placement, options: RenderOptions) -> str | None:
    """The name of the pull Job ``render`` makes for this model, or None when it makes none.

    The Job depends on neither the model's size nor the replica hold, so the name is known
    before those are decided.
    """
    if not _pulls_into_volume(lm):
        return None
    name: str = pull_job(lm, placement, options)["metadata"]["name"]
    return name


def render(lm: LocalModel, placement: Placement, options: RenderOptions) -> list[Object]:
    """Every child of ``lm``, in a stable order: ConfigMap, PVC, Job, Deployment, Service, ..."""
    spec = lm.spec
    config = config_map(lm, placement)
    objects: list[Object] = [config]
    if _pulls_into_volume(lm):
        objects += [model_pvc(lm), pull_job(lm, placement, options)]
    objects += [deployment(lm, placement, options, config), service(lm)]
    if spec.monitoring.service_monitor and options.service_monitor_supported:
        objects.append(service_monitor(lm))
    pool = spec.serving.inference_pool
    if pool.enabled and pool.endpoint_picker_ref and options.inference_pool_supported:
        objects.append(inference_pool(lm, pool.endpoint_picker_ref))
    if _wants_pdb(lm) and not options.hold_replicas:
        objects.append(pod_disruption_budget(lm))
    if spec.autoscaling.enabled and not options.hold_replicas:
        objects.append(horizontal_pod_autoscaler(lm))
    if spec.serving.network_policy.enabled:
        objects.append(network_policy(lm, options))
    return objects


def pod_templates(objects: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The pod templates among rendered objects (Deployments and Jobs)."""
    return [o["spec"]["template"] for o in objects if o["kind"] in (DEPLOYMENT.kind, JOB.kind)]
