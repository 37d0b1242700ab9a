"""The model supply end to end on node-0, where pull Jobs, init containers and servers run from
the runtime image under a kubelet and containerd.

The Gemma GGUF is served over plain HTTP from the node's gateway address; every pull verifies it
against its sha256 pin. Volume mode (PVC + pull Job) and PerPod mode (init container) each reach
Ready with the digest in status and the runtime answering; a wrong pin fails with the puller's
message in either mode; models never share a volume, and a change that does not touch the model
does not pull it again. Image mode mounts an OCI image pushed with oras to the CNCF distribution
registry on loopback, which node-0's containerd pulls by digest for the kubelet's image volume.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import GEMMA_TEMPLATE
from tests.pull.conftest import OciRegistry, oci_registry  # noqa: F401 - the registry fixture

from .conftest import REAL_NODE, REAL_NODE_SCHEDULING, Cluster
from .operator_run import InClusterOperator, wait_for

INSTANCE = "app.kubernetes.io/instance"
WRONG = "0" * 64


@pytest.fixture(scope="module")
def gemma_digest(gemma_gguf: Path) -> str:
    """The sha256 of the packaged Gemma GGUF."""
    return hashlib.sha256(gemma_gguf.read_bytes()).hexdigest()


def model(name: str, source: str, sha256: str, mode: str, **extra: Any) -> dict[str, Any]:
    """A small Gemma LocalModel on node-0 in the given cache mode."""
    spec: dict[str, Any] = {
        "model": {"source": source, "sha256": sha256, "allowInsecure": True},
        "cache": {"mode": mode, "size": "1Gi"},
        "hardware": {"preferred": "cpu", "fallback": []},
        "template": GEMMA_TEMPLATE,
        "parameters": {"contextLength": 512, "numPredict": 8, "temperature": 0},
        "serving": {"parallel": 1},
        # Small requests: two models and a rolling update's extra pod fit a 2-core node-0.
        "resources": {"requests": {"cpu": "250m"}},
        "scheduling": REAL_NODE_SCHEDULING,
        **extra,
    }
    return {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "LocalModel",
        "metadata": {"name": name},
        "spec": spec,
    }


def lm_status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """The LocalModel's status."""
    st: dict[str, Any] = cluster.get("localmodel", name, namespace).get("status") or {}
    return st


def wait_phase(
    cluster: Cluster, op: InClusterOperator, namespace: str, name: str, phase: str
) -> dict[str, Any]:
    """Wait for a phase; fail early (with the operator's log) on an unexpected Failed."""

    def reached() -> dict[str, Any] | None:
        st = lm_status(cluster, namespace, name)
        if st.get("phase") == "Failed" and phase != "Failed":
            raise AssertionError(f"{name} Failed: {st}\n{op.log()[-3000:]}")
        return st if st.get("phase") == phase else None

    result: dict[str, Any] = wait_for(
        reached, timeout=300, what=f"{namespace}/{name} {phase}", interval=0.5
    )
    return result


