"""The operator on the real control plane, running as a subprocess under its own RBAC.

kwok nodes (cpu-0, cpu-1, gpu-0 with nvidia.com/gpu, npu-0 with intel.com/npu) take the pods
whose placement is under test; kwok marks them Ready and completes Jobs without running them.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import GEMMA_TEMPLATE, ROOT
from tests.images.conftest import docker_engine, image_names

from .conftest import (
    CACHE,
    KWOK_SCHEDULING,
    KWOK_TOLERATION,
    NODE_GATEWAY,
    REAL_NODE,
    REAL_NODE_SCHEDULING,
    TINY_ONNX,
    VERSIONS,
    Cluster,
    hold_device,
)
from .operator_run import InClusterOperator, wait_for, writes_by

INSTANCE = "app.kubernetes.io/instance"
LOCALMODELS = "localmodels.slm.dev"
"""Fully qualified: other suites on the shared cluster create CRDs of the same kind."""
SERVICE_MONITOR_CRD_FILE = next(
    (CACHE / "bin").glob("servicemonitor-crd-*.yaml"), CACHE / "bin" / "servicemonitor-crd.yaml"
)
INFERENCE_POOL_CRD_FILE = (
    CACHE / "bin" / f"inferencepool-crd-{VERSIONS['INFERENCE_EXTENSION_VERSION']}.yaml"
)
INFERENCE_POOL_CRD = "inferencepools.inference.networking.k8s.io"
INVALID_SPECS = ROOT / "tests" / "data" / "invalid-specs.yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@pytest.fixture(scope="module")
def operator_values() -> list[str]:
    """The slowest resync allowed, so the at-rest audit window spans one."""
    return ["--set", "operator.resyncSeconds=60"]


def localmodel(name: str, **spec: Any) -> dict[str, Any]:
    """A LocalModel with a GGUF source that kwok-run pull Jobs never fetch."""
    body: dict[str, Any] = {
        "model": {"source": "https://models.example/gemma-3-270m-q4_k_m.gguf"},
        "hardware": {"preferred": "cpu", "fallback": []},
        "scheduling": KWOK_SCHEDULING,
    }
    for key, value in spec.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    return {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "LocalModel",
        "metadata": {"name": name},
        "spec": body,
    }


def status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """The LocalModel's status (empty until the operator writes one)."""
    obj = cluster.get(LOCALMODELS, name, namespace)
    result: dict[str, Any] = obj.get("status") or {}
    return result


def condition(st: dict[str, Any], kind: str) -> dict[str, Any]:
    """One condition of a status."""
    return next((c for c in st.get("conditions", []) if c["type"] == kind), {})


def wait_phase(
    cluster: Cluster, namespace: str, name: str, phase: str, timeout: float = 90
) -> dict[str, Any]:
    """Wait until the LocalModel reports ``phase``; return its status."""
    result: dict[str, Any] = wait_for(
        lambda: (s := status(cluster, namespace, name)).get("phase") == phase and s,
        timeout=timeout,
        what=f"{namespace}/{name} phase {phase}",
    )
    return result


