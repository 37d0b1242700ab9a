"""Live objects -> the plain data status reads."""

from __future__ import annotations

import json
from typing import Any

import pytest
from slm_operator.controller.cache import Caches
from slm_operator.kinds import DEPLOYMENT
from slm_operator.summary import (
    RuntimeDevice,
    node_info,
    observation,
    pod_summary,
    pull_progress,
    runtime_device,
)
from slm_runtime.config import Device

pytestmark = pytest.mark.unit


def _pod(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {}}, "status": status}


def test_unschedulable_pod_records_since_and_message() -> None:
    pod = _pod(
        "p",
        phase="Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "lastTransitionTime": "2026-01-02T03:04:05Z",
                "message": "0/5 nodes are available: 1 Insufficient nvidia.com/gpu.",
            }
        ],
    )
    summary = pod_summary(pod)
    assert summary.unschedulable_since is not None
    assert summary.unschedulable_since.isoformat() == "2026-01-02T03:04:05+00:00"
    assert "nvidia.com/gpu" in (summary.scheduler_message or "")


def test_missing_secret_is_read_from_the_kubelet_error() -> None:
    waiting = {
        "reason": "CreateContainerConfigError",
        "message": 'secret "hf-token" not found',
    }
    pod = _pod(
        "p", phase="Pending", containerStatuses=[{"name": "server", "state": {"waiting": waiting}}]
    )
    obs = observation(
        deployment=None,
        runtime_pods=[pod],
        service_monitor_crd=True,
        inference_pool_crd=True,
    )
    assert obs.missing_secrets == ("hf-token",)


