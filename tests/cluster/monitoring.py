"""The Prometheus Operator and one Prometheus on node-0, as a user's monitoring stack would be.

The binaries are hack/cluster/build.sh's (Prometheus, the operator and its config reloader,
built from their Go modules); each is wrapped into an image ``FROM scratch`` and put on the node.
The operator runs from the RBAC of its own examples (in the namespace ``monitoring``, with our
images); the Prometheus selects every ServiceMonitor and PrometheusRule in the cluster and
evaluates every few seconds. Everything is removed afterwards, except the ServiceMonitor CRD,
which cluster-up installs for the other tests, and the images (in Docker and on node-0).
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from .conftest import CACHE, REAL_NODE, VERSIONS, Cluster, import_into_node
from .operator_run import wait_for

NAMESPACE = "monitoring"
PROMETHEUS = "prometheus"
"""The Prometheus object's name; its pods are ``prometheus-<name>-0``."""
INTERVAL = "5s"
"""Scrape and rule evaluation interval."""
KEPT_CRD = "servicemonitors.monitoring.coreos.com"

OPERATOR_VERSION = VERSIONS["PROM_OPERATOR_VERSION"]
PROMETHEUS_VERSION = VERSIONS["PROMETHEUS_VERSION"]
BIN = CACHE / "bin"
EXAMPLES = BIN / f"prometheus-operator-examples-{OPERATOR_VERSION}"
IMAGES = {
    "prometheus": f"slm-local/prometheus:{PROMETHEUS_VERSION}",
    "prometheus-operator": f"slm-local/prometheus-operator:{OPERATOR_VERSION}",
    "prometheus-config-reloader": f"slm-local/prometheus-config-reloader:{OPERATOR_VERSION}",
}


def binary_image(name: str, version: str, image: str) -> None:
    """``image`` in Docker: FROM scratch, the cached binary as ``/bin/<name>`` (where the
    upstream images have it, and the operator's command names it), its entrypoint."""
    from tests.images.conftest import image_names

    binary = BIN / f"{name}-{version}"
    assert binary.is_file(), f"{binary} is missing: run `make setup` (hack/cluster/build.sh)"
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        tar.add(binary, arcname=f"bin/{name}")
    subprocess.run(
        [image_names()["DOCKER"], "import", "--change", f'ENTRYPOINT ["/bin/{name}"]', "-", image],
        input=layer.getvalue(), capture_output=True, check=True, timeout=300,
    )  # fmt: skip


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _in_namespace(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The examples' objects moved from ``default`` to NAMESPACE (subjects too)."""
    for obj in objects:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            obj["metadata"]["namespace"] = NAMESPACE
        for subject in obj.get("subjects", []):
            subject["namespace"] = NAMESPACE
    return objects


def _apply_all(cluster: Cluster, objects: list[dict[str, Any]]) -> None:
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
    )  # fmt: skip


def operator_objects() -> list[dict[str, Any]]:
    """The operator's ServiceAccount, ClusterRole, binding and Deployment, from its examples,
    running our image on node-0 with our config reloader."""
    folder = EXAMPLES / "rbac" / "prometheus-operator"
    objects = _in_namespace(
        [
            doc
            for name in ("service-account", "cluster-role", "cluster-role-binding", "deployment")
            for doc in _documents(folder / f"prometheus-operator-{name}.yaml")
        ]
    )
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    pod["nodeSelector"] = {"kubernetes.io/hostname": REAL_NODE}
    (container,) = pod["containers"]
    container["image"] = IMAGES["prometheus-operator"]
    container["imagePullPolicy"] = "Never"
    container["args"] = [f"--prometheus-config-reloader={IMAGES['prometheus-config-reloader']}"]
    return objects


