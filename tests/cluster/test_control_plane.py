"""The control plane: version, controllers, scheduling on fake nodes, admission, audit, Helm."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .conftest import KWOK_TOLERATION, REAL_NODE, Cluster, Kubectl
from .pods import wait_until


def _deployment(name: str, replicas: int, **pod_spec: object) -> dict[str, object]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{"name": "main", "image": "example/fake"}],
                    "tolerations": [KWOK_TOLERATION],
                    "nodeSelector": {"type": "kwok"},
                    **pod_spec,
                },
            },
        },
    }


def _pod(name: str, resources: dict[str, str]) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {"name": "main", "image": "example/fake", "resources": {"limits": resources}}
            ],
            "tolerations": [KWOK_TOLERATION],
        },
    }


def test_server_reports_the_stamped_version(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"].startswith("v1.36.")
    assert version["minor"] == "36"


def test_fake_nodes_and_real_nodes_are_ready(cluster: Cluster) -> None:
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    assert {"cpu-0", "cpu-1", "gpu-0", "npu-0", REAL_NODE} <= set(by_name)
    fake = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
    for name in ("cpu-0", "cpu-1", "gpu-0", "npu-0"):
        assert by_name[name]["spec"]["taints"] == [fake], name
    assert "taints" not in by_name[REAL_NODE]["spec"]
    info = by_name[REAL_NODE]["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("containerd://2.")
    assert info["kubeletVersion"] == "v1.36.3"
    for node in nodes:
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready[0]["status"] == "True", node["metadata"]["name"]
    assert by_name["gpu-0"]["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    assert by_name["npu-0"]["status"]["allocatable"]["intel.com/npu"] == "1"


def test_deployment_gets_ready_pods_on_fake_nodes(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    cluster.apply(_deployment("web", 3), namespace)
    kubectl("rollout", "status", "deployment/web", "--timeout=60s")
    pods = json.loads(kubectl("get", "pods", "-l", "app=web", "-o", "json").stdout)["items"]
    assert len(pods) == 3
    assert {p["spec"]["nodeName"] for p in pods} <= {"cpu-0", "cpu-1", "gpu-0", "npu-0"}


def test_deleting_an_owner_collects_its_children(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    cluster.apply(_deployment("owner", 2), namespace)
    kubectl("rollout", "status", "deployment/owner", "--timeout=60s")
    assert kubectl("get", "replicasets", "-l", "app=owner", "-o", "name").stdout.strip()

    kubectl("delete", "deployment", "owner", "--cascade=background")
    kubectl("wait", "--for=delete", "pods", "-l", "app=owner", "--timeout=60s")
    wait_until(
        "the ReplicaSet to be collected",
        lambda: not kubectl("get", "replicasets", "-l", "app=owner", "-o", "name").stdout.strip(),
    )


def test_gpu_and_npu_pods_land_on_their_nodes(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    cluster.apply(_pod("gpu", {"nvidia.com/gpu": "1"}), namespace)
    cluster.apply(_pod("npu", {"intel.com/npu": "1"}), namespace)
    kubectl("wait", "--for=condition=Ready", "pod/gpu", "pod/npu", "--timeout=60s")
    assert cluster.get("pod", "gpu", namespace)["spec"]["nodeName"] == "gpu-0"
    assert cluster.get("pod", "npu", namespace)["spec"]["nodeName"] == "npu-0"


def test_too_many_accelerators_stay_pending_with_failed_scheduling(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    cluster.apply(_pod("greedy", {"nvidia.com/gpu": "2"}), namespace)
    event = wait_until(
        "a FailedScheduling event",
        lambda: json.loads(
            kubectl(
                "get", "events", "-o", "json",
                "--field-selector=reason=FailedScheduling,involvedObject.name=greedy",
            ).stdout
        )["items"],
    )[0]  # fmt: skip
    assert "Insufficient nvidia.com/gpu" in event["message"]
    assert cluster.get("pod", "greedy", namespace)["status"]["phase"] == "Pending"


def test_privileged_pod_is_rejected_in_a_restricted_namespace(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    pod = _pod("privileged", {})
    pod["spec"]["containers"][0]["securityContext"] = {"privileged": True}  # type: ignore[index]
    result = kubectl("apply", "-f", "-", input=json.dumps(pod), check=False)
    assert result.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in result.stderr
    assert "privileged" in result.stderr


def test_pvc_is_provisioned(cluster: Cluster, namespace: str, kubectl: Kubectl) -> None:
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}},
    }
    cluster.apply(claim, namespace)
    kubectl("wait", "--for=jsonpath={.status.phase}=Bound", "pvc/models", "--timeout=30s")


def test_servicemonitor_crd_is_served(cluster: Cluster, namespace: str, kubectl: Kubectl) -> None:
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "runtime"},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "endpoints": [{"port": "http"}]},
    }
    kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(monitor))


def test_audit_log_records_writes_by_user(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    kubectl("create", "configmap", "audited", "--from-literal=a=b")

    def find() -> list[dict[str, object]]:
        events = [json.loads(line) for line in cluster.audit_log.read_text().splitlines()]
        return [
            e
            for e in events
            if e["verb"] == "create"
            and e.get("objectRef", {}).get("namespace") == namespace
            and e.get("objectRef", {}).get("name") == "audited"
        ]

    event = wait_until("the audit event", find)[0]
    assert event["user"]["username"] == "kubernetes-admin"
    assert event["objectRef"]["resource"] == "configmaps"


def test_helm_lints_templates_and_validates_against_the_server(
    cluster: Cluster, namespace: str, kubectl: Kubectl, tmp_path: Path
) -> None:
    chart = tmp_path / "demo"
    cluster.helm("create", str(chart))
    chart_yaml = chart / "Chart.yaml"
    chart_yaml.write_text(chart_yaml.read_text() + 'kubeVersion: ">=1.36.0-0"\n')
    cluster.helm("lint", str(chart))
    rendered = cluster.helm(
        "template", "demo", str(chart), "--kube-version", "v1.36.3", "--namespace", namespace
    ).stdout
    kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    # Against the live server Helm reads its version: the stamp must satisfy kubeVersion.
    cluster.helm("template", "demo", str(chart), "--validate", "--namespace", namespace)
    old = subprocess.run(
        [str(cluster.helm_path), "template", "demo", str(chart), "--kube-version", "v1.35.0"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert old.returncode != 0
    assert "kubeVersion" in old.stderr