def _completed_pull(name: str, result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A pull Job that completed, and its pod whose termination message is ``result``."""
    job = {
        "metadata": {"name": name},
        "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]},
    }
    pod = _pod(
        f"{name}-x",
        phase="Succeeded",
        containerStatuses=[
            {
                "name": "pull",
                "state": {"terminated": {"exitCode": 0, "message": json.dumps(result)}},
            }
        ],
    )
    return job, pod


def test_only_the_pull_job_the_spec_renders_now_counts() -> None:
    """Every pull Job is observed once; the one the spec renders now gives status its Job, its
    pods' missing Secrets and what it pulled. An older Job of the model (a changed source, not
    pruned yet) gives none of them."""
    result = {"digest": "sha256:" + "b" * 64, "sizeBytes": 7, "files": ["model.gguf"]}
    done, done_pod = _completed_pull("m-pull-old", result)
    waiting = {"reason": "CreateContainerConfigError", "message": 'secret "token" not found'}
    new_job = {"metadata": {"name": "m-pull-new"}, "status": {"active": 1}}
    new_pod = _pod(
        "m-pull-new-x",
        phase="Pending",
        containerStatuses=[{"name": "pull", "state": {"waiting": waiting}}],
    )
    obs = observation(
        deployment=None,
        pull_jobs=[(done, [done_pod]), (new_job, [new_pod])],
        runtime_pods=[],
        service_monitor_crd=True,
        inference_pool_crd=True,
        progress={"m-pull-new": "40%"},
    )
    assert (obs.pull_job, obs.model, obs.missing_secrets) == (None, None, ())
    now = obs.for_pull_job("m-pull-new")
    assert now.pull_job is not None
    assert now.pull_job.name == "m-pull-new"
    assert now.pull_job.progress == "40%"
    assert (now.model, now.missing_secrets) == (None, ("token",))
    before = obs.for_pull_job("m-pull-old")
    assert before.model is not None
    assert before.model.digest == result["digest"]
    assert before.missing_secrets == ()
    assert obs.for_pull_job("m-pull-gone").pull_job is None


def test_pull_result_comes_from_the_termination_message() -> None:
    result = {"digest": "sha256:" + "a" * 64, "sizeBytes": 12, "files": ["model.gguf"]}
    job, pod = _completed_pull("m-pull-1", result)
    obs = observation(
        deployment=None,
        pull_jobs=[(job, [pod])],
        runtime_pods=[],
        service_monitor_crd=True,
        inference_pool_crd=True,
    ).for_pull_job(job["metadata"]["name"])
    assert obs.pull_job is not None
    assert obs.pull_job.finished == "Complete"
    assert obs.model is not None
    assert obs.model.digest == result["digest"]
    assert obs.model.size_bytes == 12


def test_per_pod_pull_result_comes_from_the_init_container() -> None:
    result = {"digest": "sha256:" + "b" * 64, "sizeBytes": 34, "files": ["model.gguf"]}
    pull = {"terminated": {"exitCode": 0, "message": json.dumps(result)}}
    pod = _pod(
        "m-1",
        phase="Running",
        initContainerStatuses=[{"name": "pull", "state": pull}],
        containerStatuses=[{"name": "server", "state": {"running": {}}}],
    )
    obs = observation(
        deployment=None,
        runtime_pods=[pod],
        service_monitor_crd=True,
        inference_pool_crd=True,
    )
    assert obs.model is not None
    assert (obs.model.digest, obs.model.size_bytes) == (result["digest"], 34)


def test_failed_pull_keeps_the_pullers_message() -> None:
    job = {
        "metadata": {"name": "m-pull-1"},
        "status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True"}]},
    }
    message = "sha256 mismatch: expected aaaa, got bbbb"
    pod = _pod(
        "m-pull-1-x",
        containerStatuses=[
            {"name": "pull", "state": {"terminated": {"exitCode": 1, "message": message}}}
        ],
    )
    obs = observation(
        deployment=None,
        pull_jobs=[(job, [pod])],
        runtime_pods=[],
        service_monitor_crd=True,
        inference_pool_crd=True,
    ).for_pull_job(job["metadata"]["name"])
    assert obs.pull_job is not None
    assert obs.pull_job.failure_message == message


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        ('{"event": "progress", "percent": 37.4}\n', "37%"),
        ('{"event": "progress", "percent": 10}\n{"event": "progress", "percent": 55.5}\n', "56%"),
        ('{"event": "progress", "percent": null}\n', None),
        ("not json\n", None),
        ("", None),
    ],
)
def test_pull_progress(tail: str, expected: str | None) -> None:
    assert pull_progress(tail) == expected


def test_node_info_reads_readiness_taints_and_quantities() -> None:
    node = {
        "metadata": {"name": "gpu-0", "labels": {"a": "b"}},
        "spec": {"unschedulable": True, "taints": [{"key": "k", "effect": "NoSchedule"}]},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "allocatable": {"cpu": "15500m", "memory": "62Gi", "nvidia.com/gpu": "1"},
        },
    }
    info = node_info(node)
    assert info.ready
    assert info.unschedulable
    assert info.allocatable == {"cpu": 15.5, "memory": 62 * 2**30, "nvidia.com/gpu": 1.0}


def _deployment(replicas: int, applied: str, version: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "gemma",
            "namespace": "ai",
            "uid": "d1",
            "resourceVersion": version,
            "labels": {"app.kubernetes.io/instance": "gemma"},
            "annotations": {"slm.dev/applied": applied},
        },
        "spec": {"replicas": replicas},
    }


def test_children_are_read_from_an_apply_answer_until_the_watch_delivers_it() -> None:
    caches = Caches()
    key = ("ai", "gemma")
    caches.observe(DEPLOYMENT, key, _deployment(0, "held", "10"), deleted=False)
    caches.remember(key, _deployment(1, "released", "11"))  # the apply's answer

    [seen] = caches.children_now(key)
    assert seen["spec"]["replicas"] == 1  # not the held Deployment the watch still has

    later = _deployment(1, "released", "12")  # the watch caught up (and moved on)
    caches.observe(DEPLOYMENT, key, later, deleted=False)
    assert caches.children_now(key) == [later]


def test_an_apply_answer_does_not_bring_back_a_deleted_child() -> None:
    caches = Caches()
    key = ("ai", "gemma")
    caches.remember(key, _deployment(1, "released", "11"))
    assert [c["metadata"]["name"] for c in caches.children_now(key)] == ["gemma"]
    caches.observe(DEPLOYMENT, key, _deployment(1, "released", "13"), deleted=True)
    assert caches.children_now(key) == []
    assert caches.live(key, DEPLOYMENT, "gemma") is None


def test_the_readiness_answer_names_the_serving_device_and_what_it_left() -> None:
    answer = {
        "status": "ready",
        "device": "cpu",
        "fallback": {"npu": "the OpenVINO execution provider is not installed"},
    }
    assert runtime_device(answer) == RuntimeDevice(
        Device.CPU, (("npu", "the OpenVINO execution provider is not installed"),)
    )
    assert runtime_device({"device": "tpu"}) is None
    assert runtime_device(["cpu"]) is None


def test_reported_devices_reach_the_pods_they_belong_to() -> None:
    ready = _pod("gemma-a", phase="Running", conditions=[{"type": "Ready", "status": "True"}])
    obs = observation(
        deployment=None,
        runtime_pods=[ready, _pod("gemma-b", phase="Pending")],
        service_monitor_crd=True,
        inference_pool_crd=True,
        devices={"gemma-a": RuntimeDevice(Device.CPU)},
    )
    assert [(p.name, p.device) for p in obs.pods] == [
        ("gemma-a", RuntimeDevice(Device.CPU)),
        ("gemma-b", None),
    ]


def test_an_oom_killed_container_is_named_with_its_memory_limit() -> None:
    killed = {"terminated": {"reason": "OOMKilled", "exitCode": 137}}
    pod = _pod(
        "p",
        phase="Running",
        containerStatuses=[
            {
                "name": "server",
                "restartCount": 2,
                "lastState": killed,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            }
        ],
    )
    pod["spec"] = {
        "initContainers": [{"name": "pull"}],
        "containers": [{"name": "server", "resources": {"limits": {"memory": "64Mi"}}}],
    }
    summary = pod_summary(pod)
    assert (summary.out_of_memory, summary.memory_limit) == ("server", "64Mi")
    # The operator's caches keep pods without their spec: the Deployment's template has it.
    template = pod.pop("spec")
    assert pod_summary(pod, template).memory_limit == "64Mi"
    # The kubelet reports the limit it applied: it wins over a template changed since.
    applied = {"limits": {"memory": "48Mi"}, "requests": {"memory": "48Mi"}}
    pod["status"]["containerStatuses"][0]["resources"] = applied
    assert pod_summary(pod, template).memory_limit == "48Mi"
    del pod["status"]["containerStatuses"][0]["resources"]
    del template["containers"][0]["resources"]
    assert pod_summary(pod, template).memory_limit is None
    pod["status"]["containerStatuses"][0]["lastState"] = {
        "terminated": {"reason": "Error", "exitCode": 1}
    }
    assert pod_summary(pod).out_of_memory is None
    # A PerPod pull init container killed once, then completed: not the server's limit.
    pod["status"]["initContainerStatuses"] = [
        {"name": "pull", "lastState": killed, "state": {"terminated": {"exitCode": 0}}}
    ]
    assert pod_summary(pod).out_of_memory is None
