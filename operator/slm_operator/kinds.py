"""Every kind the operator reads or writes, in one table: its API group and version, its REST
path, and which are a LocalModel's children (render.py makes them, the controller applies,
watches and prunes them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from slm_operator.names import GROUP, PLURAL, VERSION


@dataclass(frozen=True)
class Kind:
    """One API kind: where it lives in the REST tree."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def crd(self) -> str:
        """The name of the CustomResourceDefinition that would define this kind."""
        return f"{self.plural}.{self.api_version.split('/')[0]}"

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """The collection or item path."""
        group_version = self.api_version
        prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        parts = [prefix]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name:
            parts.append(name)
        return "/".join(parts)


CONFIG_MAP: Final = Kind("v1", "ConfigMap", "configmaps")
PVC: Final = Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims")
SERVICE: Final = Kind("v1", "Service", "services")
POD: Final = Kind("v1", "Pod", "pods")
NODE: Final = Kind("v1", "Node", "nodes", namespaced=False)
EVENT: Final = Kind("v1", "Event", "events")
JOB: Final = Kind("batch/v1", "Job", "jobs")
DEPLOYMENT: Final = Kind("apps/v1", "Deployment", "deployments")
PDB: Final = Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
HPA: Final = Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
NETWORK_POLICY: Final = Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies")
SERVICE_MONITOR: Final = Kind("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors")
INFERENCE_POOL: Final = Kind("inference.networking.k8s.io/v1", "InferencePool", "inferencepools")
LOCAL_MODEL: Final = Kind(f"{GROUP}/{VERSION}", "LocalModel", PLURAL)
CRD: Final = Kind(
    "apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", False
)

CHILD_KINDS: Final = (
    CONFIG_MAP,
    PVC,
    JOB,
    DEPLOYMENT,
    SERVICE,
    SERVICE_MONITOR,
    INFERENCE_POOL,
    PDB,
    HPA,
    NETWORK_POLICY,
)
"""Every kind render.py may produce, in apply order (config and storage before workloads)."""

OPTIONAL_KINDS: Final = (SERVICE_MONITOR, INFERENCE_POOL)
"""Child kinds whose CRD may be absent, or come and go while the operator runs."""

KINDS_BY_KEY: Final = {(k.api_version, k.kind): k for k in (*CHILD_KINDS, POD, NODE, EVENT)}


def kind_of(obj: Mapping[str, Any]) -> Kind:
    """The Kind entry for an object."""
    return KINDS_BY_KEY[(obj["apiVersion"], obj["kind"])]
