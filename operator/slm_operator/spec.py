"""``spec``: what a LocalModel asks for, as pydantic models; the CRD is generated from them.

Pure: imports neither kopf nor a Kubernetes client.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import (
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict
from slm_runtime.config import Api, Device, ModelParameters

from slm_operator.fields import (
    Annotations,
    ApiModel,
    Duration,
    Labels,
    ObjectName,
    PositiveQuantity,
    Quantity,
    RawObject,
    SpreadConstraint,
    cel,
    quantity_value,
)
from slm_operator.names import DNS1035_PATTERN
from slm_operator.variants import ModelSpec, missing_tiers, pinned_oci

# --- spec -------------------------------------------------------------------------------------


class CacheMode(StrEnum):
    """How the model gets onto the node before the server starts."""

    VOLUME = "Volume"
    PER_POD = "PerPod"
    IMAGE = "Image"


class AccessMode(StrEnum):
    """PersistentVolume access modes for the model cache."""

    READ_WRITE_ONCE = "ReadWriteOnce"
    READ_WRITE_MANY = "ReadWriteMany"
    READ_ONLY_MANY = "ReadOnlyMany"
    READ_WRITE_ONCE_POD = "ReadWriteOncePod"


class ReclaimPolicy(StrEnum):
    """What happens to the model PVC when the LocalModel is deleted."""

    DELETE = "Delete"
    RETAIN = "Retain"


class PullPolicy(StrEnum):
    """Container image pull policy."""

    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class CacheSpec(ApiModel):
    """How the model is pre-pulled so it is on the node before the server starts."""

    mode: CacheMode = Field(
        default=CacheMode.VOLUME,
        description="Volume: a PVC filled once by a pull Job and mounted read-only. PerPod: an "
        "init container pulls into an emptyDir. Image: an OCI image volume (source must be "
        "oci://...@sha256:...).",
    )
    size: PositiveQuantity = Field(
        default="5Gi", description="PVC size (Volume) or emptyDir size limit (PerPod)."
    )
    storage_class_name: str | None = Field(
        default=None,
        max_length=253,
        description="StorageClass of the PVC; unset uses the cluster default, empty string "
        "binds only to PVs without a class.",
    )
    access_mode: AccessMode = Field(
        default=AccessMode.READ_WRITE_ONCE,
        description="PVC access mode; use ReadWriteMany or ReadOnlyMany when replicas span nodes.",
    )
    reclaim_policy: ReclaimPolicy = Field(
        default=ReclaimPolicy.DELETE,
        description="Delete: the PVC goes with the LocalModel. Retain: the PVC is kept (no "
        "owner reference) and reused by a LocalModel with the same source and digest.",
    )


class HardwareSpec(ApiModel):
    """Hardware preference and fallback, NPU -> GPU -> CPU."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.fallback) || !has(self.preferred) || "
                    "!self.fallback.exists(t, t == self.preferred)",
                    "spec.hardware.fallback must not repeat spec.hardware.preferred",
                    ".fallback",
                )
            ]
        }
    )

    preferred: Device = Field(default=Device.NPU, description="The tier to try first.")
    fallback: list[Device] = Field(
        default_factory=list,
        max_length=len(Device) - 1,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Tiers tried in order when the preferred one cannot be placed; when omitted, "
        f"the tiers below preferred in {', '.join(Device)} order. [] means no fallback.",
    )
    fallback_after: Duration = Field(
        default="120s",
        description="How long pods may stay unschedulable before stepping down a tier.",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_fallback(cls, data: Any) -> Any:
        # Not a schema default: a fixed [gpu, cpu] would repeat `preferred: gpu`.
        if isinstance(data, dict) and "fallback" not in data:
            try:
                preferred = Device(data.get("preferred", Device.NPU))
            except ValueError:
                return data  # the field validator names the bad tier
            order = list(Device)
            return {**data, "fallback": order[order.index(preferred) + 1 :]}
        return data

    @model_validator(mode="after")
    def _fallback_distinct(self) -> HardwareSpec:
        if self.preferred in self.fallback:
            raise ValueError(
                f"fallback must not repeat preferred ({self.preferred.value}); "
                f"remove it from spec.hardware.fallback"
            )
        if len(set(self.fallback)) != len(self.fallback):
            raise ValueError("fallback lists a tier twice; list each tier once")
        return self

    def tiers(self) -> list[Device]:
        """The tiers to try, in order."""
        return [self.preferred, *self.fallback]


class NetworkPolicySpec(ApiModel):
    """Optional NetworkPolicy in front of the model server."""

    enabled: bool = Field(default=False, description="Create a NetworkPolicy for the pods.")
    allow_from: list[RawObject] = Field(
        default_factory=list,
        max_length=32,
        description="NetworkPolicyPeer list allowed to reach the API port; empty allows the "
        "namespace only. The metrics port stays reachable.",
    )


class FailureMode(StrEnum):
    """What a gateway does with a request when the endpoint picker does not answer."""

    FAIL_CLOSE = "FailClose"
    FAIL_OPEN = "FailOpen"


class EndpointPickerRef(ApiModel):
    """The endpoint picker a gateway asks which pod of the pool takes each request."""

    name: str = Field(
        pattern=DNS1035_PATTERN,
        max_length=63,
        description="Service of the endpoint picker, in the LocalModel's namespace (deployed by "
        "you; the operator ships none).",
    )
    port: int = Field(default=9002, ge=1, le=65535, description="Its ext-proc (gRPC) port.")
    failure_mode: FailureMode = Field(
        default=FailureMode.FAIL_CLOSE,
        description="FailClose refuses a request the picker does not place; FailOpen sends it "
        "to any pod of the pool.",
    )


class InferencePoolSpec(ApiModel):
    """An InferencePool (Gateway API Inference Extension) over the model's pods."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.enabled) || !self.enabled || has(self.endpointPickerRef)",
                    "spec.serving.inferencePool.enabled needs endpointPickerRef: name the "
                    "Service of the endpoint picker your gateway uses",
                    ".endpointPickerRef",
                )
            ]
        }
    )

    enabled: bool = Field(
        default=False,
        description="Create an InferencePool (inference.networking.k8s.io/v1) when its CRD exists.",
    )
    endpoint_picker_ref: EndpointPickerRef | None = Field(
        default=None, description="The pool's endpoint picker; required when enabled."
    )

    @model_validator(mode="after")
    def _enabled_needs_picker(self) -> InferencePoolSpec:
        if self.enabled and self.endpoint_picker_ref is None:
            raise ValueError(
                "inferencePool.enabled needs endpointPickerRef: name the Service of the "
                "endpoint picker your gateway uses"
            )
        return self


class ServingSpec(ApiModel):
    """How the model is served."""

    replicas: int = Field(
        default=1, ge=0, le=1000, description="Pods; ignored while autoscaling is enabled."
    )
    port: int = Field(default=8080, ge=1024, le=65535, description="API port (non-root).")
    parallel: int = Field(default=4, ge=1, le=64, description="Concurrent sequences per replica.")
    apis: list[Api] = Field(
        default_factory=lambda: [Api.OLLAMA, Api.OPENAI],
        min_length=1,
        max_length=2,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="API families to serve.",
    )
    auth_secret: ObjectName | None = Field(
        default=None,
        description="Secret with key `token`; API requests without `Authorization: Bearer "
        "<token>` get 401. Health and metrics stay open.",
    )
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)
    inference_pool: InferencePoolSpec = Field(default_factory=InferencePoolSpec)

    @field_validator("apis")
    @classmethod
    def _apis_distinct(cls, value: list[Api]) -> list[Api]:
        if len(set(value)) != len(value):
            raise ValueError("apis lists an API twice; list each once")
        return value


class ResourceList(ApiModel):
    """cpu and memory quantities."""

    cpu: Quantity | None = Field(default=None, description="CPU cores, e.g. 500m or 4.")
    memory: Quantity | None = Field(default=None, description="Memory, e.g. 4Gi.")
    ephemeral_storage: Quantity | None = Field(
        default=None, alias="ephemeral-storage", description="Local scratch disk, e.g. 1Gi."
    )


def _request_within_limit(name: str) -> JsonDict:
    """CEL: requests.NAME <= limits.NAME where both are set (names escaped as Kubernetes does)."""
    field = name.replace("-", "__dash__")
    request, limit = f"self.requests.{field}", f"self.limits.{field}"
    path = f".requests.{name}" if field == name else f".requests['{name}']"
    return cel(
        f"!has(self.requests) || !has(self.limits) || !has({request}) || !has({limit}) || "
        f"!isQuantity(string({request})) || "
        f"!isQuantity(string({limit})) || "
        f"quantity(string({request})).compareTo(quantity(string({limit}))) <= 0",
        f"requests.{name} must be at most limits.{name}; raise the limit or lower the request",
        path,
    )


class ResourcesSpec(ApiModel):
    """Container requests and limits; derived from the model when empty."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _request_within_limit(name) for name in ("cpu", "memory", "ephemeral-storage")
            ]
        }
    )

    requests: ResourceList = Field(
        default_factory=ResourceList,
        description="Requests of the model server container. Where neither a request nor a "
        "limit sets it, cpu is parameters.numThread cores (else 1) and memory is the model size "
        "+ KV cache (contextLength x parallel) + runtime overhead.",
    )
    limits: ResourceList = Field(
        default_factory=ResourceList,
        description="Limits of the model server container. A derived memory request is also "
        "the memory limit; cpu has no limit unless set, so generation can use idle cores.",
    )

    @model_validator(mode="after")
    def _requests_within_limits(self) -> ResourcesSpec:
        requests = self.requests.model_dump(by_alias=True, exclude_none=True)
        for name, limit in self.limits.model_dump(by_alias=True, exclude_none=True).items():
            request = requests.get(name)
            if request is not None and quantity_value(request) > quantity_value(limit):
                raise ValueError(
                    f"requests.{name} ({request}) is above limits.{name} ({limit}); "
                    "raise the limit or lower the request"
                )
        return self


