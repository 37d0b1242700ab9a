"""host-0 runs pods for real: probes, volumes, identity, termination, networking, Jobs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .conftest import Cluster, Kubectl
from .hostpods import condition, host_pod, http, pod_status, server_pod, wait_until


def _pod_ip(cluster: Cluster, namespace: str, name: str) -> str:
    ip: str = wait_until(
        f"{name} to get a pod IP", lambda: pod_status(cluster, namespace, name).get("podIP")
    )
    return ip


def _host_pid(cluster: Cluster, namespace: str, name: str) -> int:
    uid = cluster.get("pod", name, namespace)["metadata"]["uid"]
    pidfile = cluster.state_dir / "host-0" / "pods" / uid / "containers" / "main" / "pid"
    return int(wait_until(f"{name}'s pid", pidfile.read_text))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _netns() -> str:
    return subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout


def test_ready_only_once_readiness_passes_and_reachable_at_pod_ip(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    cluster.apply(server_pod("web"), namespace)
    ip = _pod_ip(cluster, namespace, "web")
    stats = wait_until(
        "two failed readiness probes",
        lambda: (s := http(f"http://{ip}:8080/stats"))["hits"].get("/ready", 0) >= 2 and s,
    )
    assert stats["uid"] == 1000
    status = pod_status(cluster, namespace, "web")
    assert status["phase"] == "Running"
    assert condition(status, "Ready") == "False"

    http(f"http://{ip}:8080/ready", method="POST")
    kubectl("wait", "--for=condition=Ready", "pod/web", "--timeout=30s")
    assert http(f"http://{ip}:8080/")["hello"] == "web"


def test_liveness_failure_restarts_the_container(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    cluster.apply(server_pod("web"), namespace)
    ip = _pod_ip(cluster, namespace, "web")
    first = wait_until("the server", lambda: http(f"http://{ip}:8080/stats"))["pid"]
    # Liveness is probed once the startup probe has passed.
    started = "{.status.containerStatuses[0].started}"
    kubectl("wait", f"--for=jsonpath={started}=true", "pod/web", "--timeout=60s")

    http(f"http://{ip}:8080/break-live", method="POST")
    kubectl(
        "wait", "--for=jsonpath={.status.containerStatuses[0].restartCount}=1", "pod/web",
        "--timeout=30s",
    )  # fmt: skip
    second = wait_until("the restarted server", lambda: http(f"http://{ip}:8080/stats"))["pid"]
    assert second != first
    last = pod_status(cluster, namespace, "web")["containerStatuses"][0]["lastState"]
    assert last["terminated"]["message"] == "podserver stopped by SIGTERM"


def test_volumes_env_and_read_only_paths(
    cluster: Cluster, namespace: str, kubectl: Kubectl, tmp_path: Path
) -> None:
    kubectl("create", "configmap", "cfg", "--from-literal=greeting=hello from a configmap")
    kubectl("create", "secret", "generic", "sec", "--from-literal=token=s3cret")
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
        namespace,
    )
    kubectl("wait", "--for=jsonpath={.status.phase}=Bound", "pvc/data", "--timeout=30s")
    pv = cluster.get("pv", cluster.get("pvc", "data", namespace)["spec"]["volumeName"])
    pv_dir = Path(pv["spec"]["hostPath"]["path"])
    (pv_dir / "in.txt").write_text("from the volume")
    ro_probe = f"/var/tmp/slm-ro-root-{namespace}"

    script = f"""
import json, os
def attempt(path):
    try:
        open(path, "w").write("x")
        return "written"
    except OSError as e:
        return e.strerror
