"""The three install paths on the real control plane: Helm chart, plain manifests, GitOps overlay.

How the operator runs here: the operator image cannot be built on these machines (no container
engine), and host-0 pods reach neither the API server (it listens on 127.0.0.1 only) nor
Services (no kube-proxy, no DNS). So each install is applied as a user would, its operator
Deployment lands on a kwok node (kwok marks the pod Ready but runs nothing), and the real
operator runs as a host process that copies that pod: the Deployment's command, its
environment, the catalog from the chart's ConfigMap, and a token of the chart's own
ServiceAccount, so every API call goes through the RBAC the install path created. Only the
metrics and health ports change (free host ports instead of the pod's). The `helm test` pod
runs for real on host-0 (node selector and toleration from the chart's `tests.*` values) and
GETs that operator's /healthz at the host's address (`tests.healthUrl`), since the Service
name does not resolve here.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .conftest import HOST_GATEWAY, HOST_NODE_TOLERATION, ROOT, Cluster
from .operator_run import free_port, wait_for

CHART = ROOT / "charts" / "slm-operator"
CRD_FILE = ROOT / "crds" / "slm.dev_localmodels.yaml"
CRD_NAME = "localmodels.slm.dev"
DEPLOY = ROOT / "deploy" / "slm-operator.yaml"
OVERLAY = ROOT / "examples" / "gitops" / "overlays" / "production"
RELEASE = "slm-operator-it"


def localmodel(name: str) -> dict[str, Any]:
    """A CPU LocalModel with a volume cache; kwok completes its pull Job without fetching."""
    return {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "LocalModel",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": "https://models.example/gemma-3-270m-q4_k_m.gguf"},
            "cache": {"mode": "Volume", "size": "1Gi"},
            "hardware": {"preferred": "cpu", "fallback": []},
        },
    }


def phase(cluster: Cluster, namespace: str, name: str) -> str | None:
    """The LocalModel's status.phase."""
    status: dict[str, Any] = cluster.get("localmodel", name, namespace).get("status") or {}
    return status.get("phase")


def wait_ready(cluster: Cluster, namespace: str, name: str) -> None:
    """Wait until the operator reports the LocalModel Ready."""
    wait_for(
        lambda: phase(cluster, namespace, name) == "Ready",
        timeout=120,
        what=f"{namespace}/{name} Ready",
    )


def model_pvcs(cluster: Cluster, namespace: str, name: str) -> list[str]:
    """Names of the LocalModel's model volumes."""
    out = cluster.kubectl("get", "pvc", "-o", "name", namespace=namespace).stdout.split()
    return [p.split("/", 1)[1] for p in out if p.startswith(f"persistentvolumeclaim/{name}-model-")]


def token_kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates with a token of ``namespace/account``."""
    token = cluster.kubectl(
        "create", "token", account, "--duration=2h", namespace=namespace
    ).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    server = dict(admin["clusters"][0]["cluster"])
    if "certificate-authority" in server:
        ca = Path(server.pop("certificate-authority")).read_bytes()
        server["certificate-authority-data"] = base64.b64encode(ca).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": server}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": account}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def operator_like_pod(
    cluster: Cluster, namespace: str, deployment: str, workdir: Path, health_port: int
) -> Iterator[subprocess.Popen[bytes]]:
    """Run the operator as the Deployment's pod would: its command, env, catalog and identity."""
    pod = cluster.get("deployment", deployment, namespace)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    catalog = workdir / "catalog.yaml"
    for volume in pod["volumes"]:
        if "configMap" in volume:
            data = cluster.get("configmap", volume["configMap"]["name"], namespace)["data"]
            catalog.write_text(data[Path(env["SLM_OPERATOR_CATALOG_FILE"]).name])
    kubeconfig = token_kubeconfig(
        cluster, namespace, pod["serviceAccountName"], workdir / "kubeconfig"
    )
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    command = [shutil.which(container["command"][0], path=path) or "", *container["command"][1:]]
    env |= {
        "PATH": path,
        "HOME": str(workdir),
        "KUBECONFIG": str(kubeconfig),
        "SLM_OPERATOR_CATALOG_FILE": str(catalog),
        "SLM_OPERATOR_METRICS_PORT": str(free_port()),
        "SLM_OPERATOR_HEALTH_PORT": str(health_port),
    }
    log_path = workdir / "operator.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"operator exited: {log_path.read_text(errors='replace')}")
        try:
            return httpx.get(f"http://127.0.0.1:{health_port}/healthz", timeout=2).is_success
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout=60, what="the operator's /healthz")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


