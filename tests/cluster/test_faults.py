"""Faults injected while the operator reconciles: it converges, and nothing is duplicated.

The operator is SIGKILLed in the middle of a batch of LocalModels and started again; the API
server and etcd are each stopped and started again (same command line, same data) while a batch
is being reconciled. Pods run on kwok nodes (PerPod cache, so no pull Jobs). Last, real runtimes
on node-0: one is SIGKILLed in the middle of a streamed answer, one is deleted while it streams.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from slm_operator.children import PRESTOP_SLEEP_SECONDS

from .conftest import KWOK_SCHEDULING, REAL_NODE_SCHEDULING, Cluster, container_pids
from .operator_run import InClusterOperator, wait_for

INSTANCE = "app.kubernetes.io/instance"
NAME_LABEL = "app.kubernetes.io/name"
CHILDREN = ("deployments", "services", "configmaps")


def batch(prefix: str, count: int) -> dict[str, Any]:
    """``count`` CPU LocalModels as one List."""
    items = [
        {
            "apiVersion": "slm.dev/v1alpha1",
            "kind": "LocalModel",
            "metadata": {"name": f"{prefix}-{i}"},
            "spec": {
                "model": {"source": "https://models.example/gemma-3-270m-q4_k_m.gguf"},
                "cache": {"mode": "PerPod"},
                "hardware": {"preferred": "cpu", "fallback": []},
                # Small: a batch larger than the operator's workers fits the fake nodes.
                "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
                "scheduling": KWOK_SCHEDULING,
            },
        }
        for i in range(count)
    ]
    return {"apiVersion": "v1", "kind": "List", "items": items}


def phases(cluster: Cluster, namespace: str) -> dict[str, str | None]:
    """Every LocalModel's phase (None when the API server does not answer)."""
    result = cluster.kubectl("get", "localmodels", "-o", "json", namespace=namespace, check=False)
    if result.returncode != 0:
        return {}
    return {
        lm["metadata"]["name"]: (lm.get("status") or {}).get("phase")
        for lm in json.loads(result.stdout)["items"]
    }


def all_ready(cluster: Cluster, namespace: str, count: int) -> bool:
    """Whether ``count`` LocalModels exist and every one is Ready."""
    found = phases(cluster, namespace)
    return len(found) == count and set(found.values()) == {"Ready"}


def assert_one_of_each_child(cluster: Cluster, namespace: str, names: list[str]) -> None:
    """Every LocalModel has exactly one Deployment, Service and ConfigMap, and no strays."""
    for kind in CHILDREN:
        out = cluster.kubectl("get", kind, "-o", "json", namespace=namespace).stdout
        owners = [
            item["metadata"]["labels"][INSTANCE]
            for item in json.loads(out)["items"]
            if INSTANCE in (item["metadata"].get("labels") or {})
        ]
        assert sorted(owners) == sorted(names), (kind, sorted(owners))


