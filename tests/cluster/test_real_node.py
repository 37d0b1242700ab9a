"""node-0, the real node: its kubelet and containerd run pods from the runtime image.

What the tests show is what a kubelet does and no stand-in could: the image the build produced
runs (its imageID), runc enforces restricted Pod Security and the memory limit (OOMKilled),
the runtime reads the CPU limit the kubelet set, `kubectl logs`, `exec` and `port-forward`
reach the pod, and kube-proxy and CoreDNS give pods Services and names.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.images.conftest import built, docker_engine, image_names

from .conftest import NODE_GATEWAY, REAL_NODE, Cluster, Kubectl
from .pods import condition, pod_status, wait_until

Obj = dict[str, Any]

# A tiny HTTP server in the runtime image's Python: GET / answers the pod's hostname.
SERVE = (
    "import http.server, socket\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = socket.gethostname().encode()\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body)))\n"
    "        self.end_headers(); self.wfile.write(body)\n"
    "http.server.ThreadingHTTPServer(('0.0.0.0', 8080), H).serve_forever()\n"
)
# fetch(url): a GET from inside a pod, trusting the cluster CA for https.
FETCH = (
    "import ssl, sys, urllib.request\n"
    "CA = '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt'\n"
    "def fetch(url):\n"
    "    ctx = ssl.create_default_context(cafile=CA) if url.startswith('https') else None\n"
    "    return urllib.request.urlopen(url, timeout=5, context=ctx).read().decode()\n"
)
RESTRICTED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.fixture(scope="module")
def runtime_image() -> str:
    """The runtime image's tag, after checking that `make images` built it."""
    return built(docker_engine(), image_names()["SLM_RUNTIME_IMAGE"])


@pytest.fixture
def restricted(cluster: Cluster, namespace: str) -> str:
    """The test's namespace, enforcing restricted Pod Security."""
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    return namespace