class SchedulingSpec(ApiModel):
    """Where pods may run, on top of what the hardware tier requires."""

    node_selector: Labels = Field(default_factory=dict, description="Extra node labels.")
    tolerations: list[RawObject] = Field(
        default_factory=list,
        max_length=64,
        description="Kubernetes Toleration list, added to the hardware tier's own tolerations.",
    )
    affinity: RawObject = Field(
        default_factory=dict,
        description="Kubernetes Affinity (nodeAffinity, podAffinity, podAntiAffinity) for the "
        "pods, as is.",
    )
    topology_spread_constraints: list[SpreadConstraint] = Field(
        default_factory=list,
        max_length=16,
        description="Kubernetes TopologySpreadConstraint list for the model server pods, as is.",
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the pods."
    )
    pod_labels: Labels = Field(default_factory=dict, description="Extra labels on the pods.")
    pod_annotations: Annotations = Field(
        default_factory=dict, description="Extra annotations on the pods."
    )


class MonitoringSpec(ApiModel):
    """Prometheus scraping."""

    service_monitor: bool = Field(
        default=True,
        description="Create a ServiceMonitor when the monitoring.coreos.com CRD exists.",
    )
    interval: Duration = Field(default="30s", description="Scrape interval.")
    labels: Labels = Field(default_factory=dict, description="Extra labels on the ServiceMonitor.")