PROMETHEUS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}


def network_policy_peers(cluster: Cluster, namespace: str, name: str) -> list[Any] | None:
    """The peers the model's NetworkPolicy admits, once it exists."""
    found = cluster.kubectl("get", "networkpolicy", name, "-o", "json", namespace=namespace,
                            check=False)  # fmt: skip
    if found.returncode != 0:
        return None
    peers: list[Any] = json.loads(found.stdout)["spec"]["ingress"][0]["from"]
    return peers


def restore_crd(cluster: Cluster) -> None:
    """Put the CRD back exactly as crds/ has it, for the other cluster tests."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.wait_established(CRD_NAME)


def crd_exists(cluster: Cluster) -> bool:
    """Whether the LocalModel CRD is installed."""
    return cluster.kubectl("get", "crd", CRD_NAME, check=False).returncode == 0


def restricted(cluster: Cluster, namespace: str) -> None:
    """Enforce the Pod Security Standard "restricted" in a namespace."""
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
        "--overwrite",
    )  # fmt: skip


def with_printer_column(src: Path, dest: Path) -> Path:
    """A copy of the chart whose CRD has one more printer column, ENDPOINT."""
    shutil.copytree(src, dest)
    crd_path = dest / "files" / "crds" / CRD_FILE.name
    crd = yaml.safe_load(crd_path.read_text())
    for version in crd["spec"]["versions"]:
        version["additionalPrinterColumns"].insert(
            -1,
            {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
        )
    crd_path.write_text(yaml.safe_dump(crd, sort_keys=False))
    return dest


def test_chart_passes_the_api_servers_dry_run(cluster: Cluster, namespace: str) -> None:
    restricted(cluster, namespace)
    rendered = cluster.helm(
        "template", RELEASE, str(CHART), "--namespace", namespace,
        "--set", "serviceMonitor.enabled=true", "--set", f"watchNamespaces={{{namespace}}}",
    ).stdout  # fmt: skip
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered) if d}
    assert {"CustomResourceDefinition", "Deployment", "Pod", "ServiceMonitor", "Role"} <= kinds
    result = cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-",
        input=rendered,
    )  # fmt: skip
    assert "serverside-applied (server dry run)" in result.stdout
    assert "Warning" not in result.stderr, result.stderr


def test_helm_install_test_upgrade_uninstall(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    restricted(cluster, namespace)
    health_port = free_port()
    test_values = [
        "--set", f"tests.healthUrl=http://{HOST_GATEWAY}:{health_port}/healthz",
        "--set", f"tests.nodeSelector.kubernetes\\.io/hostname={cluster.host_node}",
        "--set-json", f"tests.tolerations=[{json.dumps(HOST_NODE_TOLERATION)}]",
        "--namespace", namespace, "--wait", "--timeout", "120s",
    ]  # fmt: skip
    # A CRD installed by another path (the suite's `crds` fixture) and the LocalModel user
    # roles a plain install left are adopted, as a user moving from `kubectl apply` to Helm
    # would.
    adopt = ["--take-ownership"]
    try:
        installed = cluster.helm("install", RELEASE, str(CHART), *adopt, *test_values)
        assert f"helm test {RELEASE} -n {namespace}" in installed.stdout  # NOTES.txt
        crd = cluster.get("crd", CRD_NAME)
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        with operator_like_pod(cluster, namespace, RELEASE, tmp_path, health_port):
            cluster.apply(localmodel("gemma"), namespace)
            wait_ready(cluster, namespace, "gemma")
            assert model_pvcs(cluster, namespace, "gemma")

            result = cluster.helm("test", RELEASE, "--namespace", namespace, check=False)
            test_pod = cluster.get("pod", f"{RELEASE}-test-health", namespace)
            assert result.returncode == 0, json.dumps(test_pod["status"].get("containerStatuses"))
            assert "Phase:          Succeeded" in result.stdout
            said = cluster.host_log(namespace, f"{RELEASE}-test-health", "health")
            assert f"{HOST_GATEWAY}:{health_port}/healthz 200" in said

            upgraded = with_printer_column(CHART, tmp_path / "chart")
            cluster.helm("upgrade", RELEASE, str(upgraded), *test_values)
            header = cluster.kubectl("get", "lm", "gemma", namespace=namespace).stdout
            assert header.split()[:5] == ["NAME", "MODEL", "BACKEND", "READY", "PHASE"]
            assert "ENDPOINT" in header.splitlines()[0]
            assert f"http://gemma.{namespace}.svc:8080" in header

        pvcs = model_pvcs(cluster, namespace, "gemma")
        cluster.helm("uninstall", RELEASE, "--namespace", namespace, "--wait")
        assert crd_exists(cluster), "helm uninstall deleted the CRD"
        assert phase(cluster, namespace, "gemma") == "Ready"
        assert cluster.get("deployment", "gemma", namespace)["status"]["readyReplicas"] == 1
        assert model_pvcs(cluster, namespace, "gemma") == pvcs
        gone = cluster.kubectl("get", "deployment", RELEASE, namespace=namespace, check=False)
        assert gone.returncode != 0
        assert cluster.kubectl("get", "clusterrole", RELEASE, check=False).returncode != 0
    finally:
        cluster.helm("uninstall", RELEASE, "--namespace", namespace, check=False)
        cluster.kubectl(
            "patch", "lm", "gemma", "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
            namespace=namespace, check=False,
        )  # fmt: skip
        restore_crd(cluster)


def test_watched_namespace_install_runs_a_model_under_roles(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    restricted(cluster, namespace)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    release = "slm-operator-ns"
    try:
        cluster.helm(
            "install", release, str(CHART), "--namespace", namespace, "--wait",
            "--set", "crds.enabled=false", "--set", f"watchNamespaces={{{namespace}}}",
            "--set", "rbac.aggregateToDefaultRoles=false",
            "--set-json", f"runtime.metricsFrom=[{json.dumps(PROMETHEUS)}]",
        )  # fmt: skip
        assert cluster.get("role", release, namespace)["rules"]
        cluster_rules = cluster.get("clusterrole", release)["rules"]
        assert {r for rule in cluster_rules for r in rule["resources"]} == {
            "nodes",
            "namespaces",
            "customresourcedefinitions",
        }
        with operator_like_pod(cluster, namespace, release, tmp_path, free_port()) as process:
            cluster.apply(localmodel("scoped"), namespace)
            wait_ready(cluster, namespace, "scoped")
            cluster.kubectl("delete", "lm", "scoped", namespace=namespace)

            # The chart's metricsFrom reaches the NetworkPolicy of a model that turns one on.
            fenced = localmodel("fenced")
            fenced["spec"]["serving"] = {"networkPolicy": {"enabled": True}}
            cluster.apply(fenced, namespace)
            wait_for(
                lambda: (
                    network_policy_peers(cluster, namespace, "fenced")
                    == [{"podSelector": {}}, PROMETHEUS]
                ),
                timeout=60,
                what="the fenced model's NetworkPolicy to admit the namespace and Prometheus",
            )

            # An image outside the catalog is refused: the chart left allowCustomImages off.
            custom = localmodel("custom")
            custom["spec"]["runtime"] = {"image": "attacker.example/miner:1"}
            cluster.apply(custom, namespace)
            wait_for(
                lambda: phase(cluster, namespace, "custom") == "Failed",
                timeout=60,
                what="the custom-image model Failed",
            )
            status = cluster.get("localmodel", "custom", namespace)["status"]
            ready = next(c for c in status["conditions"] if c["type"] == "Ready")
            assert "runtime.allowCustomImages=true" in ready["message"]
            assert "attacker.example/miner:1" in ready["message"]
            gone = cluster.kubectl("get", "deployment", "custom", namespace=namespace, check=False)
            assert gone.returncode != 0, "a refused model got a Deployment"
            assert process.poll() is None
        log = (tmp_path / "operator.log").read_text(errors="replace")
        assert "Forbidden" not in log, log[-2000:]
    finally:
        cluster.helm("uninstall", release, "--namespace", namespace, check=False)


def test_localmodel_roles_aggregate_into_edit_and_view(cluster: Cluster, namespace: str) -> None:
    roles = cluster.helm(
        "template", RELEASE, str(CHART), "--namespace", namespace,
        "--show-only", "templates/localmodel-roles.yaml",
    ).stdout  # fmt: skip
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=roles)
    for user, role in (("alice", "edit"), ("bob", "view")):
        cluster.kubectl(
            "create", "rolebinding", f"{user}-{role}", f"--clusterrole={role}", f"--user={user}",
            namespace=namespace,
        )  # fmt: skip

    def can(user: str, verb: str, resource: str, *extra: str) -> bool:
        answer = cluster.kubectl(
            "auth", "can-i", verb, resource, f"--as={user}", *extra, namespace=namespace,
            check=False,
        )  # fmt: skip
        return answer.stdout.strip() == "yes"

    # The controller-manager folds the labelled roles into edit and view.
    wait_for(lambda: can("alice", "create", "localmodels.slm.dev"), timeout=60,
             what="edit to aggregate slm-localmodel-edit")  # fmt: skip
    wait_for(lambda: can("bob", "list", "localmodels.slm.dev"), timeout=60,
             what="view to aggregate slm-localmodel-view")  # fmt: skip
    assert can("alice", "delete", "localmodels.slm.dev")
    assert can("alice", "update", "localmodels.slm.dev", "--subresource=scale")
    assert not can("alice", "patch", "localmodels.slm.dev", "--subresource=status")
    assert can("bob", "get", "localmodels.slm.dev")
    assert not can("bob", "create", "localmodels.slm.dev")
    assert not can("bob", "patch", "localmodels.slm.dev")
    # Bound in this namespace only.
    elsewhere = cluster.kubectl(
        "auth", "can-i", "create", "localmodels.slm.dev", "--as=alice", "--namespace=default",
        check=False,
    )  # fmt: skip
    assert elsewhere.stdout.strip() == "no"


@pytest.fixture(scope="module")
def plain_install(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """deploy/ applied after crds/ (the documented two steps), its operator running; its log."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.wait_established(CRD_NAME)
    cluster.kubectl("apply", "-f", str(DEPLOY))
    cluster.kubectl(
        "rollout", "status", "deployment/slm-operator", "--timeout=60s", namespace="slm-system"
    )
    workdir = tmp_path_factory.mktemp("plain")
    try:
        with operator_like_pod(cluster, "slm-system", "slm-operator", workdir, free_port()):
            yield workdir / "operator.log"
    finally:
        # The Namespace, ServiceAccount and cluster RBAC stay: the other cluster tests use the
        # same names, and a namespace still terminating would fail them.
        for kind in ("deployment", "service", "configmap"):
            cluster.kubectl(
                "delete", kind, "-l", "app.kubernetes.io/instance=slm-operator",
                "--ignore-not-found", namespace="slm-system",
            )  # fmt: skip