out = {{
    "greeting": open("/etc/cfg/greeting").read(),
    "token": open("/etc/sec/token").read(),
    "pvc": open("/data/in.txt").read(),
    "init": open("/scratch/init.txt").read(),
    "env_token": os.environ["TOKEN"],
    "env_pod": os.environ["POD_NAME"],
    "env_ip": os.environ["POD_IP"],
    "uid": os.getuid(),
    "write_pvc": attempt("/data/out.txt"),
    "write_ro_pvc": attempt("/ro-data/out.txt"),
    "write_configmap": attempt("/etc/cfg/new"),
    "write_root": attempt({ro_probe!r}),
    "write_tmp": attempt("/tmp/x"),
}}
open("/dev/termination-log", "w").write(json.dumps(out))
"""
    pod = host_pod(
        "reader",
        ["python3", "-c", script],
        restartPolicy="Never",
        securityContext={"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000},
        initContainers=[
            {
                "name": "init",
                "image": "host/none",
                "command": ["sh", "-c", "echo init ran > /scratch/init.txt"],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            }
        ],
        volumes=[
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "sec", "secret": {"secretName": "sec"}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
        ],
        container={
            "securityContext": {"readOnlyRootFilesystem": True},
            "env": [
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            ],
            "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/cfg"},
                {"name": "sec", "mountPath": "/etc/sec"},
                {"name": "data", "mountPath": "/data"},
                {"name": "data", "mountPath": "/ro-data", "readOnly": True},
                {"name": "scratch", "mountPath": "/scratch"},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        },
    )
    try:
        cluster.apply(pod, namespace)
        kubectl("wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/reader", "--timeout=60s")
    finally:
        leaked = Path(ro_probe).exists()
        Path(ro_probe).unlink(missing_ok=True)
    assert not leaked, "readOnlyRootFilesystem did not protect the host root"
    status = pod_status(cluster, namespace, "reader")
    out = json.loads(status["containerStatuses"][0]["state"]["terminated"]["message"])
    assert out["greeting"] == "hello from a configmap"
    assert out["token"] == out["env_token"] == "s3cret"
    assert out["pvc"] == "from the volume"
    assert out["init"] == "init ran\n"
    assert out["env_pod"] == "reader"
    assert out["env_ip"] == status["podIP"]
    assert out["uid"] == 1000
    assert out["write_pvc"] == "written"
    assert (pv_dir / "out.txt").read_text() == "x"
    assert out["write_ro_pvc"] == "Read-only file system"
    assert out["write_configmap"] == "Read-only file system"
    assert out["write_root"] == "Read-only file system"
    assert out["write_tmp"] == "written"


def test_exit_code_termination_message_and_logs(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    script = "echo loading; echo 'model file missing' > /dev/termination-log; exit 3"
    cluster.apply(host_pod("fails", ["sh", "-c", script], restartPolicy="Never"), namespace)
    kubectl("wait", "--for=jsonpath={.status.phase}=Failed", "pod/fails", "--timeout=30s")
    terminated = pod_status(cluster, namespace, "fails")["containerStatuses"][0]["state"][
        "terminated"
    ]
    assert terminated["exitCode"] == 3
    assert terminated["reason"] == "Error"
    assert terminated["message"] == "model file missing\n"
    assert kubectl("logs", "pod/fails").stdout == "loading\n"


def test_deleted_pod_leaves_no_process_or_namespace(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    cluster.apply(server_pod("web"), namespace)
    ip = _pod_ip(cluster, namespace, "web")
    pid = wait_until("the server", lambda: http(f"http://{ip}:8080/stats"))["pid"]
    uid = cluster.get("pod", "web", namespace)["metadata"]["uid"]
    assert f"slm-{uid[:13]}" in _netns()

    kubectl("delete", "pod", "web", "--timeout=30s")
    assert not _alive(pid)
    assert f"slm-{uid[:13]}" not in _netns()


def test_sigkill_after_the_grace_period(cluster: Cluster, namespace: str, kubectl: Kubectl) -> None:
    stubborn = "trap '' TERM; while :; do sleep 1; done"
    pod = host_pod("stubborn", ["sh", "-c", stubborn], terminationGracePeriodSeconds=1)
    cluster.apply(pod, namespace)
    kubectl("wait", "--for=jsonpath={.status.phase}=Running", "pod/stubborn", "--timeout=30s")
    pid = _host_pid(cluster, namespace, "stubborn")

    kubectl("delete", "pod", "stubborn", "--timeout=30s")
    assert not _alive(pid)


def test_wrong_command_is_not_ready_and_says_why(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    cluster.apply(host_pod("typo", ["slm-runtiem", "serve"]), namespace)
    reason = "{.status.containerStatuses[0].lastState.terminated.reason}"
    kubectl("wait", f"--for=jsonpath={reason}=StartError", "pod/typo", "--timeout=30s")
    status = pod_status(cluster, namespace, "typo")
    last = status["containerStatuses"][0]["lastState"]["terminated"]
    assert last["message"] == 'exec: "slm-runtiem": executable file not found in $PATH'
    assert condition(status, "Ready") == "False"


def test_container_without_command_is_refused_with_a_clear_status(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    pod = host_pod("imageonly", [])
    del pod["spec"]["containers"][0]["command"]
    cluster.apply(pod, namespace)
    kubectl(
        "wait", "--for=jsonpath={.status.containerStatuses[0].state.waiting.reason}"
        "=CreateContainerConfigError", "pod/imageonly", "--timeout=30s",
    )  # fmt: skip
    waiting = pod_status(cluster, namespace, "imageonly")["containerStatuses"][0]["state"][
        "waiting"
    ]
    assert "has no command" in waiting["message"]


def test_two_pods_listen_on_the_same_port(cluster: Cluster, namespace: str) -> None:
    cluster.apply(server_pod("a"), namespace)
    cluster.apply(server_pod("b"), namespace)
    ip_a, ip_b = _pod_ip(cluster, namespace, "a"), _pod_ip(cluster, namespace, "b")
    assert ip_a != ip_b
    assert wait_until("pod a", lambda: http(f"http://{ip_a}:8080/"))["hello"] == "a"
    assert wait_until("pod b", lambda: http(f"http://{ip_b}:8080/"))["hello"] == "b"


@pytest.mark.parametrize(
    ("script", "outcome", "exit_code"), [("exit 0", "Complete", 0), ("exit 7", "Failed", 7)]
)
def test_job_runs_to_completion_or_failure(
    cluster: Cluster, namespace: str, kubectl: Kubectl, script: str, outcome: str, exit_code: int
) -> None:
    template = host_pod("job", ["sh", "-c", script], restartPolicy="Never")
    del template["apiVersion"], template["kind"], template["metadata"]["name"]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "job"},
        "spec": {"backoffLimit": 0, "template": template},
    }
    cluster.apply(job, namespace)
    kubectl("wait", f"--for=condition={outcome}", "job/job", "--timeout=60s")
    pods = json.loads(kubectl("get", "pods", "-l", "job-name=job", "-o", "json").stdout)["items"]
    assert len(pods) == 1
    assert pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == exit_code


def test_non_root_pod_runs_the_repo_venv_and_cannot_see_root_home(
    cluster: Cluster, namespace: str, kubectl: Kubectl
) -> None:
    script = (
        "slm-runtime --help > /dev/null && ! ls /root/.cache 2>/dev/null"
        " && echo isolated > /dev/termination-log"
    )
    pod = host_pod(
        "venv",
        ["sh", "-c", script],
        restartPolicy="Never",
        securityContext={"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532},
    )
    cluster.apply(pod, namespace)
    kubectl("wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/venv", "--timeout=60s")
    state = pod_status(cluster, namespace, "venv")["containerStatuses"][0]["state"]
    assert state["terminated"]["message"] == "isolated\n"