class AutoscalingSpec(ApiModel):
    """HorizontalPodAutoscaler; when enabled it owns the replica count."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    # has(): the API server also checks the `{}` default, before its defaults.
                    "!has(self.minReplicas) || !has(self.maxReplicas) || "
                    "self.minReplicas <= self.maxReplicas",
                    "spec.autoscaling.minReplicas must be <= maxReplicas",
                    ".minReplicas",
                ),
                cel(
                    "!has(self.minReplicas) || self.minReplicas > 0 || "
                    "(has(self.enabled) && self.enabled)",
                    "spec.autoscaling.minReplicas 0 (scale to zero) needs "
                    "spec.autoscaling.enabled: true",
                    ".minReplicas",
                ),
            ]
        }
    )

    enabled: bool = Field(default=False, description="Create an HPA for the Deployment.")
    min_replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Fewest replicas; at most maxReplicas. 0 lets the model go to zero replicas "
        "after scaleToZeroAfter without a request through the gateway, which holds the next "
        "request while it scales the model back to 1 (the HPA keeps at least 1 while it runs).",
    )
    scale_to_zero_after: Duration = Field(
        default="15m",
        description="With minReplicas 0: how long a model may go without a request before the "
        "gateway scales it to zero.",
    )
    max_replicas: int = Field(default=4, ge=1, le=1000, description="Most replicas the HPA adds.")
    target_cpu_utilization: int | None = Field(
        default=80,
        ge=1,
        le=100,
        description="Average CPU utilisation (percent of requests) to keep; works out of the box. "
        "null drops the CPU metric.",
    )
    target_inflight_requests: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Average in-flight requests per pod (metric slm_runtime_requests_in_flight); "
        "needs a custom-metrics adapter such as prometheus-adapter.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas ({self.min_replicas}) must be <= maxReplicas ({self.max_replicas})"
            )
        if self.min_replicas == 0 and not self.enabled:
            raise ValueError(
                "spec.autoscaling.minReplicas 0 (scale to zero) needs spec.autoscaling.enabled: "
                "true"
            )
        return self

    @property
    def scales_to_zero(self) -> bool:
        """Whether the gateway may take the model to zero replicas."""
        return self.enabled and self.min_replicas == 0


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace."""

    name: ObjectName = Field(description="Name of the object.")