def restart_component(cluster: Cluster, name: str) -> None:
    """Stop a control-plane process and start it again with the same command line and data."""
    pidfile = cluster.state_dir / "pids" / f"{name}.pid"
    pid = int(pidfile.read_text())
    proc = Path(f"/proc/{pid}")
    command = proc.joinpath("cmdline").read_bytes().split(b"\0")[:-1]
    environ = dict(
        entry.split(b"=", 1)
        for entry in proc.joinpath("environ").read_bytes().split(b"\0")
        if entry
    )
    cwd = os.readlink(proc / "cwd")
    os.killpg(pid, signal.SIGTERM)
    try:
        wait_for(lambda: _gone(proc), timeout=15, what=f"{name} to stop")
    except AssertionError:  # still draining its watches: stop it as a crash would
        os.killpg(pid, signal.SIGKILL)
        wait_for(lambda: _gone(proc), timeout=30, what=f"{name} to be killed")
    with (cluster.state_dir / "logs" / f"{name}.log").open("ab") as log:
        started = subprocess.Popen(
            command, env=environ, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    pidfile.write_text(str(started.pid))
    wait_for(
        lambda: cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0,
        timeout=120,
        what=f"the API server ready after restarting {name}",
        interval=0.5,
    )


def _gone(proc: Path) -> bool:
    """Whether the process has exited (a zombie counts: it no longer holds its ports)."""
    try:
        return proc.joinpath("stat").read_text().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


def test_operator_killed_mid_reconcile_converges_without_duplicates(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    # More models than the operator's workers (16): it cannot finish them all at once. Their
    # statuses still land close together, so a watch, not polling, sees the first one, and
    # the kill (SIGKILL to the processes found before) follows it at once.
    count = 32
    statuses = subprocess.Popen(
        ["kubectl", "--kubeconfig", str(cluster.kubeconfig), "get", "localmodels", "-n",
         namespace, "-w", "-o", "jsonpath={.metadata.name}|{.status.phase}{\"\\n\"}"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    first: list[str] = []

    def kill_on_first_status() -> None:
        assert statuses.stdout is not None
        for line in statuses.stdout:
            if line.strip().split("|")[-1]:
                first.append(line.strip())
                assert operator.process is not None
                operator.process.kill()
                return

    killer = threading.Thread(target=kill_on_first_status, daemon=True)
    killer.start()
    try:
        cluster.apply(batch("killed", count), namespace)
        killer.join(timeout=120)
    finally:
        statuses.kill()
        statuses.wait()
    assert first, f"no LocalModel got a status in 120s:\n{operator.log()[-3000:]}"
    assert operator.process is not None
    operator.process.wait()
    # The premise: the operator died with part of the batch done and part not.
    done = sum(phase is not None for phase in phases(cluster, namespace).values())
    assert 0 < done < count, (done, first)
    operator.start()
    wait_for(lambda: all_ready(cluster, namespace, count), timeout=180, what="the batch Ready")
    assert_one_of_each_child(cluster, namespace, [f"killed-{i}" for i in range(count)])


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_control_plane_restart_while_reconciling(
    cluster: Cluster, operator: InClusterOperator, namespace: str, component: str
) -> None:
    count = 8
    cluster.apply(batch(component, count), namespace)
    restart_component(cluster, component)
    wait_for(lambda: all_ready(cluster, namespace, count), timeout=180, what="the batch Ready")
    # The watches came back: a model created after the restart is reconciled too.
    cluster.apply(batch(f"after-{component}", 1), namespace)
    wait_for(lambda: all_ready(cluster, namespace, count + 1), timeout=120, what="one more")
    names = [f"{component}-{i}" for i in range(count)] + [f"after-{component}-0"]
    assert_one_of_each_child(cluster, namespace, names)
    assert operator.alive(), operator.log()[-3000:]


def serving_gemma(
    cluster: Cluster,
    namespace: str,
    name: str,
    source: str,
    gguf: Path,
    context: int,
    num_predict: int,
) -> dict[str, Any]:
    """A Gemma LocalModel on node-0 (PerPod cache, one sequence at a time), once Ready; its one
    runtime pod."""
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    cluster.apply(
        {
            "apiVersion": "slm.dev/v1alpha1",
            "kind": "LocalModel",
            "metadata": {"name": name},
            "spec": {
                "model": {"source": source, "sha256": digest, "allowInsecure": True},
                "cache": {"mode": "PerPod", "size": "1Gi"},
                "hardware": {"preferred": "cpu", "fallback": []},
                "parameters": {
                    "contextLength": context,
                    "numPredict": num_predict,
                    "temperature": 0,
                },
                "serving": {"parallel": 1},
                "scheduling": REAL_NODE_SCHEDULING,
            },
        },
        namespace,
    )
    wait_for(lambda: phases(cluster, namespace) == {name: "Ready"}, timeout=300,
             what=f"{name} Ready", interval=0.5)  # fmt: skip
    selector = f"{INSTANCE}={name},{NAME_LABEL}=slm-runtime"
    out = cluster.kubectl("get", "pods", "-l", selector, "-o", "json", namespace=namespace)
    (pod,) = json.loads(out.stdout)["items"]
    result: dict[str, Any] = pod
    return result


def test_runtime_killed_mid_stream_gives_a_clean_error_and_comes_back(
    cluster: Cluster,
    operator: InClusterOperator,
    namespace: str,
    model_server: str,
    gemma_gguf: Path,
) -> None:
    pod = serving_gemma(cluster, namespace, "streamer", model_server, gemma_gguf, 512, 400)
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    (pid,) = container_pids(pod, "server")  # the runtime, its container's only process

    received: list[str] = []

    def stream_until_killed() -> None:
        body = {"model": "streamer", "prompt": "Once upon a time", "raw": True}
        url = f"http://{ip}:8080/api/generate"
        with httpx.stream("POST", url, json=body, timeout=30) as reply:
            for line in reply.iter_lines():
                received.append(line)
                if len(received) == 3:
                    os.kill(pid, signal.SIGKILL)

    with pytest.raises(httpx.TransportError):  # not a hang, not a truncated success
        stream_until_killed()
    assert len(received) >= 3
    assert not any('"done": true' in line or '"done":true' in line for line in received)

    # The kubelet restarts the container; the model serves again.
    wait_for(
        lambda: _restarted_and_ready(cluster, namespace, name), timeout=300,
        what="the runtime container restarted and Ready", interval=0.5,
    )  # fmt: skip
    wait_for(lambda: phases(cluster, namespace) == {"streamer": "Ready"}, timeout=120,
             what="streamer Ready again", interval=0.5)  # fmt: skip
    reply = httpx.post(
        f"http://{ip}:8080/api/generate",
        json={"model": "streamer", "prompt": "Once upon a time", "raw": True, "stream": False,
              "options": {"num_predict": 4}},
        timeout=120,
    )  # fmt: skip
    assert reply.status_code == 200, reply.text


def _restarted_and_ready(cluster: Cluster, namespace: str, name: str) -> bool:
    status = cluster.get("pod", name, namespace).get("status") or {}
    (server,) = [c for c in status.get("containerStatuses") or [] if c["name"] == "server"]
    return bool(server.get("restartCount", 0) >= 1 and server.get("ready"))


def test_a_deleted_model_pod_finishes_the_answer_it_is_streaming(
    cluster: Cluster,
    operator: InClusterOperator,
    namespace: str,
    model_server: str,
    gemma_gguf: Path,
) -> None:
    """Under the kubelet's own preStop hook and grace period: deleting a serving pod keeps it
    serving through the preStop sleep, then SIGTERM starts the runtime's drain, and an answer
    already streaming still finishes whole."""
    pod = serving_gemma(cluster, namespace, "drainer", model_server, gemma_gguf, 2048, 1800)
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    url = f"http://{ip}:8080/api/generate"
    # An answer that streams for about 15 s on this machine: longer than the preStop sleep,
    # well within the drain timeout that follows it (25 s).
    probe = {"model": "drainer", "prompt": "Once upon a time", "raw": True, "stream": False,
             "options": {"num_predict": 32}}  # fmt: skip
    timing = httpx.post(url, json=probe, timeout=120).json()
    rate = timing["eval_count"] / (timing["eval_duration"] / 1e9)
    num_predict = max(100, min(1800, int(rate * 15)))
    # The container's log, followed until it exits, each line with the time it came.
    logs = subprocess.Popen(
        ["kubectl", f"--kubeconfig={cluster.kubeconfig}", "-n", namespace, "logs", "-f",
         name, "-c", "server", "--since=1s"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    log_lines: list[tuple[float, str]] = []

    def follow() -> None:
        assert logs.stdout is not None
        for line in logs.stdout:
            log_lines.append((time.monotonic(), line))

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    received: list[tuple[float, dict[str, Any]]] = []
    deleted = None
    body = {"model": "drainer", "prompt": "Once upon a time", "raw": True,
            "options": {"num_predict": num_predict}}  # fmt: skip
    try:
        with httpx.stream("POST", url, json=body, timeout=60) as reply:
            for line in reply.iter_lines():
                received.append((time.monotonic(), json.loads(line)))
                if len(received) == 3:
                    cluster.kubectl("delete", "pod", name, "--wait=false", namespace=namespace)
                    deleted = time.monotonic()
        logs.wait(timeout=120)
    finally:
        logs.kill()
        logs.wait(timeout=10)
    follower.join(timeout=10)

    assert deleted is not None, received
    last = received[-1][1]
    assert last["done"] is True, last
    assert last["done_reason"] in ("stop", "length")
    drained = [t for t, line in log_lines if "draining in-flight requests" in line]
    assert drained, "".join(line for _, line in log_lines)[-3000:]
    # SIGTERM came after the preStop sleep (it kept serving meanwhile) and while the answer
    # was still streaming; the answer then finished whole.
    assert drained[0] - deleted >= PRESTOP_SLEEP_SECONDS - 0.5, drained[0] - deleted
    assert drained[0] < received[-1][0]
    assert sum(1 for t, _ in received if t > drained[0]) > 1
    wait_for(
        lambda: cluster.kubectl("get", "pod", name, namespace=namespace, check=False).returncode,
        timeout=120, what="the pod gone",
    )  # fmt: skip