def runtime_pods(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    """The model's server pods."""
    selector = f"{INSTANCE}={name},app.kubernetes.io/name=slm-runtime"
    out = cluster.kubectl("get", "pods", "-l", selector, "-o", "json", namespace=namespace)
    pods: list[dict[str, Any]] = json.loads(out.stdout)["items"]
    return pods


def names(cluster: Cluster, namespace: str, kind: str) -> list[str]:
    """Names of every object of a kind in the namespace."""
    out = cluster.kubectl("get", kind, "-o", "name", namespace=namespace).stdout.split()
    return [line.split("/", 1)[1] for line in out]


def generate(pod: dict[str, Any], name: str) -> str:
    """One raw completion from the pod through the Ollama API."""
    reply = httpx.post(
        f"http://{pod['status']['podIP']}:8080/api/generate",
        json={"model": name, "prompt": "The capital of France is", "raw": True, "stream": False},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    text: str = reply.json()["response"]
    return text


def test_per_pod_mode_pulls_in_the_init_container_and_serves(
    cluster: Cluster,
    operator: InClusterOperator,
    namespace: str,
    model_server: str,
    gemma_digest: str,
    gemma_gguf: Path,
) -> None:
    cluster.apply(model("perpod", model_server, gemma_digest, "PerPod"), namespace)
    st = wait_phase(cluster, operator, namespace, "perpod", "Ready")
    assert st["model"]["digest"] == f"sha256:{gemma_digest}"
    assert st["model"]["sizeBytes"] == gemma_gguf.stat().st_size
    (pod,) = runtime_pods(cluster, namespace, "perpod")
    assert pod["spec"]["nodeName"] == REAL_NODE
    (init,) = pod["status"]["initContainerStatuses"]
    assert init["name"] == "pull"
    assert init["state"]["terminated"]["exitCode"] == 0
    assert json.loads(init["state"]["terminated"]["message"])["digest"] == f"sha256:{gemma_digest}"
    assert names(cluster, namespace, "jobs") == []
    assert names(cluster, namespace, "pvc") == []
    assert generate(pod, "perpod").strip()


@pytest.mark.parametrize("mode", ["Volume", "PerPod"])
def test_a_wrong_digest_fails_with_the_pullers_message(
    cluster: Cluster,
    operator: InClusterOperator,
    namespace: str,
    model_server: str,
    gemma_digest: str,
    mode: str,
) -> None:
    cluster.apply(model("pinned-wrong", model_server, WRONG, mode), namespace)
    st = wait_phase(cluster, operator, namespace, "pinned-wrong", "Failed")
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "DigestMismatch"
    # The puller's own words, naming both digests.
    assert f"expected sha256:{WRONG}" in ready["message"]
    assert f"got sha256:{gemma_digest}" in ready["message"]
    assert not [p for p in runtime_pods(cluster, namespace, "pinned-wrong") if _ready(p)]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_models_with_one_source_never_share_a_volume_and_pull_only_when_needed(
    cluster: Cluster,
    operator: InClusterOperator,
    namespace: str,
    model_server: str,
    gemma_digest: str,
) -> None:
    cluster.apply(model("first", model_server, gemma_digest, "Volume"), namespace)
    wait_phase(cluster, operator, namespace, "first", "Ready")
    first_jobs = names(cluster, namespace, "jobs")
    first_pvcs = names(cluster, namespace, "pvc")
    assert len(first_jobs) == 1
    assert len(first_pvcs) == 1

    # A second model with the same source pulls into a volume of its own.
    cluster.apply(model("second", model_server, gemma_digest, "Volume"), namespace)
    wait_phase(cluster, operator, namespace, "second", "Ready")
    second_pvcs = sorted(set(names(cluster, namespace, "pvc")) - set(first_pvcs))
    assert len(second_pvcs) == 1
    (second,) = runtime_pods(cluster, namespace, "second")
    claims = [v["persistentVolumeClaim"]["claimName"] for v in second["spec"]["volumes"]
              if "persistentVolumeClaim" in v]  # fmt: skip
    assert claims == second_pvcs

    # A parameter change rolls the pods of the first model but pulls nothing again.
    before = {p["metadata"]["name"] for p in runtime_pods(cluster, namespace, "first")}
    cluster.kubectl(
        "patch", "localmodel", "first", "--type=merge",
        "-p", json.dumps({"spec": {"parameters": {"temperature": 0.5}}}), namespace=namespace,
    )  # fmt: skip

    def rolled() -> list[dict[str, Any]]:
        pods = runtime_pods(cluster, namespace, "first")
        fresh = [p for p in pods if p["metadata"]["name"] not in before and _ready(p)]
        return fresh if len(pods) == 1 else []

    (pod,) = wait_for(rolled, timeout=300, what="first's pods to roll", interval=0.5)
    assert [j for j in names(cluster, namespace, "jobs") if j.startswith("first-")] == first_jobs
    assert set(first_pvcs) <= set(names(cluster, namespace, "pvc"))
    assert generate(pod, "first").strip()


def test_image_mode_mounts_the_model_image_by_digest(
    cluster: Cluster,
    operator: InClusterOperator,
    namespace: str,
    oci_registry: OciRegistry,  # noqa: F811 - the imported fixture
    gemma_gguf: Path,
) -> None:
    """containerd mounts image volumes from images whose layers are tar archives (it does not
    unpack other OCI artifacts): an image of one layer holding /model.gguf, pushed with oras."""
    registry = oci_registry
    stage = registry.workdir / "image"
    stage.mkdir()
    with tarfile.open(stage / "model.tar", "w") as layer:
        layer.add(gemma_gguf, arcname="model.gguf")
    diff_id = "sha256:" + hashlib.sha256((stage / "model.tar").read_bytes()).hexdigest()
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    (stage / "config.json").write_text(json.dumps(image_config))
    pushed = registry.oras(
        "push", "--plain-http", "--format", "json",
        "--config", "config.json:application/vnd.oci.image.config.v1+json",
        f"{registry.host}/models/gemma-image:270m",
        "model.tar:application/vnd.oci.image.layer.v1.tar",
        cwd=stage,
    )  # fmt: skip
    manifest = json.loads(pushed)["digest"]
    source = f"oci://{registry.host}/models/gemma-image@{manifest}"
    body = model("image", source, "", "Image")
    del body["spec"]["model"]["sha256"]
    body["spec"]["model"]["format"] = "gguf"
    cluster.apply(body, namespace)
    wait_phase(cluster, operator, namespace, "image", "Ready")
    (pod,) = runtime_pods(cluster, namespace, "image")
    assert pod["spec"]["nodeName"] == REAL_NODE
    (volume,) = [v for v in pod["spec"]["volumes"] if "image" in v]
    assert volume["image"]["reference"] == f"{registry.host}/models/gemma-image@{manifest}"
    assert names(cluster, namespace, "jobs") == []
    assert generate(pod, "image").strip()


def test_a_model_damaged_on_the_volume_is_refused_and_pulled_again(
    cluster: Cluster,
    operator: InClusterOperator,
    namespace: str,
    model_server: str,
    gemma_digest: str,
) -> None:
    cluster.apply(model("damaged", model_server, gemma_digest, "Volume"), namespace)
    wait_phase(cluster, operator, namespace, "damaged", "Ready")
    (pvc,) = names(cluster, namespace, "pvc")
    volume = cluster.get("pvc", pvc, namespace)["spec"]["volumeName"]
    path = Path(cluster.get("pv", volume)["spec"]["hostPath"]["path"]) / "model.gguf"
    with path.open("r+b") as handle:  # one flipped byte, as a bad disk would leave it
        handle.seek(path.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    (pod,) = runtime_pods(cluster, namespace, "damaged")
    cluster.kubectl("delete", "pod", pod["metadata"]["name"], "--wait=false", namespace=namespace)

    wait_phase(cluster, operator, namespace, "damaged", "Degraded")
    wait_for(
        lambda: next(
            c for c in lm_status(cluster, namespace, "damaged")["conditions"]
            if c["type"] == "Degraded"
        )["reason"] == "ModelCorrupt",
        timeout=120, what="Degraded=ModelCorrupt", interval=0.5,
    )  # fmt: skip
    degraded = next(
        c for c in lm_status(cluster, namespace, "damaged")["conditions"] if c["type"] == "Degraded"
    )
    assert f"recorded sha256:{gemma_digest}" in degraded["message"]

    # The documented fix: delete the pull Job; its replacement pulls the model again.
    (job,) = names(cluster, namespace, "jobs")
    cluster.kubectl("delete", "job", job, namespace=namespace)
    wait_phase(cluster, operator, namespace, "damaged", "Ready")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == gemma_digest