class RuntimeSpec(ApiModel):
    """The runtime image; the accelerator catalog's per-tier image unless overridden."""

    image: str | None = Field(
        default=None,
        max_length=1024,
        description="Overrides the catalog's image for every tier. It must be one of the "
        "catalog's runtime images unless the operator is installed with "
        "runtime.allowCustomImages: true.",
    )
    image_pull_policy: PullPolicy = Field(
        default=PullPolicy.IF_NOT_PRESENT, description="Pull policy of the runtime image."
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list,
        max_length=16,
        description="Secrets (type kubernetes.io/dockerconfigjson) for pulling the runtime image.",
    )


def _implied_fallback(preferred: str) -> str:
    """CEL: the tiers below ``preferred`` in the device order (the fallback when omitted)."""
    order = list(Device)
    expression = "[]"
    for index in reversed(range(len(order) - 1)):
        below = ", ".join(f"'{d.value}'" for d in order[index + 1 :])
        expression = f"({preferred} == '{order[index].value}' ? [{below}] : {expression})"
    return expression


_OCI_DIGEST = "({s}.startsWith('oci://') && {s}.contains('@sha256:'))"
_TIERS_NEED_VARIANTS = (
    "spec.model.variants: every tier in spec.hardware.preferred and fallback needs a variant "
    "(with fallback omitted, the tiers below preferred are its fallback); add the tier to a "
    "variant's tiers, or set spec.hardware to the tiers your variants serve."
)


class LocalModelSpec(ApiModel):
    """The desired state of a LocalModel."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    # An alias alone is checked by the operator, against the catalog's variants.
                    "self.cache.mode != 'Image' || (has(self.model.source) ? "
                    f"{_OCI_DIGEST.format(s='self.model.source')} : "
                    f"(!has(self.model.variants) || self.model.variants.all(v, "
                    f"{_OCI_DIGEST.format(s='v.source')})))",
                    "spec.cache.mode Image needs an oci:// source pinned by digest "
                    "(oci://HOST/REPO@sha256:HEX) for the model and each of its variants",
                    ".cache.mode",
                ),
                cel(
                    f"!has(self.model.variants) || ([self.hardware.preferred] + "
                    f"(has(self.hardware.fallback) ? self.hardware.fallback : "
                    f"{_implied_fallback('self.hardware.preferred')})).all(t, "
                    "self.model.variants.exists(v, t in v.tiers))",
                    _TIERS_NEED_VARIANTS,
                    ".model.variants",
                ),
            ]
        }
    )

    model: ModelSpec
    cache: CacheSpec = Field(default_factory=CacheSpec)
    hardware: HardwareSpec = Field(default_factory=HardwareSpec)
    parameters: ModelParameters = Field(
        default_factory=ModelParameters,
        description="Ollama Modelfile PARAMETERs; defaults for every request.",
    )
    system: str | None = Field(
        default=None, max_length=65536, description="Modelfile SYSTEM message."
    )
    template: str | None = Field(
        default=None,
        max_length=65536,
        description="Modelfile TEMPLATE in Ollama's Go-template form; the model's own chat "
        "template when omitted.",
    )
    serving: ServingSpec = Field(default_factory=ServingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)

    @model_validator(mode="after")
    def _image_mode_needs_digest(self) -> LocalModelSpec:
        if self.cache.mode is CacheMode.IMAGE and not all(
            pinned_oci(v.source) for v in self.model.served_variants()
        ):
            raise ValueError(
                "cache.mode Image needs an oci:// source pinned by digest "
                "(oci://HOST/REPO@sha256:HEX) for the model and each of its variants"
            )
        return self

    @model_validator(mode="after")
    def _tiers_have_variants(self) -> LocalModelSpec:
        if self.model.variants and (missing := missing_tiers(self.model, self.hardware.tiers())):
            raise ValueError(
                f"{_TIERS_NEED_VARIANTS.removeprefix('spec.').removesuffix('.')} (no variant "
                "serves "
                f"{', '.join(t.value for t in missing)})"
            )
        return self
