"""What every child of a LocalModel shares: names, labels, metadata, the options a render takes,
the runtime config, and the constants of the pods' layout. Pure."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from slm_runtime.config import (
    MODELS_DIR,
    RuntimeConfig,
)
from slm_runtime.sources import (
    Source,
    model_path,
    parse_source,
)

from slm_operator.api import LocalModel
from slm_operator.catalog import DEFAULT_IMAGE
from slm_operator.names import (
    API_VERSION,
    APP_NAME,
    COMPONENT_SERVER,
    KIND,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGER_NAME,
)
from slm_operator.place import Placement

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
    return parse_source(lm.spec.model.served_source, allow_insecure=lm.spec.model.allow_insecure)


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