def image_pod(name: str, image: str, command: list[str], **container: Any) -> Obj:
    """A restricted pod of one container from ``image``, scheduled as any pod is."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "securityContext": RESTRICTED,
                    **container,
                }
            ],
        },
    }


def server_pod(name: str, image: str) -> Obj:
    """An image pod serving SERVE on 8080, Ready by the kubelet's own readiness probe."""
    return image_pod(
        name,
        image,
        ["python3", "-c", SERVE],
        ports=[{"name": "http", "containerPort": 8080}],
        readinessProbe={"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    )


def wait_ready(kubectl: Kubectl, name: str, timeout: int = 120) -> None:
    kubectl("wait", "--for=condition=Ready", f"pod/{name}", f"--timeout={timeout}s")


def test_a_restricted_pod_runs_from_the_runtime_image(
    cluster: Cluster, restricted: str, kubectl: Kubectl, runtime_image: str
) -> None:
    cluster.apply(server_pod("web", runtime_image), restricted)
    wait_ready(kubectl, "web")
    pod = cluster.get("pod", "web", restricted)
    assert pod["spec"]["nodeName"] == REAL_NODE
    image_id = docker_engine().inspect(runtime_image)["Id"]
    assert pod["status"]["containerStatuses"][0]["imageID"] == image_id
    assert condition(pod["status"], "Ready") == "True"

    # runc applied the image's user, no capabilities, seccomp and no_new_privs.
    status = kubectl("exec", "web", "--", "cat", "/proc/self/status").stdout
    fields = dict(re.findall(r"^(\w+):\s*(.*)$", status, re.MULTILINE))
    assert fields["Uid"].split()[0] == "65532"
    assert fields["CapEff"] == fields["CapPrm"] == fields["CapBnd"] == "0000000000000000"
    assert fields["Seccomp"] == "2"  # filter mode: RuntimeDefault
    assert fields["NoNewPrivs"] == "1"
    write = kubectl("exec", "web", "--", "touch", "/etc/x", check=False)
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr

    # Reachable from the host on its pod IP and through `kubectl port-forward`.
    assert httpx.get(f"http://{pod['status']['podIP']}:8080/", timeout=10).text == "web"
    with port_forward(cluster, restricted, "pod/web", 8080) as port:
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text == "web"


@contextlib.contextmanager
def port_forward(cluster: Cluster, namespace: str, target: str, port: int) -> Iterator[int]:
    """``kubectl port-forward`` to target's port; yields the local port."""
    proc = subprocess.Popen(
        [
            "kubectl", f"--kubeconfig={cluster.kubeconfig}", f"--namespace={namespace}",
            "port-forward", "--address=127.0.0.1", target, f":{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:PORT -> 8080"
        found = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert found, f"port-forward said {line!r}"
        # kubectl writes a line per connection: keep reading, or it blocks on a full pipe.
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield int(found.group(1))
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_logs_are_the_containers_output_across_restarts(
    cluster: Cluster, restricted: str, kubectl: Kubectl, runtime_image: str
) -> None:
    body = image_pod("talker", runtime_image, ["python3", "-c", "print('said once'); exit(3)"])
    body["spec"]["restartPolicy"] = "OnFailure"
    cluster.apply(body, restricted)

    def restarted() -> Obj | None:
        status = pod_status(cluster, restricted, "talker")["containerStatuses"][0]
        return status if status["restartCount"] >= 1 and status.get("lastState") else None

    status = wait_until("a restart", restarted, timeout=120)
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert kubectl("logs", "talker", "--previous").stdout == "said once\n"


def test_a_container_over_its_memory_limit_is_oomkilled(
    cluster: Cluster, restricted: str, runtime_image: str
) -> None:
    grow = "blocks = []\nwhile True:\n    blocks.append(bytearray(16 << 20))\n"
    body = image_pod(
        "hungry", runtime_image, ["python3", "-c", grow],
        resources={"limits": {"memory": "96Mi", "cpu": "500m"}},
    )  # fmt: skip
    body["spec"]["restartPolicy"] = "Never"
    cluster.apply(body, restricted)
    terminated = wait_until(
        "the container to be killed",
        lambda: pod_status(cluster, restricted, "hungry")["containerStatuses"][0]["state"].get(
            "terminated"
        ),
        timeout=120,
    )
    assert terminated["reason"] == "OOMKilled"
    assert terminated["exitCode"] == 137


NODE_CPUS = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("limit", "expected"), [("1", 1), (None, NODE_CPUS)])
def test_the_runtime_counts_the_cpus_the_kubelet_gives_it(
    cluster: Cluster,
    restricted: str,
    kubectl: Kubectl,
    runtime_image: str,
    limit: str | None,
    expected: int,
) -> None:
    """The runtime's default generation thread count (slm_runtime.cpus.usable_cpus) reads the
    CFS quota the kubelet wrote for the container's cpu limit; without one, the node's CPUs."""
    resources = {"limits": {"cpu": limit, "memory": "256Mi"}} if limit else {}
    body = image_pod("cpus", runtime_image, ["sleep", "infinity"], resources=resources)
    cluster.apply(body, restricted)
    wait_ready(kubectl, "cpus")
    script = "from slm_runtime.cpus import usable_cpus; print(usable_cpus())"
    assert kubectl("exec", "cpus", "--", "python3", "-c", script).stdout.strip() == str(expected)


def test_pods_reach_services_by_name_and_cluster_ip(
    cluster: Cluster, restricted: str, kubectl: Kubectl, runtime_image: str
) -> None:
    cluster.apply(server_pod("backend", runtime_image), restricted)
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "backend"},
            "spec": {"selector": {"app": "backend"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        restricted,
    )
    client = image_pod("client", runtime_image, ["sleep", "infinity"])
    cluster.apply(client, restricted)
    wait_ready(kubectl, "backend")
    wait_ready(kubectl, "client")
    cluster_ip = cluster.get("service", "backend", restricted)["spec"]["clusterIP"]

    fetch = FETCH + "print(fetch(sys.argv[1]))"
    for url in (
        f"http://backend.{restricted}.svc.cluster.local/",
        "http://backend/",  # the pod's search path
        f"http://{cluster_ip}/",
    ):
        got = wait_until(
            f"the client pod to fetch {url}",
            lambda url=url: kubectl("exec", "client", "--", "python3", "-c", fetch, url).stdout,
            timeout=30,
        )
        assert got.strip() == "backend"
    # The API server through the kubernetes Service, from a pod.
    probe = FETCH + "print(fetch('https://kubernetes.default.svc/readyz'))"
    body = image_pod("api", runtime_image, ["python3", "-c", probe])
    body["spec"]["restartPolicy"] = "Never"
    body["spec"]["automountServiceAccountToken"] = True
    cluster.apply(body, restricted)
    wait_until(
        "the pod to read /readyz",
        lambda: pod_status(cluster, restricted, "api").get("phase") == "Succeeded",
        timeout=60,
    )
    assert kubectl("logs", "api").stdout.strip() == "ok"
    # And from the host, through kube-proxy.
    assert httpx.get(f"http://{cluster_ip}/", timeout=10).text == "backend"


def test_the_host_serves_fixtures_to_pods_on_the_node_gateway(
    cluster: Cluster, restricted: str, kubectl: Kubectl, runtime_image: str
) -> None:
    """What tests serve on NODE_GATEWAY (model files) is reachable from node-0's pods."""

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

    server = http.server.ThreadingHTTPServer((NODE_GATEWAY, 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://{NODE_GATEWAY}:{server.server_address[1]}/"
        script = FETCH + f"print(fetch({url!r}))"
        body = image_pod("fetch", runtime_image, ["python3", "-c", script])
        body["spec"]["restartPolicy"] = "Never"
        cluster.apply(body, restricted)
        wait_until(
            "the pod to finish",
            lambda: (
                pod_status(cluster, restricted, "fetch").get("phase") in ("Succeeded", "Failed")
            ),
            timeout=60,
        )
        assert kubectl("logs", "fetch").stdout == "hello\n"
    finally:
        server.shutdown()
        server.server_close()


def test_nodes_show_the_real_node_with_its_runtime(cluster: Cluster) -> None:
    out = cluster.kubectl("get", "nodes", "-o", "wide").stdout
    row = next(line for line in out.splitlines() if line.startswith(f"{REAL_NODE} "))
    assert " Ready " in row
    assert NODE_GATEWAY in row
    assert "containerd://2." in row
    nodes = json.loads(cluster.kubectl("get", "node", REAL_NODE, "-o", "json").stdout)
    assert nodes["status"]["allocatable"]["cpu"] == str(NODE_CPUS)