def _get_name(cluster: Cluster, namespace: str, kind: str, name: str) -> str | None:
    """``kind/name`` when the object exists, "" when kubectl says it does not, None when
    kubectl cannot tell (an error, such as a kind whose CRD was installed a moment ago)."""
    result = cluster.kubectl(
        "get", kind, name, "-o", "name", "--ignore-not-found", namespace=namespace, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else None


def exists(cluster: Cluster, namespace: str, kind: str, name: str) -> bool:
    """Whether an object exists."""
    return bool(_get_name(cluster, namespace, kind, name))


def gone(cluster: Cluster, namespace: str, kind: str, name: str) -> bool:
    """Whether kubectl answers that the object does not exist."""
    return _get_name(cluster, namespace, kind, name) == ""


def test_model_on_kwok_nodes_reaches_ready(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    cluster.apply(localmodel("gemma"), namespace)
    st = wait_phase(cluster, namespace, "gemma", "Ready")
    assert st["backend"] == "cpu"
    assert st["endpoint"] == f"http://gemma.{namespace}.svc:8080"
    assert st["readyReplicas"] == 1
    assert condition(st, "Ready")["status"] == "True"
    assert condition(st, "Placed")["reason"] == "Placed"
    for kind, name in [
        ("configmap", "gemma-config"),
        ("deployment", "gemma"),
        ("service", "gemma"),
    ]:
        obj = cluster.get(kind, name, namespace)
        owner = obj["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("LocalModel", "gemma", True)
    printed = cluster.kubectl("get", "lm", "gemma", namespace=namespace).stdout
    assert "Ready" in printed
    assert "cpu" in printed


def test_spec_that_cannot_work_fails_with_a_message(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    # The API server accepts it; only the operator's catalog knows that no NPU runtime serves
    # GGUF, and the spec allows no other tier.
    cluster.apply(localmodel("npu-only", hardware={"preferred": "npu", "fallback": []}), namespace)
    st = wait_phase(cluster, namespace, "npu-only", "Failed")
    ready = condition(st, "Ready")
    assert ready["status"] == "False"
    assert ready["reason"] == "InvalidSpec"
    assert "spec.hardware" in ready["message"]
    assert "gguf" in ready["message"]
    assert gone(cluster, namespace, "deployment", "npu-only")


def test_npu_preferred_gguf_falls_back_to_gpu_with_reason(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    cluster.apply(
        localmodel("npu-first", hardware={"preferred": "npu", "fallback": ["gpu", "cpu"]}),
        namespace,
    )
    st = wait_for(
        lambda: (s := status(cluster, namespace, "npu-first")).get("backend") and s,
        timeout=60,
        what="a backend",
    )
    assert st["backend"] == "gpu"
    assert "npu" in st["fallbackReason"]
    assert "gguf" in st["fallbackReason"]
    pod_spec = cluster.get("deployment", "npu-first", namespace)["spec"]["template"]["spec"]
    limits = pod_spec["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    assert pod_spec["runtimeClassName"] == "nvidia"
    strategy = cluster.get("deployment", "npu-first", namespace)["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxSurge"] == 0


def test_full_gpu_steps_down_to_cpu_after_fallback_after(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    # Occupy the only GPU, then ask for one.
    hold_device(cluster, namespace, "gpu-0", "nvidia.com/gpu")
    cluster.apply(
        localmodel(
            "gpu-first", hardware={"preferred": "gpu", "fallback": ["cpu"], "fallbackAfter": "3s"}
        ),
        namespace,
    )
    st = wait_for(
        lambda: (s := status(cluster, namespace, "gpu-first")).get("backend") == "cpu" and s,
        timeout=90,
        what="the step down to cpu",
    )
    assert "unschedulable" in st["fallbackReason"]
    events = cluster.kubectl(
        "get", "events", "--field-selector", "involvedObject.name=gpu-first", "-o", "json",
        namespace=namespace,
    ).stdout  # fmt: skip
    assert "FellBack" in events
    wait_phase(cluster, namespace, "gpu-first", "Ready")
    deployment = cluster.get("deployment", "gpu-first", namespace)
    assert deployment["metadata"]["annotations"]["slm.dev/tier"] == "cpu"
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"].get("limits", {})
    assert "nvidia.com/gpu" not in limits
    # The GPU frees up and the operator restarts: the model stays where the timer put it.
    cluster.kubectl("delete", "pod", "gpu-hog", "--grace-period=0", "--force", namespace=namespace)
    wait_for(lambda: gone(cluster, namespace, "pod", "gpu-hog"), timeout=30, what="GPU freed")
    operator.restart()
    st = wait_phase(cluster, namespace, "gpu-first", "Ready")
    assert st["backend"] == "cpu"
    deployment = cluster.get("deployment", "gpu-first", namespace)
    assert deployment["metadata"]["annotations"]["slm.dev/tier"] == "cpu"


def test_no_tier_with_capacity_is_progressing_not_failed(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    cluster.apply(
        localmodel(
            "nowhere",
            hardware={"preferred": "gpu", "fallback": []},
            scheduling={"nodeSelector": {"slm.dev/test": "no-such-node"}},
        ),
        namespace,
    )
    st = wait_for(
        lambda: (
            condition(s := status(cluster, namespace, "nowhere"), "Placed").get("reason")
            == "NoCapacity"
            and s
        ),
        timeout=60,
        what="Placed=False NoCapacity",
    )
    assert condition(st, "Placed")["status"] == "False"
    assert st["phase"] != "Failed"
    assert exists(cluster, namespace, "deployment", "nowhere")


def test_drift_is_repaired_from_watches(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    cluster.apply(localmodel("drift"), namespace)
    wait_phase(cluster, namespace, "drift", "Ready")
    cluster.kubectl("delete", "service", "drift", namespace=namespace)
    wait_for(
        lambda: exists(cluster, namespace, "service", "drift"), timeout=10, what="Service back"
    )
    cluster.kubectl("delete", "configmap", "drift-config", namespace=namespace)
    wait_for(
        lambda: exists(cluster, namespace, "configmap", "drift-config"),
        timeout=10,
        what="ConfigMap back",
    )
    cluster.kubectl(
        "patch", "deployment", "drift", "--type=merge",
        "-p", json.dumps({"spec": {"revisionHistoryLimit": 9}}),
        namespace=namespace,
    )  # fmt: skip
    wait_for(
        lambda: cluster.get("deployment", "drift", namespace)["spec"]["revisionHistoryLimit"] != 9,
        timeout=10,
        what="Deployment edit reverted",
    )


def test_parameter_change_rolls_pods_and_scale_works(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    cluster.apply(localmodel("roll"), namespace)
    wait_phase(cluster, namespace, "roll", "Ready")
    before = cluster.get("deployment", "roll", namespace)["spec"]["template"]["metadata"]
    cluster.kubectl(
        "patch", "localmodel", "roll", "--type=merge",
        "-p", json.dumps({"spec": {"parameters": {"temperature": 0.2}}}), namespace=namespace,
    )  # fmt: skip
    wait_for(
        lambda: (
            "temperature: 0.2"
            in cluster.get("configmap", "roll-config", namespace)["data"]["config.yaml"]
        ),
        timeout=20,
        what="the ConfigMap to carry the new default",
    )
    after = cluster.get("deployment", "roll", namespace)["spec"]["template"]["metadata"]
    assert (
        after["annotations"]["slm.dev/config-hash"] != before["annotations"]["slm.dev/config-hash"]
    )

    cluster.kubectl("scale", "localmodel", "roll", "--replicas=2", namespace=namespace)
    wait_for(
        lambda: cluster.get("deployment", "roll", namespace)["spec"]["replicas"] == 2,
        timeout=20,
        what="the Deployment to scale",
    )
    wait_for(lambda: exists(cluster, namespace, "pdb", "roll"), timeout=20, what="a PDB")
    st = wait_for(
        lambda: (s := status(cluster, namespace, "roll")).get("readyReplicas") == 2 and s,
        timeout=60,
        what="two ready replicas",
    )
    assert st[
        "selector"
    ] == "app.kubernetes.io/instance=roll,app.kubernetes.io/name=slm-runtime" or (
        "app.kubernetes.io/instance=roll" in st["selector"]
    )
    cluster.kubectl("scale", "localmodel", "roll", "--replicas=1", namespace=namespace)
    wait_for(lambda: gone(cluster, namespace, "pdb", "roll"), timeout=20, what="PDB pruned")


def test_deletion_garbage_collects_children(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    cluster.apply(localmodel("gone"), namespace)
    wait_for(lambda: exists(cluster, namespace, "deployment", "gone"), timeout=60, what="children")
    cluster.kubectl("delete", "localmodel", "gone", namespace=namespace)
    wait_for(
        lambda: (
            gone(cluster, namespace, "deployment", "gone")
            and gone(cluster, namespace, "configmap", "gone-config")
        ),
        timeout=60,
        what="garbage collection",
    )


def on_real_node(name: str, source: str, sha256: str, **spec: Any) -> dict[str, Any]:
    """The Gemma example, pinned to node-0 where its pods run from the runtime image."""
    base: dict[str, Any] = {
        "model": {"source": source, "sha256": sha256, "allowInsecure": True},
        "cache": {"size": "1Gi"},
        "template": GEMMA_TEMPLATE,
        "parameters": {
            "contextLength": 1024,
            "numPredict": 12,
            "temperature": 0,
            "stop": ["<end_of_turn>"],
        },
        "serving": {"parallel": 1},
        "scheduling": REAL_NODE_SCHEDULING,
    }
    for key, value in spec.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return localmodel(name, **base)


def test_gemma_on_the_real_node_pulls_serves_and_answers(
    cluster: Cluster,
    operator: InClusterOperator,
    namespace: str,
    model_server: str,
    gemma_gguf: Path,
) -> None:
    digest = hashlib.sha256(gemma_gguf.read_bytes()).hexdigest()
    cluster.apply(on_real_node("gemma", model_server, digest), namespace)
    phases = set()

    def ready() -> dict[str, Any] | None:
        st = status(cluster, namespace, "gemma")
        phases.add(st.get("phase"))
        if st.get("phase") == "Failed":
            raise AssertionError(f"Failed: {st}\n{operator.log()[-3000:]}")
        return st if st.get("phase") == "Ready" else None

    st = wait_for(ready, timeout=300, what="the node-0 model to be Ready", interval=0.5)
    assert "Pulling" in phases or "Deploying" in phases
    assert st["model"]["digest"] == f"sha256:{digest}"
    assert st["model"]["sizeBytes"] == gemma_gguf.stat().st_size
    pods = json.loads(
        cluster.kubectl(
            "get", "pods", "-l", f"{INSTANCE}=gemma,app.kubernetes.io/name=slm-runtime",
            "-o", "json", namespace=namespace,
        ).stdout
    )["items"]  # fmt: skip
    assert len(pods) == 1
    assert pods[0]["spec"]["nodeName"] == REAL_NODE
    (server,) = pods[0]["status"]["containerStatuses"]
    assert server["imageID"] == docker_engine().inspect(image_names()["SLM_RUNTIME_IMAGE"])["Id"]
    # The kubelet's own probes: the loading model was never restarted by its liveness probe.
    assert server["restartCount"] == 0
    ip = pods[0]["status"]["podIP"]
    reply = httpx.post(
        f"http://{ip}:8080/v1/chat/completions",
        json={
            "model": "gemma",
            "messages": [{"role": "user", "content": "Name a primary colour."}],
            "max_tokens": 12,
            "temperature": 0,
        },
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    answer = reply.json()["choices"][0]["message"]["content"]
    assert answer.strip()


@contextlib.contextmanager
def held_file_server(
    host: str, path: Path
) -> Iterator[tuple[str, threading.Event, threading.Event]]:
    """Serve ``path`` over HTTP, holding every request until ``release`` is set.

    Yields the file's URL, ``asked`` (set by the first request: a pull has begun) and
    ``release``; a pull cannot finish while it is held.
    """
    asked, release = threading.Event(), threading.Event()

    class Held(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(path.parent), **kwargs)

        def do_GET(self) -> None:
            asked.set()
            release.wait(timeout=300)
            super().do_GET()

        def do_HEAD(self) -> None:
            asked.set()
            release.wait(timeout=300)
            super().do_HEAD()

    server = http.server.ThreadingHTTPServer((host, 0), Held)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/{path.name}", asked, release
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def ready_pod_ips(cluster: Cluster, namespace: str, name: str) -> list[str]:
    """IPs of the model's runtime pods whose Ready condition is True."""
    pods = json.loads(
        cluster.kubectl(
            "get", "pods", "-l", f"{INSTANCE}={name},app.kubernetes.io/name=slm-runtime",
            "-o", "json", namespace=namespace,
        ).stdout
    )["items"]  # fmt: skip
    return [
        pod["status"]["podIP"]
        for pod in pods
        if condition(pod["status"], "Ready").get("status") == "True"
    ]


def test_available_during_a_first_pull_waits_for_a_replica_that_answers(
    cluster: Cluster, operator: InClusterOperator, namespace: str, gemma_gguf: Path
) -> None:
    """`kubectl wait --for=condition=Available` started while the first pull runs returns only
    once a replica serves: the Deployment held at zero replicas meanwhile is no scale to zero."""
    digest = hashlib.sha256(gemma_gguf.read_bytes()).hexdigest()
    with held_file_server(NODE_GATEWAY, gemma_gguf) as (url, asked, release):
        cluster.apply(on_real_node("waited", url, digest), namespace)
        wait_for(asked.is_set, timeout=120, what="the pull Job to ask for the model")
        st = wait_phase(cluster, namespace, "waited", "Pulling", timeout=60)
        deployment = cluster.get("deployment", "waited", namespace)
        assert deployment["spec"]["replicas"] == 0  # held while the model is pulled
        assert condition(st, "Available")["status"] == "False", st
        assert condition(st, "Available")["reason"] == "MinimumReplicasUnavailable", st

        waiter = subprocess.Popen(
            ["kubectl", "--kubeconfig", str(cluster.kubeconfig), "wait", "-n", namespace,
             "--for=condition=Available", f"{LOCALMODELS}/waited", "--timeout=300s"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        release.set()
        out, err = waiter.communicate(timeout=330)
        assert waiter.returncode == 0, f"{out}{err}\n{operator.log()[-3000:]}"
        ips = ready_pod_ips(cluster, namespace, "waited")
        assert ips, "kubectl wait returned with no ready runtime pod"
        reply = httpx.post(
            f"http://{ips[0]}:8080/api/generate",
            json={"model": "waited", "prompt": "Name a primary colour.", "stream": False},
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["response"].strip()


def test_status_shows_the_placed_tier_and_the_device_the_runtime_serves_on(
    cluster: Cluster,
    operator: InClusterOperator,
    namespace: str,
    npu_on_the_real_node: str,
    fixtures_claim: str,
) -> None:
    """Placed on the NPU tier of a node that only advertises one, the runtime cannot open the
    NPU and serves on the CPU: status says both, and a Warning Event says why."""
    body = localmodel(
        "fallen",
        model={"source": f"pvc://{fixtures_claim}/{TINY_ONNX.name}", "format": "onnx"},
        hardware={"preferred": "npu", "fallback": ["cpu"]},
        parameters={"numPredict": 4, "temperature": 0},
        serving={"parallel": 1},
        scheduling=REAL_NODE_SCHEDULING,
    )
    cluster.apply(body, namespace)

    def served() -> dict[str, Any] | None:
        st = status(cluster, namespace, "fallen")
        if st.get("phase") == "Failed":
            raise AssertionError(f"Failed: {st}\n{operator.log()[-3000:]}")
        return st if st.get("phase") == "Ready" and st.get("backend") == "cpu" else None

    st = wait_for(served, timeout=240, what="the runtime's device in status", interval=0.5)
    assert st["placedTier"] == "npu"
    pods = json.loads(
        cluster.kubectl(
            "get", "pods", "-l", f"{INSTANCE}=fallen", "-o", "json", namespace=namespace
        ).stdout
    )["items"]  # fmt: skip
    assert [p["spec"]["nodeName"] for p in pods] == [npu_on_the_real_node]
    limits = pods[0]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["intel.com/npu"] == "1"
    placed = condition(st, "Placed")
    assert (placed["status"], placed["reason"]) == ("True", "RuntimeFellBack"), placed
    assert f"the runtime in pod {pods[0]['metadata']['name']} serves on cpu" in placed["message"]
    assert "npu: " in placed["message"]  # the runtime's own reason for leaving the NPU
    events = wait_for(
        lambda: json.loads(
            cluster.kubectl(
                "get", "events", "--field-selector", "reason=RuntimeFellBack", "-o", "json",
                namespace=namespace,
            ).stdout
        )["items"],
        timeout=30,
        what="the RuntimeFellBack Event",
    )  # fmt: skip
    assert [(e["type"], e["involvedObject"]["name"]) for e in events] == [("Warning", "fallen")]
    assert "serves on cpu" in events[0]["message"]


def test_a_model_over_its_memory_limit_says_it_was_oom_killed(
    cluster: Cluster, operator: InClusterOperator, namespace: str, fixtures_claim: str
) -> None:
    """node-0's kubelet enforces the memory limit: the runtime is OOMKilled, and the model's
    status names the container, the limit and the fields to change."""
    body = localmodel(
        "cramped",
        model={"source": f"pvc://{fixtures_claim}/{TINY_ONNX.name}", "format": "onnx"},
        resources={"requests": {"memory": "48Mi"}, "limits": {"memory": "48Mi"}},
        serving={"parallel": 1},
        scheduling=REAL_NODE_SCHEDULING,
    )
    cluster.apply(body, namespace)
    st = wait_for(
        lambda: (
            condition(s := status(cluster, namespace, "cramped"), "Degraded").get("reason")
            == "OutOfMemory"
            and s
        ),
        timeout=180,
        what="Degraded=OutOfMemory",
    )
    assert st["phase"] == "Degraded"
    message = condition(st, "Degraded")["message"]
    assert "container server was OOMKilled" in message
    assert "memory limit of 48Mi" in message
    assert "raise spec.resources.limits.memory" in message
    pods = json.loads(
        cluster.kubectl("get", "pods", "-l", f"{INSTANCE}=cramped", "-o", "json",
                        namespace=namespace).stdout
    )["items"]  # fmt: skip
    assert [p["spec"]["nodeName"] for p in pods] == [REAL_NODE]
    (server,) = pods[0]["status"]["containerStatuses"]
    killed = (server.get("lastState") or {}).get("terminated") or server["state"]["terminated"]
    assert killed["reason"] == "OOMKilled"


def test_service_monitor_follows_monitoring_setting(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    cluster.apply(localmodel("scraped"), namespace)
    wait_for(
        lambda: exists(cluster, namespace, "servicemonitor", "scraped"),
        timeout=60,
        what="a ServiceMonitor",
    )
    monitor = cluster.get("servicemonitor", "scraped", namespace)
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    cluster.kubectl(
        "patch", "localmodel", "scraped", "--type=merge",
        "-p", json.dumps({"spec": {"monitoring": {"serviceMonitor": False}}}), namespace=namespace,
    )  # fmt: skip
    wait_for(
        lambda: gone(cluster, namespace, "servicemonitor", "scraped"),
        timeout=30,
        what="the ServiceMonitor to be pruned",
    )


def test_without_the_service_monitor_crd_a_condition_says_so(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    crd_file = SERVICE_MONITOR_CRD_FILE
    cluster.kubectl("delete", "crd", "servicemonitors.monitoring.coreos.com")
    try:
        cluster.apply(localmodel("unmonitored"), namespace)
        st = wait_phase(cluster, namespace, "unmonitored", "Ready")
        degraded = condition(st, "Degraded")
        assert degraded["status"] == "False"
        assert degraded["reason"] == "ServiceMonitorUnsupported"
        assert "ServiceMonitor" in degraded["message"]
    finally:
        cluster.kubectl("apply", "--server-side", "-f", str(crd_file))
        cluster.wait_established("servicemonitors.monitoring.coreos.com")
    # The CRD is back: the ServiceMonitor follows without any change to the LocalModel.
    wait_for(
        lambda: exists(cluster, namespace, "servicemonitor", "unmonitored"),
        timeout=60,
        what="the ServiceMonitor once the CRD exists",
    )
    # The operator kept watching through all of it: a new model reconciles, with its
    # ServiceMonitor, and hand-deleted children are restored by watches, the ServiceMonitor
    # included (its watch resumed on the re-created CRD; the resync is minutes away).
    cluster.apply(localmodel("after-crd-churn"), namespace)
    wait_phase(cluster, namespace, "after-crd-churn", "Ready")
    assert exists(cluster, namespace, "servicemonitor", "after-crd-churn")
    for kind in ("service", "servicemonitor"):
        cluster.kubectl("delete", kind, "unmonitored", namespace=namespace)
        wait_for(
            lambda kind=kind: exists(cluster, namespace, kind, "unmonitored"),
            timeout=30,
            what=f"the {kind} restored after a hand delete",
        )
    assert operator.alive(), operator.log()[-4000:]


def test_an_inference_pool_follows_its_crd_and_the_spec(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    """The Gateway API Inference Extension's InferencePool (its CRD from the extension's Go
    module; no gateway or endpoint picker runs here): made once the CRD exists, over the model's
    own pods, and pruned when the spec no longer asks for it."""
    picker = {"name": "pooled-epp", "failureMode": "FailOpen"}
    pooled = localmodel(
        "pooled", serving={"inferencePool": {"enabled": True, "endpointPickerRef": picker}}
    )
    cluster.kubectl("delete", "crd", INFERENCE_POOL_CRD, "--ignore-not-found")
    try:
        cluster.apply(pooled, namespace)
        degraded = condition(wait_phase(cluster, namespace, "pooled", "Ready"), "Degraded")
        assert (degraded["status"], degraded["reason"]) == ("False", "InferencePoolUnsupported")
        assert "spec.serving.inferencePool.enabled" in degraded["message"]

        cluster.kubectl("apply", "--server-side", "-f", str(INFERENCE_POOL_CRD_FILE))
        cluster.wait_established(INFERENCE_POOL_CRD)
        # The CRD is there: the pool follows without any change to the LocalModel.
        wait_for(
            lambda: exists(cluster, namespace, "inferencepool", "pooled"),
            timeout=60,
            what="the InferencePool once its CRD exists",
        )
        pool = cluster.get("inferencepool", "pooled", namespace)["spec"]
        assert pool["targetPorts"] == [{"number": 8080}]
        assert pool["endpointPickerRef"] == {
            "group": "", "kind": "Service", "name": "pooled-epp", "port": {"number": 9002},
            "failureMode": "FailOpen",
        }  # fmt: skip
        selector = ",".join(f"{k}={v}" for k, v in pool["selector"]["matchLabels"].items())
        members = cluster.kubectl(
            "get", "pods", "-l", selector, "-o", "jsonpath={.items[*].metadata.name}",
            namespace=namespace,
        ).stdout.split()  # fmt: skip
        served = cluster.get("deployment", "pooled", namespace)["spec"]["selector"]["matchLabels"]
        assert pool["selector"]["matchLabels"] == served
        assert members, "the pool selects no pod"
        assert not [name for name in members if "-pull-" in name], "the pool holds pull pods"
        wait_for(
            lambda: (
                condition(status(cluster, namespace, "pooled"), "Degraded").get("reason")
                == "AsExpected"
            ),
            timeout=30,
            what="the note to go",
        )

        cluster.kubectl(
            "patch", "localmodel", "pooled", "--type=merge",
            "-p", json.dumps({"spec": {"serving": {"inferencePool": {"enabled": False}}}}),
            namespace=namespace,
        )  # fmt: skip
        wait_for(
            lambda: gone(cluster, namespace, "inferencepool", "pooled"),
            timeout=30,
            what="the InferencePool to be pruned",
        )
    finally:
        cluster.kubectl("delete", "crd", INFERENCE_POOL_CRD, "--ignore-not-found")
    assert operator.alive(), operator.log()[-4000:]


def test_pods_are_admitted_under_restricted_pod_security(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    cluster.apply(localmodel("strict"), namespace)
    st = wait_phase(cluster, namespace, "strict", "Ready")
    assert st["readyReplicas"] == 1
    # Both pod templates were admitted: the pull Job's pod and the server's.
    jobs = json.loads(cluster.kubectl("get", "jobs", "-o", "json", namespace=namespace).stdout)
    assert jobs["items"]
    assert all(j["status"].get("succeeded") == 1 for j in jobs["items"])


@pytest.mark.parametrize(
    "case",
    [c for c in yaml.safe_load(INVALID_SPECS.read_text())["cases"] if not c["crd"]],
    ids=lambda c: c["name"],
)
def test_specs_only_the_operator_can_reject_fail_with_a_message(
    cluster: Cluster, operator: InClusterOperator, namespace: str, case: dict[str, Any]
) -> None:
    table = yaml.safe_load(INVALID_SPECS.read_text())
    body = merge_patch(table["base"], case["patch"])
    body["metadata"] = {"name": "invalid"}
    cluster.apply(body, namespace)
    st = wait_phase(cluster, namespace, "invalid", "Failed", timeout=60)
    ready = condition(st, "Ready")
    assert ready["reason"] == "InvalidSpec"
    assert case["field"] in ready["message"]


def test_a_child_the_api_server_refuses_fails_the_model_until_the_spec_is_fixed(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    # Tolerations pass through as written; this one the API server refuses in the Deployment.
    bad = {"key": "dedicated", "operator": "Sometimes", "effect": "NoSchedule"}
    tolerations = [bad, KWOK_TOLERATION]
    cluster.apply(localmodel("refused", scheduling={"tolerations": tolerations}), namespace)
    st = wait_phase(cluster, namespace, "refused", "Failed", timeout=60)
    ready = condition(st, "Ready")
    assert ready["reason"] == "InvalidSpec"
    assert "the API server refused a child" in ready["message"]
    assert "tolerations" in ready["message"]
    fixed = {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}
    tolerations = [fixed, KWOK_TOLERATION]
    cluster.apply(localmodel("refused", scheduling={"tolerations": tolerations}), namespace)
    wait_phase(cluster, namespace, "refused", "Ready")


def test_at_rest_the_operator_writes_nothing(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    names = [f"idle-{i}" for i in range(10)]
    for name in names:
        cluster.apply(localmodel(name), namespace)
    for name in names:
        wait_phase(cluster, namespace, name, "Ready", timeout=120)

    # Let the last status writes and watch events settle: wait until a quiet 5 s window.
    def quiet() -> bool:
        return not writes_by(cluster, operator.username, time.time() - 5, namespace)

    wait_for(quiet, timeout=60, what="the operator to go quiet", interval=1)
    start = time.time()
    window = float(os.environ.get("SLM_AUDIT_WINDOW_SECONDS", "120"))
    time.sleep(window)  # the assertion is about a span of time, so this one waits by design
    writes = writes_by(cluster, operator.username, start, namespace)
    assert writes == [], [
        (w["verb"], w.get("objectRef", {}).get("resource"), w.get("objectRef", {}).get("name"))
        for w in writes
    ]


def test_autoscaling_hands_replicas_to_the_hpa(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    cluster.apply(
        localmodel("scaled", autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 3}),
        namespace,
    )
    wait_for(lambda: exists(cluster, namespace, "hpa", "scaled"), timeout=60, what="an HPA")
    hpa = cluster.get("hpa", "scaled", namespace)
    assert hpa["spec"]["scaleTargetRef"]["name"] == "scaled"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 3)
    deployment = json.loads(
        cluster.kubectl(
            "get", "deployment", "scaled", "-o", "json", "--show-managed-fields",
            namespace=namespace,
        ).stdout
    )  # fmt: skip
    managers = {
        m["manager"]: m.get("fieldsV1", {}) for m in deployment["metadata"]["managedFields"]
    }
    assert "f:replicas" not in json.dumps(managers.get("slm-operator", {}))
    # What the HPA would do; the operator must not undo it.
    cluster.kubectl("scale", "deployment", "scaled", "--replicas=3", namespace=namespace)
    st = wait_for(
        lambda: (s := status(cluster, namespace, "scaled")).get("readyReplicas") == 3 and s,
        timeout=60,
        what="three ready replicas",
    )
    assert st["phase"] == "Ready"
    assert cluster.get("deployment", "scaled", namespace)["spec"]["replicas"] == 3


def test_retained_model_volume_outlives_its_localmodel(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    cluster.apply(localmodel("kept", cache={"reclaimPolicy": "Retain"}), namespace)
    wait_phase(cluster, namespace, "kept", "Ready")
    pvcs = json.loads(cluster.kubectl("get", "pvc", "-o", "json", namespace=namespace).stdout)
    names = [p["metadata"]["name"] for p in pvcs["items"]]
    assert len(names) == 1
    assert names[0].startswith("kept-model-")
    assert not pvcs["items"][0]["metadata"].get("ownerReferences")
    cluster.kubectl("delete", "localmodel", "kept", namespace=namespace)
    wait_for(lambda: gone(cluster, namespace, "deployment", "kept"), timeout=60, what="GC")
    assert exists(cluster, namespace, "pvc", names[0])


def test_operator_metrics(operator: InClusterOperator) -> None:
    text = operator.metrics()
    for family in (
        "slm_operator_reconciles_total",
        "slm_operator_reconcile_errors_total",
        "slm_operator_reconcile_duration_seconds_bucket",
        "slm_operator_writes_total",
        "slm_operator_models{",
    ):
        assert family in text, family


def test_missing_secret_fails_naming_it(
    cluster: Cluster,
    operator: InClusterOperator,
    namespace: str,
    model_server: str,
    gemma_gguf: Path,
) -> None:
    digest = hashlib.sha256(gemma_gguf.read_bytes()).hexdigest()
    body = on_real_node("locked", model_server, digest, serving={"authSecret": "absent-token"})
    cluster.apply(body, namespace)
    st = wait_phase(cluster, namespace, "locked", "Failed", timeout=240)
    ready = condition(st, "Ready")
    assert ready["reason"] == "SecretNotFound"
    assert "absent-token" in ready["message"]
    # Creating the Secret is enough: the kubelet retries and the model comes up.
    cluster.kubectl(
        "create", "secret", "generic", "absent-token", "--from-literal=token=s3cret",
        namespace=namespace,
    )  # fmt: skip
    wait_phase(cluster, namespace, "locked", "Ready", timeout=240)


def test_per_pod_and_image_cache_modes_reconcile(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    digest = "a" * 64
    cluster.apply(localmodel("perpod", cache={"mode": "PerPod"}), namespace)
    cluster.apply(
        localmodel(
            "image",
            model={
                "source": f"oci://registry.example/models/gemma@sha256:{digest}",
                "format": "gguf",
            },
            cache={"mode": "Image"},
        ),
        namespace,
    )
    wait_phase(cluster, namespace, "perpod", "Ready")
    pod_spec = cluster.get("deployment", "perpod", namespace)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod_spec["initContainers"]] == ["pull"]
    assert gone(cluster, namespace, "jobs", "perpod")
    pvcs = cluster.kubectl("get", "pvc", "-o", "name", namespace=namespace).stdout
    assert "perpod" not in pvcs

    wait_for(lambda: exists(cluster, namespace, "deployment", "image"), timeout=60, what="image")
    volumes = cluster.get("deployment", "image", namespace)["spec"]["template"]["spec"]["volumes"]
    image_volumes = [v["image"] for v in volumes if "image" in v]
    assert image_volumes
    assert image_volumes[0]["reference"].endswith(f"@sha256:{digest}")


def test_a_new_models_status_is_written_from_its_children_not_before_them(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    """Status is computed from the API server's answers to the applies, not from caches read
    before them: no status says a child the operator has just created is missing, and the
    phases only move forward."""
    template = '{.status.phase}|{.status.conditions[?(@.type=="Ready")].message}{"\\n"}'
    seen = subprocess.Popen(
        ["kubectl", "--kubeconfig", str(cluster.kubeconfig), "get", LOCALMODELS, "-n", namespace,
         "--field-selector", "metadata.name=counted", "-w", "-o", f"jsonpath={template}"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        cluster.apply(localmodel("counted"), namespace)
        wait_phase(cluster, namespace, "counted", "Ready")
        lines: list[str] = []
        assert seen.stdout is not None
        for line in seen.stdout:  # every version the watch delivered, up to Ready
            lines.append(line.strip())
            if line.startswith("Ready|"):
                break
    finally:
        seen.kill()
        seen.wait()
    statuses = [line for line in lines if line.strip("|")]
    assert statuses, lines
    assert not any("waiting for the pull Job" in line or "not created yet" in line
                   for line in statuses), statuses  # fmt: skip
    # Its phases only move forward (a status read before the applies, or a Deployment held at
    # zero replicas for the pull read as a scale to zero, would go Pulling, Pending, Deploying).
    order = ["Pending", "Pulling", "Deploying", "Ready"]
    steps = [order.index(line.split("|")[0]) for line in statuses]
    assert steps == sorted(steps), statuses
