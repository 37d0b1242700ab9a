"""slm-gateway as the chart installs it: one Service in front of Gemma 3 270M and SmolLM2 running
on node-0 from the runtime image, reached with the real `openai` and `ollama` clients; Gemma,
with `autoscaling.minReplicas: 0`, goes to zero replicas when idle and comes back for the next
request, which the gateway holds meanwhile. The audit log shows that the gateway's only writes
are to the scale subresource of that model's Deployment.

Over two replicas: least load sends a second request to the idle one, prefix affinity keeps a
repeated prompt on one (whose prompt cache answers it), a replica killed mid-stream fails only
that stream, and a rollout of the gateway under load loses no request."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import REAL_NODE, REAL_NODE_SCHEDULING, Cluster, container_pids, file_server
from .operator_run import (
    CHART,
    SUITE_RELEASE,
    SYSTEM_NAMESPACE,
    InClusterOperator,
    wait_for,
    writes_by,
)
from .test_install import phase
from .test_operator import localmodel, on_real_node

pytestmark = pytest.mark.cluster

GATEWAY = f"{SUITE_RELEASE}-gateway"
GATEWAY_USER = f"system:serviceaccount:{SYSTEM_NAMESPACE}:{GATEWAY}"
SMALL = {"requests": {"cpu": "100m", "memory": "384Mi"}, "limits": {"memory": "1Gi"}}
"""Set, not derived (a core per pod): node-0 has two, and models share it with the suite."""


@pytest.fixture(scope="module")
def smollm2_server(smollm2_gguf: Path) -> Iterator[str]:
    """A plain HTTP server on node-0's gateway serving the SmolLM2 GGUF to pods."""
    with file_server(smollm2_gguf) as url:
        yield url


def gateway_url(cluster: Cluster) -> str:
    spec = cluster.get("service", GATEWAY, SYSTEM_NAMESPACE)["spec"]
    return f"http://{spec['clusterIP']}:{spec['ports'][0]['port']}"