def prometheus_objects() -> list[dict[str, Any]]:
    """Prometheus' ServiceAccount and read access, and one Prometheus that selects every
    ServiceMonitor and PrometheusRule."""
    folder = EXAMPLES / "rbac" / "prometheus"
    objects = _in_namespace(
        [
            doc
            for name in ("service-account", "cluster-role", "cluster-role-binding")
            for doc in _documents(folder / f"prometheus-{name}.yaml")
        ]
    )
    objects.append(
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "Prometheus",
            "metadata": {"name": PROMETHEUS, "namespace": NAMESPACE},
            "spec": {
                "image": IMAGES["prometheus"],
                "version": PROMETHEUS_VERSION,
                "imagePullPolicy": "Never",
                "replicas": 1,
                "serviceAccountName": "prometheus",
                "nodeSelector": {"kubernetes.io/hostname": REAL_NODE},
                "scrapeInterval": INTERVAL,
                "evaluationInterval": INTERVAL,
                "serviceMonitorSelector": {},
                "serviceMonitorNamespaceSelector": {},
                "ruleSelector": {},
                "ruleNamespaceSelector": {},
                "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
            },
        }
    )
    return objects


class PrometheusAPI:
    """Prometheus' HTTP API on its pod's address (the host reaches node-0's pods)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        answer = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        answer.raise_for_status()
        body = answer.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's vector."""
        result: list[dict[str, Any]] = self.get("/api/v1/query", query=promql)["result"]
        return result

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self.get("/api/v1/rules")["groups"]
        return groups


def _pod_ip(cluster: Cluster, name: str) -> str | None:
    found = cluster.kubectl("get", "pod", name, "-o", "json", namespace=NAMESPACE, check=False)
    if found.returncode != 0:
        return None
    pod = json.loads(found.stdout)
    ready = any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )
    ip: str | None = pod["status"].get("podIP")
    return ip if ready else None


class Monitoring:
    """The running Prometheus Operator; ``start_prometheus`` adds the Prometheus."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def start_prometheus(self) -> PrometheusAPI:
        """Create the Prometheus, wait for it Ready, and return its API.

        Started after the monitors and rules a test wants it to see exist, it reads them all
        in its first configuration. One started earlier would pick up later ones only when the
        kubelet has refreshed its configuration Secret (up to a minute or so) and the config
        reloader has noticed (it polls every 3 minutes: the Secret's file is a symlink the
        kubelet swaps, which the reloader's file watch does not see).
        """
        started = time.monotonic()
        _apply_all(self.cluster, prometheus_objects())
        ip = wait_for(
            lambda: _pod_ip(self.cluster, f"prometheus-{PROMETHEUS}-0"),
            timeout=240,
            what="Prometheus Ready (the operator made its StatefulSet)",
            interval=1,
        )
        print(f"Prometheus ready in {time.monotonic() - started:.0f}s")
        return PrometheusAPI(f"http://{ip}:9090")


@contextmanager
def monitoring_stack(cluster: Cluster) -> Iterator[Monitoring]:
    """Install the Prometheus Operator and its CRDs; remove them (and any Prometheus) after."""
    binary_image("prometheus", PROMETHEUS_VERSION, IMAGES["prometheus"])
    for name in ("prometheus-operator", "prometheus-config-reloader"):
        binary_image(name, OPERATOR_VERSION, IMAGES[name])
    for image in IMAGES.values():
        import_into_node(image)
    # monitoring.coreos.com_<plural>.yaml, one CRD each (read by kubectl: they hold YAML that
    # PyYAML's safe loader refuses)
    crds = sorted((EXAMPLES / "crds").glob("monitoring.coreos.com_*.yaml"))
    names = [f"{path.stem.split('_', 1)[1]}.monitoring.coreos.com" for path in crds]
    added = [name for name in names if name != KEPT_CRD]
    try:
        for path, name in zip(crds, names, strict=True):
            if name != KEPT_CRD:  # cluster-up's, at the same version
                cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        cluster.wait_established(*added)
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        _apply_all(cluster, operator_objects())
        cluster.kubectl("rollout", "status", "deployment/prometheus-operator", "--timeout=120s",
                        namespace=NAMESPACE)  # fmt: skip
        yield Monitoring(cluster)
    finally:
        cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true",
                        "--timeout=120s", check=False)  # fmt: skip
        for kind in ("clusterrolebinding", "clusterrole"):
            cluster.kubectl("delete", kind, "prometheus", "prometheus-operator",
                            "--ignore-not-found", check=False)  # fmt: skip
        cluster.kubectl("delete", "crd", *added, "--ignore-not-found", check=False)
