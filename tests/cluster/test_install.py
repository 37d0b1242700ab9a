"""The three install paths on the real cluster: Helm chart, plain manifests, GitOps overlay.

Each install is applied as a user would and its operator runs in the cluster from the operator
image, on node-0 (kubelet and containerd), under the RBAC that install path created; it reaches
the API server through the kubernetes Service (kube-proxy). The models it reconciles here stay
on the fake (kwok) nodes, where pods turn Ready without running; tests/cluster/test_operator.py
runs real models. `helm test` runs its pod on node-0 too, and GETs the operator's /healthz
through the operator's Service name (CoreDNS, kube-proxy).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.images.conftest import docker_engine, image_names

from .conftest import (
    KWOK_SCHEDULING,
    REAL_NODE,
    REAL_NODE_SCHEDULING,
    ROOT,
    TINY_ONNX,
    Cluster,
    import_into_node,
)
from .operator_run import wait_for

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
            "scheduling": KWOK_SCHEDULING,
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


def operator_pod(cluster: Cluster, namespace: str, release: str) -> dict[str, Any]:
    """The install's one operator pod, after checking it runs on node-0 from the operator image
    the build produced."""
    selector = (
        f"app.kubernetes.io/instance={release},app.kubernetes.io/name=slm-operator,"
        "app.kubernetes.io/component=controller"  # not the gateway's or the `helm test` pod
    )

    def one_pod() -> list[dict[str, Any]] | None:
        out = cluster.kubectl("get", "pods", "-l", selector, "-o", "json", namespace=namespace)
        items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
        live = [p for p in items if not p["metadata"].get("deletionTimestamp")]
        return live if len(live) == 1 else None

    # An upgrade replaces the pod (strategy Recreate): wait for the new one.
    (pod,) = wait_for(one_pod, timeout=60, what=f"one {release} operator pod")
    assert pod["spec"]["nodeName"] == REAL_NODE
    (container,) = pod["status"]["containerStatuses"]
    built = docker_engine().inspect(image_names()["SLM_OPERATOR_IMAGE"])
    assert container["imageID"] == built["Id"]
    return pod


def operator_log(cluster: Cluster, namespace: str, release: str) -> str:
    """The install's operator's log, from the kubelet."""
    pod = operator_pod(cluster, namespace, release)["metadata"]["name"]
    return cluster.kubectl("logs", pod, namespace=namespace).stdout


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
    options = ["--namespace", namespace, "--wait", "--timeout", "180s"]
    # A CRD installed by another path (the suite's `crds` fixture) and the LocalModel user
    # roles a plain install left are adopted, as a user moving from `kubectl apply` to Helm
    # would. Otherwise the chart's defaults.
    adopt = ["--take-ownership"]
    try:
        installed = cluster.helm("install", RELEASE, str(CHART), *adopt, *options)
        assert f"helm test {RELEASE} -n {namespace}" in installed.stdout  # NOTES.txt
        crd = cluster.get("crd", CRD_NAME)
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        operator_pod(cluster, namespace, RELEASE)
        cluster.apply(localmodel("gemma"), namespace)
        wait_ready(cluster, namespace, "gemma")
        assert model_pvcs(cluster, namespace, "gemma")

        result = cluster.helm("test", RELEASE, "--namespace", namespace, "--logs", check=False)
        test_pod = cluster.get("pod", f"{RELEASE}-test-health", namespace)
        assert result.returncode == 0, json.dumps(test_pod["status"].get("containerStatuses"))
        assert "Phase:          Succeeded" in result.stdout
        assert test_pod["spec"]["nodeName"] == REAL_NODE
        said = cluster.kubectl("logs", f"{RELEASE}-test-health", namespace=namespace).stdout
        assert f"http://{RELEASE}.{namespace}.svc:8081/healthz 200" in said

        assert "Forbidden" not in operator_log(cluster, namespace, RELEASE)
        upgraded = with_printer_column(CHART, tmp_path / "chart")
        cluster.helm("upgrade", RELEASE, str(upgraded), *options)
        header = cluster.kubectl("get", "lm", "gemma", namespace=namespace).stdout
        assert header.split()[:5] == ["NAME", "MODEL", "VARIANT", "BACKEND", "READY"]
        assert "ENDPOINT" in header.splitlines()[0]
        assert f"http://gemma.{namespace}.svc:8080" in header
        assert "Forbidden" not in operator_log(cluster, namespace, RELEASE)

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
        pod = operator_pod(cluster, namespace, release)
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
        log = operator_log(cluster, namespace, release)
        assert "Forbidden" not in log, log[-2000:]
    finally:
        cluster.helm("uninstall", release, "--namespace", namespace, check=False)


def tiny_model(name: str, claim: str, image: str | None = None) -> dict[str, Any]:
    """The tiny ONNX model from ``claim``, served for real on node-0 (small requests: several
    fit it, with a rolling update's extra pod each); ``image`` pins spec.runtime.image."""
    spec: dict[str, Any] = {
        "model": {"source": f"pvc://{claim}/{TINY_ONNX.name}", "format": "onnx"},
        "hardware": {"preferred": "cpu", "fallback": []},
        "parameters": {"numPredict": 4},
        "serving": {"parallel": 1},
        # Set, not estimated: an estimate made before the model's size is known is replaced
        # once it is, and that would roll the pods before the upgrade does.
        "resources": {"requests": {"cpu": "50m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "scheduling": REAL_NODE_SCHEDULING,
    }
    if image:
        spec["runtime"] = {"image": image}
    return {"apiVersion": "slm.dev/v1alpha1", "kind": "LocalModel",
            "metadata": {"name": name}, "spec": spec}  # fmt: skip


def deployments(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    """The namespace's model Deployments by name."""
    out = cluster.kubectl(
        "get", "deployments", "-l", "app.kubernetes.io/name=slm-runtime", "-o", "json",
        namespace=namespace,
    ).stdout  # fmt: skip
    return {d["metadata"]["name"]: d for d in json.loads(out)["items"]}


def server_image(deployment: dict[str, Any]) -> str:
    """The image of the runtime container in a Deployment's pod template."""
    containers = deployment["spec"]["template"]["spec"]["containers"]
    image: str = next(c["image"] for c in containers if c["name"] == "server")
    return image


def rolled_out(deployment: dict[str, Any]) -> bool:
    """Every replica updated and available, and no old pod left."""
    status, wanted = deployment.get("status") or {}, deployment["spec"]["replicas"]
    return bool(
        status.get("observedGeneration", 0) >= deployment["metadata"]["generation"]
        and status.get("updatedReplicas", 0) == wanted
        and status.get("availableReplicas", 0) == wanted
        and status.get("replicas", 0) == wanted
    )


def test_helm_upgrade_to_a_new_runtime_image_restarts_models_a_few_at_a_time(
    cluster: Cluster, namespace: str, fixtures_claim: str
) -> None:
    """Four models and one that pins its image run on node-0; `helm upgrade` to a new runtime
    image with runtime.maxImageRollouts=1 moves the four one after another, each serving
    throughout, and leaves the pinned one alone."""
    restricted(cluster, namespace)
    old = image_names()["SLM_RUNTIME_IMAGE"]
    new = f"{old}-next"  # the same image under a new tag: a new runtime image to the cluster
    docker_engine().run("tag", old, new)
    import_into_node(new)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    release = "slm-operator-up"
    values = [
        "--namespace", namespace,
        "--set", "crds.enabled=false", "--set", f"watchNamespaces={{{namespace}}}",
        "--set", "rbac.aggregateToDefaultRoles=false", "--set", "runtime.allowCustomImages=true",
        "--set", "runtime.maxImageRollouts=1",
    ]  # fmt: skip
    models = [f"model-{i}" for i in range(4)]
    try:
        cluster.helm("install", release, str(CHART), *values, "--wait", "--timeout", "180s")
        for name in models:
            cluster.apply(tiny_model(name, fixtures_claim), namespace)
        cluster.apply(tiny_model("pinned", fixtures_claim, image=old), namespace)
        for name in [*models, "pinned"]:
            wait_for(lambda name=name: phase(cluster, namespace, name) == "Ready", timeout=300,
                     what=f"{name} Ready")  # fmt: skip
        before = deployments(cluster, namespace)
        assert {server_image(d) for d in before.values()} == {old}
        pinned_pods = cluster.kubectl(
            "get", "pods", "-l", "app.kubernetes.io/instance=pinned", "-o", "name",
            namespace=namespace,
        ).stdout  # fmt: skip

        # No --wait: the watch below starts before the new operator does, so it sees the first
        # model move too (with --wait, that one could finish while helm was still waiting).
        cluster.helm("upgrade", release, str(CHART), *values, "--set", f"runtime.image={new}")
        most, seen = 0, []

        def all_moved() -> bool:
            nonlocal most
            now = deployments(cluster, namespace)
            moving = sorted(
                n for n in models if server_image(now[n]) == new and not rolled_out(now[n])
            )
            most = max(most, len(moving))
            if moving and moving not in seen:
                seen.append(moving)
            return all(server_image(now[n]) == new and rolled_out(now[n]) for n in models)

        wait_for(all_moved, timeout=600, what="every model on the new image", interval=0.2)
        assert most == 1, f"models restarting at once: {seen}"
        assert len(seen) == len(models), seen  # one after another
        after = deployments(cluster, namespace)
        assert server_image(after["pinned"]) == old
        assert (
            after["pinned"]["metadata"]["generation"] == before["pinned"]["metadata"]["generation"]
        )
        assert cluster.kubectl(
            "get", "pods", "-l", "app.kubernetes.io/instance=pinned", "-o", "name",
            namespace=namespace,
        ).stdout == pinned_pods  # fmt: skip
        for name in [*models, "pinned"]:
            assert phase(cluster, namespace, name) == "Ready"
    finally:
        cluster.helm("uninstall", release, "--namespace", namespace, check=False)
        for name in [*models, "pinned"]:
            cluster.kubectl("delete", "lm", name, "--wait=false", namespace=namespace, check=False)


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
def plain_install(cluster: Cluster) -> Iterator[str]:
    """deploy/ applied after crds/ (the documented two steps), its operator running; its
    namespace."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    cluster.wait_established(CRD_NAME)
    cluster.kubectl("apply", "-f", str(DEPLOY))
    cluster.kubectl(
        "rollout", "status", "deployment/slm-operator", "--timeout=180s", namespace="slm-system"
    )
    try:
        operator_pod(cluster, "slm-system", "slm-operator")
        yield "slm-system"
    finally:
        # The Namespace, ServiceAccount and cluster RBAC stay: the other cluster tests use the
        # same names, and a namespace still terminating would fail them.
        for kind in ("deployment", "service", "configmap"):
            cluster.kubectl(
                "delete", kind, "-l", "app.kubernetes.io/instance=slm-operator",
                "--ignore-not-found", namespace="slm-system",
            )  # fmt: skip


def test_plain_manifests_run_a_model(cluster: Cluster, plain_install: str, namespace: str) -> None:
    restricted(cluster, namespace)
    labels = cluster.get("namespace", "slm-system")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    cluster.apply(localmodel("plain"), namespace)
    wait_ready(cluster, namespace, "plain")
    cluster.kubectl("delete", "lm", "plain", namespace=namespace)
    log = operator_log(cluster, plain_install, "slm-operator")
    assert "Forbidden" not in log, log[-2000:]


def kwok_overlay(tmp_path: Path) -> Path:
    """A copy of the GitOps example whose production overlay also places the model on the
    fake nodes (their toleration and label), as a cluster's own overlay would place it."""
    copy = tmp_path / "gitops"
    shutil.copytree(OVERLAY.parents[1], copy)
    overlay = copy / OVERLAY.relative_to(OVERLAY.parents[1])
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    placement = [
        {"op": "add", "path": "/spec/scheduling", "value": KWOK_SCHEDULING},
    ]
    kustomization["patches"].append(
        {
            "target": {"group": "slm.dev", "kind": "LocalModel", "name": "chat"},
            "patch": yaml.safe_dump(placement),
        }
    )
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return overlay


def test_gitops_overlay_applies_and_diffs_empty_with_an_hpa(
    cluster: Cluster, plain_install: str, tmp_path: Path
) -> None:
    overlay = kwok_overlay(tmp_path)
    rendered = cluster.kubectl("kustomize", str(overlay)).stdout
    namespace = next(
        d["metadata"]["name"]
        for d in yaml.safe_load_all(rendered)
        if d and d["kind"] == "Namespace"
    )
    try:
        cluster.kubectl("apply", "--server-side", "-k", str(overlay))
        wait_for(
            lambda: (
                cluster.kubectl("get", "hpa", "chat", namespace=namespace, check=False).returncode
                == 0
            ),
            timeout=60,
            what="the operator's HPA",
        )
        wait_ready(cluster, namespace, "chat")
        diff = cluster.kubectl("diff", "--server-side", "-k", str(overlay), check=False)
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
