"""ServiceMonitors scraped for real, and the chart's alerts loaded by a real Prometheus.

The Prometheus Operator and a Prometheus run on node-0 (tests/cluster/monitoring.py). The chart
is installed with its ServiceMonitor, PrometheusRule and Grafana dashboard turned on; its
operator runs in the cluster from the operator image and renders a ServiceMonitor for a model
served on node-0. After one request, Prometheus has the model's token counter, labelled with the
LocalModel's name, through that ServiceMonitor; it also scrapes the operator's per-model status
and has loaded the chart's alerting rules.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .conftest import REAL_NODE, REAL_NODE_SCHEDULING, TINY_ONNX, Cluster
from .monitoring import Monitoring, PrometheusAPI, monitoring_stack
from .operator_run import wait_for
from .test_install import CHART, operator_pod, phase, restricted

RELEASE = "slm-monitored"


@pytest.fixture(scope="module")
def monitoring(cluster: Cluster) -> Iterator[Monitoring]:
    with monitoring_stack(cluster) as stack:
        yield stack


@pytest.fixture
def installed(
    cluster: Cluster, crds: list[str], monitoring: Monitoring, namespace: str
) -> Iterator[str]:
    """The chart in ``namespace``, watching it, with every monitoring object turned on (the
    PrometheusRule needs the Prometheus Operator's CRDs)."""
    restricted(cluster, namespace)
    try:
        cluster.helm(
            "install", RELEASE, str(CHART), "--namespace", namespace, "--wait",
            "--timeout", "180s", "--set", "crds.enabled=false",
            "--set", f"watchNamespaces={{{namespace}}}",
            "--set", "rbac.aggregateToDefaultRoles=false",
            "--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.interval=5s",
            "--set", "prometheusRule.enabled=true", "--set", "grafanaDashboard.enabled=true",
        )  # fmt: skip
        operator_pod(cluster, namespace, RELEASE)
        yield namespace
    finally:
        cluster.helm("uninstall", RELEASE, "--namespace", namespace, check=False)


def series(prometheus: PrometheusAPI, promql: str) -> list[dict[str, Any]]:
    """The query's vector, or an empty list."""
    return prometheus.query(promql)


def test_prometheus_scrapes_a_models_tokens_and_the_operator_and_loads_the_rules(
    cluster: Cluster, monitoring: Monitoring, installed: str, fixtures_claim: str
) -> None:
    namespace = installed
    cluster.apply(
        {
            "apiVersion": "slm.dev/v1alpha1",
            "kind": "LocalModel",
            "metadata": {"name": "watched"},
            "spec": {
                "model": {"source": f"pvc://{fixtures_claim}/{TINY_ONNX.name}", "format": "onnx"},
                "hardware": {"preferred": "cpu", "fallback": []},
                "parameters": {"numPredict": 4, "temperature": 0},
                "serving": {"parallel": 1},
                # Set, not estimated: no resize (and second pod) once the model's size is known.
                "resources": {
                    "requests": {"cpu": "50m", "memory": "256Mi"},
                    "limits": {"memory": "1Gi"},
                },
                "monitoring": {"serviceMonitor": True, "interval": "5s"},
                "scheduling": REAL_NODE_SCHEDULING,
            },
        },
        namespace,
    )
    wait_for(lambda: phase(cluster, namespace, "watched") == "Ready", timeout=240,
             what="the watched model Ready", interval=0.5)  # fmt: skip
    monitor = cluster.get("servicemonitor", "watched", namespace)
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "watched"
    (pod,) = json.loads(
        cluster.kubectl("get", "pods", "-l", "app.kubernetes.io/instance=watched", "-o", "json",
                        namespace=namespace).stdout
    )["items"]  # fmt: skip
    assert pod["spec"]["nodeName"] == REAL_NODE

    # Prometheus finds the model's pod through the ServiceMonitor the operator rendered.
    prometheus = monitoring.start_prometheus()
    pool = f"serviceMonitor/{namespace}/watched/0"

    def target() -> dict[str, Any] | None:
        active = prometheus.get("/api/v1/targets", state="active")["activeTargets"]
        return next((t for t in active if t["scrapePool"] == pool and t["health"] == "up"), None)

    found = wait_for(target, timeout=120, what=f"an up target in {pool}", interval=1)
    assert found["labels"]["localmodel"] == "watched"
    assert found["labels"]["pod"] == pod["metadata"]["name"]

    # One request through the Service; its tokens reach Prometheus.
    service = cluster.get("service", "watched", namespace)["spec"]
    answer = httpx.post(
        f"http://{service['clusterIP']}:{service['ports'][0]['port']}/api/generate",
        json={"model": "watched", "prompt": "Hello", "raw": True, "stream": False},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    generated = answer.json()["eval_count"]
    assert generated > 0
    query = f'slm_runtime_generated_tokens_total{{namespace="{namespace}",localmodel="watched"}}'
    (sample,) = wait_for(
        lambda: [s for s in series(prometheus, query) if float(s["value"][1]) >= generated],
        timeout=60,
        what=f"{query} >= {generated}",
        interval=1,
    )
    assert sample["metric"]["pod"] == pod["metadata"]["name"]
    device = series(
        prometheus, f'slm_runtime_device_info{{namespace="{namespace}",localmodel="watched"}}'
    )
    assert [d["metric"]["device"] for d in device] == ["cpu"]

    # The operator's own metrics, through the chart's ServiceMonitor, keep the model's labels.
    status = wait_for(
        lambda: series(
            prometheus,
            f'slm_operator_model_status{{namespace="{namespace}",localmodel="watched"}}',
        ),
        timeout=60,
        what="the operator's status of the model in Prometheus",
        interval=1,
    )
    assert [(s["metric"]["phase"], s["metric"]["reason"]) for s in status] == [
        ("Ready", "ModelServing")
    ]

    # The chart's rules are loaded, and none of its alerts fires for a healthy model.
    def rules() -> list[dict[str, Any]]:
        return [
            rule
            for group in prometheus.rule_groups()
            if group["name"] == "slm-operator.models" and namespace in group["file"]
            for rule in group["rules"]
        ]

    loaded = wait_for(rules, timeout=60, what="the chart's rules loaded", interval=1)
    assert {r["name"] for r in loaded} == {
        "SLMModelNotReady",
        "SLMModelPullFailed",
        "SLMModelQueueSaturated",
        "SLMModelRuntimeErrors",
    }
    assert all(r["health"] == "ok" for r in loaded), loaded
    # Once every rule has been evaluated, none is pending or firing for the healthy model.
    wait_for(
        lambda: all(r["lastEvaluation"] > "2000" for r in rules()),
        timeout=60, what="every rule evaluated", interval=1,
    )  # fmt: skip
    alerts = series(prometheus, f'ALERTS{{namespace="{namespace}",localmodel="watched"}}')
    assert alerts == []
    # Rules without the operator's ServiceMonitor: the install's notes say what is missing.
    dry = cluster.helm(
        "install", "unscraped", str(CHART), "--dry-run", "--namespace", namespace,
        "--set", "crds.enabled=false", "--set", "rbac.aggregateToDefaultRoles=false",
        "--set", "prometheusRule.enabled=true",
    ).stdout  # fmt: skip
    assert "SLMModelNotReady and SLMModelPullFailed can never fire" in dry
    dashboard = cluster.get("configmap", f"{RELEASE}-slm-operator-dashboard", namespace)
    assert json.loads(dashboard["data"]["slm-operator-models.json"])["uid"] == "slm-operator-models"