def test_plain_manifests_run_a_model(cluster: Cluster, plain_install: Path, namespace: str) -> None:
    restricted(cluster, namespace)
    labels = cluster.get("namespace", "slm-system")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    cluster.apply(localmodel("plain"), namespace)
    wait_ready(cluster, namespace, "plain")
    cluster.kubectl("delete", "lm", "plain", namespace=namespace)
    log = plain_install.read_text(errors="replace")
    assert "Forbidden" not in log, log[-2000:]


def test_gitops_overlay_applies_and_diffs_empty_with_an_hpa(
    cluster: Cluster, plain_install: Path
) -> None:
    rendered = cluster.kubectl("kustomize", str(OVERLAY)).stdout
    namespace = next(
        d["metadata"]["name"]
        for d in yaml.safe_load_all(rendered)
        if d and d["kind"] == "Namespace"
    )
    try:
        cluster.kubectl("apply", "--server-side", "-k", str(OVERLAY))
        wait_for(
            lambda: (
                cluster.kubectl("get", "hpa", "chat", namespace=namespace, check=False).returncode
                == 0
            ),
            timeout=60,
            what="the operator's HPA",
        )
        wait_ready(cluster, namespace, "chat")
        diff = cluster.kubectl("diff", "--server-side", "-k", str(OVERLAY), check=False)
        assert diff.returncode == 0, diff.stdout + diff.stderr
        assert diff.stdout == ""
        out = cluster.kubectl(
            "get", "localmodel", "chat", "-o", "json", "--show-managed-fields", namespace=namespace
        ).stdout  # fmt: skip
        model = json.loads(out)
        spec_owners = {
            entry["manager"]
            for entry in model["metadata"]["managedFields"]
            if "f:spec" in entry.get("fieldsV1", {})
        }
        assert spec_owners == {"kubectl"}
    finally:
        cluster.kubectl("delete", "lm", "chat", "--ignore-not-found", namespace=namespace)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
