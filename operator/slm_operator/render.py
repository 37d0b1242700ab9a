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
- The module's parts: ``children`` (names, labels, metadata, the options, the runtime config),
  ``workloads`` (the Deployment and the pull Job), and here the rest and ``render`` itself.
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

import re
from collections.abc import Mapping, Sequence
from typing import Any

from slm_runtime.config import (
    CONFIGMAP_KEY,
    METRICS_PATH,
    PORT_NAME,
)

from slm_operator.api import LocalModel
from slm_operator.children import (
    IN_FLIGHT_METRIC,
    Object,
    RenderOptions,
    _metadata,
    _source,
    _verify_only,
    pvc_name,
    runtime_config,
    selector_labels,
)
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
    COMPONENT_PULLER,
    LABEL_INSTANCE,
)
from slm_operator.place import Placement
from slm_operator.spec import CacheMode, EndpointPickerRef, ReclaimPolicy
from slm_operator.workloads import _set_if, deployment, pull_job


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
    lm = lm.serving(placement.variant)
    if not _pulls_into_volume(lm):
        return None
    name: str = pull_job(lm, placement, options)["metadata"]["name"]
    return name


def render(lm: LocalModel, placement: Placement, options: RenderOptions) -> list[Object]:
    """Every child of ``lm``, in a stable order: ConfigMap, PVC, Job, Deployment, Service, ...

    The pods pull and run the placed tier's variant (``placement.variant``)."""
    lm = lm.serving(placement.variant)
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