def server_pods(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/name=slm-runtime"
    out = cluster.kubectl("get", "pods", "-l", selector, "-o", "json", namespace=namespace).stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


@pytest.mark.timeout(900)
def test_one_gateway_serves_two_models_and_takes_an_idle_one_to_zero_and_back(
    cluster: Cluster,
    operator: InClusterOperator,
    namespace: str,
    model_server: str,
    smollm2_server: str,
    gemma_gguf: Path,
    smollm2_gguf: Path,
) -> None:
    since = time.time()
    gemma = on_real_node(
        "gemma-zero",
        model_server,
        hashlib.sha256(gemma_gguf.read_bytes()).hexdigest(),
        autoscaling={
            "enabled": True,
            "minReplicas": 0,
            "maxReplicas": 1,
            "scaleToZeroAfter": "20s",
            "targetCpuUtilization": None,
        },
        resources=SMALL,
    )
    smollm2 = localmodel(
        "smollm2",
        model={
            "source": smollm2_server,
            "sha256": hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest(),
            "allowInsecure": True,
        },
        cache={"size": "1Gi"},
        parameters={"contextLength": 1024, "numPredict": 12, "temperature": 0},
        serving={"parallel": 1},
        resources=SMALL,
        scheduling=REAL_NODE_SCHEDULING,
    )
    cluster.apply(gemma, namespace)
    cluster.apply(smollm2, namespace)
    for name in ("gemma-zero", "smollm2"):
        wait_for(lambda n=name: phase(cluster, namespace, n) == "Ready", timeout=300,
                 what=f"{name} Ready", interval=0.5)  # fmt: skip

    url = gateway_url(cluster)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    # A name that another namespace also has (one a test left terminating) is listed with its
    # namespace; NAMESPACE/NAME always names one.
    listed = {m.id for m in client.models.list()}
    for name in ("gemma-zero", "smollm2"):
        assert name in listed or f"{namespace}/{name}" in listed, listed
    reply = client.chat.completions.create(
        model=f"{namespace}/smollm2", messages=[{"role": "user", "content": "Say hello."}]
    )
    assert reply.choices[0].message.content
    streamed = client.chat.completions.create(
        model=f"{namespace}/smollm2",
        messages=[{"role": "user", "content": "Count to three."}],
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    local = ollama.Client(host=url, timeout=120)
    answer = local.generate(model="gemma-zero", prompt="The capital of France is", raw=True)
    assert answer.response
    assert answer.done
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="hi")
    with pytest.raises(ollama.ResponseError) as missing:
        local.generate(model="no-such-model", prompt="hi")
    assert missing.value.status_code == 404

    # Idle for scaleToZeroAfter: the gateway takes Gemma to zero; the operator reports it.
    wait_for(lambda: phase(cluster, namespace, "gemma-zero") == "ScaledToZero", timeout=120,
             what="gemma-zero ScaledToZero", interval=0.5)  # fmt: skip
    assert cluster.get("deployment", "gemma-zero", namespace)["spec"]["replicas"] == 0
    wait_for(lambda: not server_pods(cluster, namespace, "gemma-zero"), timeout=60,
             what="gemma-zero's pod gone")  # fmt: skip
    status = cluster.get("localmodel", "gemma-zero", namespace)["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ScaledToZero")
    assert "the gateway scales it to 1" in ready["message"]
    listed = cluster.kubectl("get", "lm", "gemma-zero", namespace=namespace).stdout
    assert "ScaledToZero" in listed

    # The next request is held while one replica starts, then streams its answer.
    started = time.monotonic()
    tokens = [
        c.choices[0].text
        for c in client.completions.create(
            model="gemma-zero", prompt="Once upon a time", max_tokens=8, stream=True
        )
    ]
    cold = time.monotonic() - started
    assert "".join(tokens)
    (pod,) = server_pods(cluster, namespace, "gemma-zero")
    assert pod["spec"]["nodeName"] == REAL_NODE
    print(f"cold start through the gateway: {cold:.1f}s")

    # Idle again: back to zero.
    wait_for(lambda: phase(cluster, namespace, "gemma-zero") == "ScaledToZero", timeout=120,
             what="gemma-zero ScaledToZero again", interval=0.5)  # fmt: skip

    writes = writes_by(cluster, GATEWAY_USER, since, carried_out=True)
    done = [
        (w["verb"], w["objectRef"].get("resource"), w["objectRef"].get("subresource"),
         w["objectRef"].get("namespace"), w["objectRef"].get("name"))
        for w in writes
    ]  # fmt: skip
    assert done == [("patch", "deployments", "scale", namespace, "gemma-zero")] * 3, done


def pod_metric(pod: dict[str, Any], name: str, **labels: str) -> float:
    """The sum of a runtime pod's samples ``name`` whose labels include ``labels``."""
    text = httpx.get(f"http://{pod['status']['podIP']}:8080/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


@pytest.mark.timeout(900)
def test_two_replicas_balanced_by_load_and_by_prefix_and_a_replica_and_the_gateway_lost(
    cluster: Cluster,
    operator: InClusterOperator,
    namespace: str,
    model_server: str,
    gemma_gguf: Path,
) -> None:
    # A second, gateway-only release (no operator replica) that balances by prompt prefix over
    # this namespace; the suite's gateway balances by load.
    release = "affinity"
    cluster.helm(
        "install", release, str(CHART), "--namespace", namespace, "--wait", "--timeout", "180s",
        "--set", "crds.enabled=false", "--set", "rbac.aggregateToDefaultRoles=false",
        "--set", "replicaCount=0", "--set", f"watchNamespaces={{{namespace}}}",
        "--set", "gateway.balance=PrefixAffinity", "--set", "gateway.prefixLength=512",
    )  # fmt: skip
    try:
        _balancing(cluster, namespace, model_server, gemma_gguf, release)
    finally:
        cluster.helm("uninstall", release, "--namespace", namespace, check=False)


def _balancing(
    cluster: Cluster, namespace: str, model_server: str, gemma_gguf: Path, release: str
) -> None:
    gemma = on_real_node(
        "pair",
        model_server,
        hashlib.sha256(gemma_gguf.read_bytes()).hexdigest(),
        serving={"replicas": 2, "parallel": 2},
        parameters={"contextLength": 1024, "numPredict": 200},
        resources=SMALL,
    )
    cluster.apply(gemma, namespace)
    wait_for(lambda: phase(cluster, namespace, "pair") == "Ready", timeout=300,
             what="two replicas Ready", interval=0.5)  # fmt: skip
    pods = server_pods(cluster, namespace, "pair")
    assert len(pods) == 2
    by_name = {p["metadata"]["name"]: p for p in pods}

    # Prefix affinity: a repeated long prompt lands on one replica, whose prompt cache serves it.
    spec = cluster.get("service", f"{release}-slm-operator-gateway", namespace)["spec"]
    affinity = openai.OpenAI(
        base_url=f"http://{spec['clusterIP']}:{spec['ports'][0]['port']}/v1",
        api_key="unused", max_retries=0, timeout=120,
    )  # fmt: skip
    prompt = " ".join(f"Fact {i}: the number {i} follows {i - 1}." for i in range(1, 50))
    before = {
        n: pod_metric(p, "slm_runtime_prompt_cached_tokens_total") for n, p in by_name.items()
    }
    cached = []
    for _ in range(3):
        reply = affinity.completions.create(model="pair", prompt=prompt, max_tokens=2)
        assert reply.usage is not None
        assert reply.usage.prompt_tokens_details is not None
        cached.append(reply.usage.prompt_tokens_details.cached_tokens or 0)
    gained = {
        n: pod_metric(p, "slm_runtime_prompt_cached_tokens_total") - before[n]
        for n, p in by_name.items()
    }
    assert sorted(gained.values())[0] == 0, gained
    assert cached[0] < cached[1] == cached[2], cached
    assert max(gained.values()) == sum(cached)

    # Least load (the suite's gateway, which watches every namespace, so the model is named
    # with its own): a second request while a stream runs goes to the other replica.
    url = gateway_url(cluster)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    stream = client.completions.create(
        model=f"{namespace}/pair", prompt="Once upon a time", max_tokens=900, stream=True
    )
    chunks = iter(stream)
    next(chunks)
    busy = [n for n, p in by_name.items() if pod_metric(p, "slm_runtime_requests_in_flight")]
    assert len(busy) == 1
    (idle,) = [n for n in by_name if n not in busy]
    completions = {"route": "/v1/completions"}
    served = pod_metric(by_name[idle], "slm_runtime_requests_total", **completions)
    reply = client.completions.create(model=f"{namespace}/pair", prompt="Hello", max_tokens=2)
    assert reply.choices
    assert pod_metric(by_name[idle], "slm_runtime_requests_total", **completions) == served + 1

    # The busy replica is lost mid-stream: that client gets an error, later requests are served.
    (busy_pod,) = [by_name[n] for n in busy]
    assert pod_metric(busy_pod, "slm_runtime_requests_in_flight") == 1, "the stream still runs"
    for pid in container_pids(busy_pod, "server"):
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(openai.APIError):
        for _ in chunks:
            pass
    for _ in range(4):
        assert client.completions.create(
            model=f"{namespace}/pair", prompt="Hi", max_tokens=2
        ).choices

    # The gateway restarted (a rollout) while requests keep coming: none is lost.
    results: list[str] = []
    stop = threading.Event()

    def load() -> None:
        # A new connection each time: a kept-alive one stays with the pod it was opened to.
        body = {"model": f"{namespace}/pair", "prompt": "Hi", "max_tokens": 1}
        while not stop.is_set():
            try:
                answer = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
                results.append("ok" if answer.status_code == 200 else answer.text)
            except httpx.HTTPError as exc:
                results.append(f"{type(exc).__name__}: {exc}")

    worker = threading.Thread(target=load)
    worker.start()
    try:
        cluster.kubectl("rollout", "restart", f"deployment/{GATEWAY}", namespace=SYSTEM_NAMESPACE)
        cluster.kubectl("rollout", "status", f"deployment/{GATEWAY}", "--timeout=180s",
                        namespace=SYSTEM_NAMESPACE)  # fmt: skip
        wait_for(lambda: len(gateway_pods(cluster)) == 1, timeout=120,
                 what="the old gateway pod gone")  # fmt: skip
    finally:
        stop.set()
        worker.join()
    failed = [r for r in results if r != "ok"]
    assert results
    assert not failed, failed[:3]


def gateway_pods(cluster: Cluster) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={SUITE_RELEASE},app.kubernetes.io/component=gateway"
    out = cluster.kubectl("get", "pods", "-l", selector, "-o", "json", namespace=SYSTEM_NAMESPACE)
    items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
    return items
