"""Placement: tiers, formats, capacity, taints, selectors, step-down and the in-pod device order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from slm_operator.api import parse_localmodel
from slm_operator.catalog import (
    DEFAULT_CUDA_IMAGE,
    DEFAULT_IMAGE,
    AcceleratorCatalog,
    AcceleratorOption,
    Tier,
    default_catalog,
)
from slm_operator.conditions import Reason
from slm_operator.place import NoServableTier, Placement, place, tolerates
from slm_operator.spec import LocalModelSpec
from slm_operator.summary import NodeInfo
from slm_runtime.config import Device, ModelFormat

pytestmark = pytest.mark.unit

GIB = 1024**3
GGUF = "hf://org/repo/model.gguf"
ONNX = "hf://org/repo/model.onnx"

NVIDIA_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
AMD_TAINT = {"key": "amd.com/gpu", "effect": "NoSchedule"}
NO_NPU = "no node offers intel.com/npu"
AMD_NPU_IMAGE = "registry.example/slm-runtime:vitisai"
AMD_GPU_IMAGE = "registry.example/slm-runtime:rocm"


def two_option_catalog() -> AcceleratorCatalog:
    """The default catalog plus a second option on the npu and gpu tiers, as an admin with
    runtime images for AMD devices would configure it."""
    catalog = default_catalog()
    npu, gpu = catalog.tier(Device.NPU), catalog.tier(Device.GPU)
    assert npu is not None
    assert gpu is not None
    npu.options.append(
        AcceleratorOption(
            name="amd-npu", resource="amd.com/xdna", formats=[ModelFormat.ONNX], image=AMD_NPU_IMAGE
        )
    )
    gpu.options.append(
        AcceleratorOption(
            name="amd-gpu",
            resource="amd.com/gpu",
            formats=[ModelFormat.GGUF],
            image=AMD_GPU_IMAGE,
            tolerations=[{"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        )
    )
    return catalog


TWO_OPTIONS = two_option_catalog()


def make_spec(source: str = ONNX, **spec: Any) -> LocalModelSpec:
    """A LocalModelSpec from a dict, through the same parser the operator uses."""
    body = {"metadata": {"name": "m"}, "spec": {"model": {"source": source}, **spec}}
    return parse_localmodel(body).spec


def node(name: str, *, used: dict[str, float] | None = None, **kwargs: Any) -> NodeInfo:
    """A node with 8 cores and 32 GiB plus the given devices (as ``devices={...}``)."""
    allocatable = {"cpu": 8.0, "memory": 32.0 * GIB, "pods": 110.0}
    allocatable.update(kwargs.pop("devices", {}))
    return NodeInfo(name=name, allocatable=allocatable, requested=used or {}, **kwargs)


def cpu_node(name: str = "cpu-0", **kwargs: Any) -> NodeInfo:
    return node(name, **kwargs)


def nvidia_node(name: str = "gpu-0", gpus: int = 1, **kwargs: Any) -> NodeInfo:
    kwargs.setdefault("taints", [NVIDIA_TAINT])
    return node(name, devices={"nvidia.com/gpu": float(gpus)}, **kwargs)


def amd_gpu_node(name: str = "amdgpu-0", **kwargs: Any) -> NodeInfo:
    return node(name, devices={"amd.com/gpu": 1.0}, taints=[AMD_TAINT], **kwargs)


def intel_npu_node(name: str = "npu-0", **kwargs: Any) -> NodeInfo:
    return node(name, devices={"intel.com/npu": 1.0}, **kwargs)


def amd_npu_node(name: str = "xdna-0", **kwargs: Any) -> NodeInfo:
    return node(name, devices={"amd.com/xdna": 1.0}, **kwargs)


@dataclass(frozen=True)
class Case:
    """One placement scenario and what it must produce."""

    id: str
    nodes: list[NodeInfo]
    device: Device
    option: str
    reason: Reason
    spec: dict[str, Any] = field(default_factory=dict)
    source: str = ONNX
    skipped: dict[Device, str] = field(default_factory=dict)
    """Each skipped tier and a fragment its reason must contain."""
    start_at: Device | None = None
    pod_requests: dict[str, float] | None = None
    catalog: AcceleratorCatalog | None = None

    @property
    def placed(self) -> bool:
        return self.reason is not Reason.NO_CAPACITY


CASES = [
    Case(
        "preferred npu available",
        [cpu_node(), nvidia_node(), intel_npu_node()],
        Device.NPU,
        "intel-npu",
        Reason.PLACED,
    ),
    Case(
        "second npu option when only an AMD NPU exists",
        [cpu_node(), amd_npu_node()],
        Device.NPU,
        "amd-npu",
        Reason.PLACED,
        catalog=TWO_OPTIONS,
    ),
    Case(
        "no npu in the cluster: falls back to gpu",
        [cpu_node(), nvidia_node()],
        Device.GPU,
        "nvidia-gpu",
        Reason.FELL_BACK,
        skipped={Device.NPU: NO_NPU},
    ),
    Case(
        "no npu and no gpu: falls back to cpu",
        [cpu_node()],
        Device.CPU,
        "cpu",
        Reason.FELL_BACK,
        skipped={
            Device.NPU: NO_NPU,
            Device.GPU: "no node offers nvidia.com/gpu",
        },
    ),
    Case(
        "gguf is not offered to the npu even when one is free",
        [intel_npu_node(), nvidia_node()],
        Device.GPU,
        "nvidia-gpu",
        Reason.FELL_BACK,
        source=GGUF,
        skipped={Device.NPU: "format gguf is not served on npu"},
    ),
    Case(
        "gguf runs on an AMD GPU",
        [cpu_node(), amd_gpu_node()],
        Device.GPU,
        "amd-gpu",
        Reason.FELL_BACK,
        source=GGUF,
        skipped={Device.NPU: "format gguf is not served on npu"},
        catalog=TWO_OPTIONS,
    ),
    Case(
        "onnx is not offered to the AMD GPU option",
        [cpu_node(), amd_gpu_node()],
        Device.CPU,
        "cpu",
        Reason.FELL_BACK,
        skipped={Device.NPU: NO_NPU, Device.GPU: "no node offers nvidia.com/gpu"},
        catalog=TWO_OPTIONS,
    ),
    Case(
        "gpu preferred, both options listed for gguf",
        [amd_gpu_node(), nvidia_node()],
        Device.GPU,
        "nvidia-gpu",
        Reason.PLACED,
        source=GGUF,
        spec={"hardware": {"preferred": "gpu", "fallback": ["cpu"]}},
        catalog=TWO_OPTIONS,
    ),
    Case(
        "untolerated taint on the only gpu node",
        [
            cpu_node(),
            nvidia_node(
                taints=[NVIDIA_TAINT, {"key": "team", "value": "ml", "effect": "NoSchedule"}]
            ),
        ],
        Device.CPU,
        "cpu",
        Reason.FELL_BACK,
        skipped={
            Device.NPU: NO_NPU,
            Device.GPU: "every Ready node offering nvidia.com/gpu has a taint the pods do not "
            "tolerate (team=ml:NoSchedule)",
        },
    ),
    Case(
        "user toleration admits the tainted gpu node",
        [
            cpu_node(),
            nvidia_node(
                taints=[NVIDIA_TAINT, {"key": "team", "value": "ml", "effect": "NoSchedule"}]
            ),
        ],
        Device.GPU,
        "nvidia-gpu",
        Reason.FELL_BACK,
        spec={"scheduling": {"tolerations": [{"key": "team", "operator": "Equal", "value": "ml"}]}},
        skipped={Device.NPU: "no node offers"},
    ),
    Case(
        "NoExecute taint blocks, PreferNoSchedule does not",
        [
            cpu_node(taints=[{"key": "spot", "effect": "PreferNoSchedule"}]),
            nvidia_node(taints=[NVIDIA_TAINT, {"key": "maintenance", "effect": "NoExecute"}]),
        ],
        Device.CPU,
        "cpu",
        Reason.FELL_BACK,
        skipped={Device.NPU: NO_NPU, Device.GPU: "(maintenance:NoExecute)"},
    ),
    Case(
        "user nodeSelector excludes the gpu node",
        [cpu_node(labels={"pool": "ai"}), nvidia_node(labels={"pool": "batch"})],
        Device.CPU,
        "cpu",
        Reason.FELL_BACK,
        spec={"scheduling": {"nodeSelector": {"pool": "ai"}}},
        skipped={
            Device.NPU: NO_NPU,
            Device.GPU: "no Ready node offering nvidia.com/gpu matches nodeSelector pool=ai",
        },
    ),
    Case(
        "user nodeSelector picks among gpu nodes",
        [
            nvidia_node("gpu-a", labels={"pool": "batch"}),
            nvidia_node("gpu-b", labels={"pool": "ai"}),
        ],
        Device.GPU,
        "nvidia-gpu",
        Reason.FELL_BACK,
        skipped={Device.NPU: NO_NPU},
        spec={"scheduling": {"nodeSelector": {"pool": "ai"}}},
    ),
    Case(
        "nodeSelector no node matches at all",
        [cpu_node()],
        Device.CPU,
        "cpu",
        Reason.NO_CAPACITY,
        spec={"scheduling": {"nodeSelector": {"pool": "ai"}}},
        skipped={Device.CPU: "no Ready node matches nodeSelector pool=ai"},
    ),
    Case(
        "not-Ready gpu node is ignored",
        [cpu_node(), nvidia_node(ready=False)],
        Device.CPU,
        "cpu",
        Reason.FELL_BACK,
        skipped={
            Device.NPU: NO_NPU,
            Device.GPU: "no Ready, schedulable node offering nvidia.com/gpu",
        },
    ),
    Case(
        "cordoned npu node is ignored",
        [cpu_node(), intel_npu_node(unschedulable=True)],
        Device.CPU,
        "cpu",
        Reason.FELL_BACK,
        skipped={
            Device.GPU: "no node offers nvidia.com/gpu",
            Device.NPU: "no Ready, schedulable node offering intel.com/npu",
        },
    ),
    Case(
        "full gpu node (requested == allocatable) is skipped",
        [cpu_node(), nvidia_node(used={"nvidia.com/gpu": 1.0})],
        Device.CPU,
        "cpu",
        Reason.FELL_BACK,
        skipped={Device.NPU: NO_NPU, Device.GPU: "no Ready node with free nvidia.com/gpu"},
    ),
    Case(
        "a second gpu node with a free device wins",
        [nvidia_node("gpu-a", used={"nvidia.com/gpu": 1.0}), nvidia_node("gpu-b")],
        Device.GPU,
        "nvidia-gpu",
        Reason.FELL_BACK,
        skipped={Device.NPU: NO_NPU},
    ),
    Case(
        "pod memory must be free on the node",
        [cpu_node(), nvidia_node(used={"memory": 30.0 * GIB})],
        Device.CPU,
        "cpu",
        Reason.FELL_BACK,
        pod_requests={"cpu": 1.0, "memory": 4.5 * GIB},
        skipped={
            Device.NPU: NO_NPU,
            Device.GPU: "no Ready node with free nvidia.com/gpu has 4.5Gi memory free",
        },
    ),
    Case(
        "nothing fits: no capacity, placed on the last tier",
        [cpu_node(used={"cpu": 8.0}), nvidia_node(used={"nvidia.com/gpu": 1.0})],
        Device.CPU,
        "cpu",
        Reason.NO_CAPACITY,
        pod_requests={"cpu": 0.5, "memory": 1.0 * GIB},
        skipped={
            Device.NPU: NO_NPU,
            Device.GPU: "no Ready node with free nvidia.com/gpu",
            Device.CPU: "no Ready node has 500m cpu free",
        },
    ),
    Case(
        "nothing fits without cpu in the list: last tier is gpu",
        [cpu_node()],
        Device.GPU,
        "nvidia-gpu",
        Reason.NO_CAPACITY,
        spec={"hardware": {"preferred": "npu", "fallback": ["gpu"]}},
        skipped={Device.NPU: "no node offers", Device.GPU: "no node offers nvidia.com/gpu"},
    ),
    Case(
        "nothing fits on AMD GPUs only: waits for an AMD GPU, not an absent NVIDIA one",
        [cpu_node(), amd_gpu_node(used={"amd.com/gpu": 1.0})],
        Device.GPU,
        "amd-gpu",
        Reason.NO_CAPACITY,
        source=GGUF,
        spec={"hardware": {"preferred": "gpu", "fallback": []}},
        skipped={Device.GPU: "no node offers nvidia.com/gpu, no Ready node with free amd.com/gpu"},
        catalog=TWO_OPTIONS,
    ),
    Case(
        "no nodes at all",
        [],
        Device.CPU,
        "cpu",
        Reason.NO_CAPACITY,
        skipped={
            Device.NPU: NO_NPU,
            Device.GPU: "no node offers nvidia.com/gpu",
            Device.CPU: "no Ready, schedulable node",
        },
    ),
    Case(
        "last servable tier when the last listed tier cannot serve the format",
        [cpu_node()],
        Device.GPU,
        "nvidia-gpu",
        Reason.NO_CAPACITY,
        source=GGUF,
        spec={"hardware": {"preferred": "gpu", "fallback": ["npu"]}},
        skipped={Device.NPU: "format gguf is not served on npu"},
    ),
    Case(
        "start_at skips the tiers above it even when they have room",
        [intel_npu_node(), nvidia_node()],
        Device.GPU,
        "nvidia-gpu",
        Reason.FELL_BACK,
        start_at=Device.GPU,
        skipped={Device.NPU: "pods stayed unschedulable for longer than fallbackAfter (120s)"},
    ),
    Case(
        "start_at names the configured fallbackAfter",
        [intel_npu_node(), nvidia_node(), cpu_node()],
        Device.CPU,
        "cpu",
        Reason.FELL_BACK,
        spec={"hardware": {"fallbackAfter": "5m"}},
        start_at=Device.CPU,
        skipped={Device.NPU: "fallbackAfter (5m)", Device.GPU: "fallbackAfter (5m)"},
    ),
    Case(
        "start_at no longer in the list is ignored",
        [intel_npu_node()],
        Device.NPU,
        "intel-npu",
        Reason.PLACED,
        spec={"hardware": {"preferred": "npu", "fallback": ["cpu"]}},
        start_at=Device.GPU,
    ),
    Case(
        "tier missing from the catalog",
        [cpu_node(), intel_npu_node()],
        Device.CPU,
        "cpu",
        Reason.FELL_BACK,
        catalog=AcceleratorCatalog(
            tiers=[Tier(device=Device.CPU, options=[AcceleratorOption(name="cpu")])]
        ),
        skipped={
            Device.NPU: "not in the accelerator catalog",
            Device.GPU: "not in the accelerator catalog",
        },
    ),
    Case(
        "two devices per pod need two free",
        [cpu_node(), nvidia_node(gpus=2, used={"nvidia.com/gpu": 1.0})],
        Device.CPU,
        "cpu",
        Reason.FELL_BACK,
        catalog=AcceleratorCatalog(
            tiers=[
                Tier(
                    device=Device.GPU,
                    options=[
                        AcceleratorOption(
                            name="nvidia-x2",
                            resource="nvidia.com/gpu",
                            count=2,
                            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}],
                        )
                    ],
                ),
                Tier(device=Device.CPU, options=[AcceleratorOption(name="cpu")]),
            ]
        ),
        spec={"hardware": {"preferred": "gpu", "fallback": ["cpu"]}},
        skipped={Device.GPU: "no Ready node with 2 free nvidia.com/gpu"},
    ),
    Case(
        "catalog option node selector must match",
        [nvidia_node("gpu-a"), nvidia_node("gpu-b", labels={"gpu.product": "L4"})],
        Device.GPU,
        "l4",
        Reason.PLACED,
        catalog=AcceleratorCatalog(
            tiers=[
                Tier(
                    device=Device.GPU,
                    options=[
                        AcceleratorOption(
                            name="l4",
                            resource="nvidia.com/gpu",
                            node_selector={"gpu.product": "L4"},
                            tolerations=[NVIDIA_TAINT | {"operator": "Equal"}],
                        )
                    ],
                )
            ]
        ),
        spec={"hardware": {"preferred": "gpu", "fallback": []}},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_place(case: Case) -> None:
    spec = make_spec(case.source, **case.spec)
    placement = place(
        spec,
        case.nodes,
        case.catalog or default_catalog(),
        start_at=case.start_at,
        pod_requests=case.pod_requests,
    )

    assert (placement.device, placement.option) == (case.device, case.option)
    assert placement.placed is case.placed
    assert placement.reason is case.reason
    reasons = {s.device: s.reason for s in placement.skipped}
    for device, fragment in case.skipped.items():
        assert fragment in reasons.get(device, ""), reasons
    if case.placed:
        assert set(reasons) == set(case.skipped), "only the tiers above the placed one are skipped"
        assert placement.device not in reasons
    else:
        assert list(reasons) == spec.hardware.tiers(), "no capacity names every tier"


def test_preferred_tier_placement_details() -> None:
    placement = place(make_spec(), [intel_npu_node()], default_catalog())
    assert placement == Placement(
        device=Device.NPU,
        option="intel-npu",
        placed=True,
        reason=Reason.PLACED,
        skipped=(),
        image=DEFAULT_IMAGE,
        resources={"intel.com/npu": "1"},
        node_selector={},
        tolerations=(),
        runtime_class_name=None,
        env={},
        openvino_device="NPU",
        devices=(Device.NPU, Device.GPU, Device.CPU),
    )
    assert placement.accelerated
    assert placement.fallback_reason is None


def test_nvidia_placement_carries_runtime_class_image_and_toleration() -> None:
    placement = place(make_spec(GGUF), [nvidia_node()], default_catalog())
    assert placement.runtime_class_name == "nvidia"
    assert placement.image == DEFAULT_CUDA_IMAGE
    assert placement.resources == {"nvidia.com/gpu": "1"}
    assert placement.tolerations == (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    )
    assert placement.fallback_reason == "npu: format gguf is not served on npu"


def test_cpu_placement_requests_no_device() -> None:
    placement = place(make_spec(), [cpu_node()], default_catalog())
    assert placement.resources == {}
    assert placement.runtime_class_name is None
    assert not placement.accelerated


DRIVEN_BY: dict[tuple[Device, str | None], set[str]] = {
    (Device.NPU, "intel.com/npu"): {DEFAULT_IMAGE},  # OpenVINO execution provider
    (Device.GPU, "nvidia.com/gpu"): {DEFAULT_CUDA_IMAGE},  # CUDA llama.cpp and ONNX Runtime
    (Device.CPU, None): {DEFAULT_IMAGE, DEFAULT_CUDA_IMAGE},
}
"""Which of the project's images has an engine that uses each tier's device."""


def test_every_default_catalog_option_runs_an_image_that_drives_its_device() -> None:
    for tier in default_catalog().tiers:
        for option in tier.options:
            driven = DRIVEN_BY.get((tier.device, option.resource), set())
            assert option.image in driven, (
                f"{option.name}: {option.image} cannot use {option.resource}; its pods would "
                "hold the device and run on the CPU"
            )


@pytest.mark.parametrize("device_node", [amd_gpu_node(), amd_npu_node()])
def test_devices_no_image_drives_are_never_claimed(device_node: NodeInfo) -> None:
    for source in (GGUF, ONNX):
        placement = place(make_spec(source), [cpu_node(), device_node], default_catalog())
        assert placement.device is Device.CPU
        assert placement.resources == {}


def test_runtime_image_overrides_every_tier() -> None:
    spec = make_spec(GGUF, runtime={"image": "registry.example/slm-runtime:dev"})
    for nodes in ([nvidia_node()], [cpu_node()], []):
        assert place(spec, nodes, default_catalog()).image == "registry.example/slm-runtime:dev"


def test_selectors_and_tolerations_merge_user_and_catalog() -> None:
    user_toleration = {"key": "team", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    catalog_toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    spec = make_spec(
        GGUF,
        hardware={"preferred": "gpu", "fallback": []},
        scheduling={
            "nodeSelector": {"pool": "ai", "gpu.product": "A100"},
            "tolerations": [user_toleration, catalog_toleration],
        },
    )
    catalog = AcceleratorCatalog(
        tiers=[
            Tier(
                device=Device.GPU,
                options=[
                    AcceleratorOption(
                        name="nvidia",
                        resource="nvidia.com/gpu",
                        node_selector={"gpu.product": "L4", "vendor": "nvidia"},
                        tolerations=[catalog_toleration],
                    )
                ],
            )
        ]
    )
    gpu = nvidia_node(labels={"pool": "ai", "gpu.product": "A100", "vendor": "nvidia"})

    placement = place(spec, [gpu], catalog)

    assert placement.placed
    assert placement.node_selector == {"gpu.product": "A100", "vendor": "nvidia", "pool": "ai"}
    assert placement.tolerations == (catalog_toleration, user_toleration)


def test_placement_does_not_alias_the_catalog() -> None:
    catalog = default_catalog()
    placement = place(make_spec(GGUF), [nvidia_node()], catalog)
    placement.node_selector["x"] = "y"
    placement.env["X"] = "1"
    placement.tolerations[0]["key"] = "changed"
    option = catalog.tiers[1].options[0]
    assert option.node_selector == {}
    assert option.env == {}
    assert option.tolerations[0]["key"] == "nvidia.com/gpu"


@pytest.mark.parametrize(
    ("source", "hardware", "nodes", "devices"),
    [
        (ONNX, {}, [intel_npu_node()], (Device.NPU, Device.GPU, Device.CPU)),
        (ONNX, {}, [nvidia_node()], (Device.GPU, Device.CPU)),
        (ONNX, {}, [cpu_node()], (Device.CPU,)),
        (GGUF, {}, [nvidia_node()], (Device.GPU, Device.CPU)),
        (GGUF, {}, [], (Device.CPU,)),
        (ONNX, {"fallback": ["gpu"]}, [intel_npu_node()], (Device.NPU, Device.GPU)),
        (ONNX, {"fallback": []}, [intel_npu_node()], (Device.NPU,)),
        (
            ONNX,
            {"preferred": "gpu", "fallback": ["npu", "cpu"]},
            [nvidia_node()],
            (Device.GPU, Device.NPU, Device.CPU),
        ),
        (
            GGUF,
            {"preferred": "gpu", "fallback": ["npu", "cpu"]},
            [nvidia_node()],
            (Device.GPU, Device.CPU),
        ),
        (ONNX, {"preferred": "cpu", "fallback": ["npu"]}, [cpu_node()], (Device.CPU,)),
        # Placed on gpu after cpu: the pod can still fall back to its own cores.
        (
            ONNX,
            {"preferred": "cpu", "fallback": ["gpu"]},
            [nvidia_node()],
            (Device.GPU, Device.CPU),
        ),
    ],
)
def test_device_order(
    source: str, hardware: dict[str, Any], nodes: list[NodeInfo], devices: tuple[Device, ...]
) -> None:
    """The in-pod order: the placed tier, the lower tiers the format allows, cpu last."""
    placement = place(make_spec(source, hardware=hardware), nodes, default_catalog())
    assert placement.devices == devices


@pytest.mark.parametrize(
    ("source", "hardware", "catalog", "message"),
    [
        (
            GGUF,
            {"preferred": "npu", "fallback": []},
            None,
            "no tier in [npu] can serve gguf models (npu: format gguf is not served on npu); "
            "add gpu or cpu to spec.hardware.fallback, or serve the model in onnx format",
        ),
        (
            ONNX,
            {"preferred": "gpu", "fallback": []},
            AcceleratorCatalog(
                tiers=[
                    Tier(
                        device=Device.GPU,
                        options=[AcceleratorOption(name="a", formats=[ModelFormat.GGUF])],
                    )
                ]
            ),
            "no tier in [gpu] can serve onnx models (gpu: format onnx is not served on gpu); "
            "serve the model in gguf format",
        ),
        (
            ONNX,
            {"preferred": "npu", "fallback": ["gpu"]},
            AcceleratorCatalog(
                tiers=[Tier(device=Device.CPU, options=[AcceleratorOption(name="cpu")])]
            ),
            "no tier in [npu, gpu] can serve onnx models (npu: not in the accelerator catalog; "
            "gpu: not in the accelerator catalog); add cpu to spec.hardware.fallback",
        ),
    ],
)
def test_no_servable_tier(
    source: str, hardware: dict[str, Any], catalog: AcceleratorCatalog | None, message: str
) -> None:
    spec = make_spec(source, hardware=hardware)
    with pytest.raises(NoServableTier) as info:
        place(spec, [cpu_node(), intel_npu_node(), nvidia_node()], catalog or default_catalog())
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("toleration", "taint", "expected"),
    [
        ({"operator": "Exists"}, {"key": "a", "value": "b", "effect": "NoSchedule"}, True),
        (
            {"operator": "Exists", "effect": "NoExecute"},
            {"key": "a", "effect": "NoSchedule"},
            False,
        ),
        (
            {"key": "a", "operator": "Exists"},
            {"key": "a", "value": "x", "effect": "NoExecute"},
            True,
        ),
        ({"key": "a", "operator": "Exists"}, {"key": "b", "effect": "NoSchedule"}, False),
        ({"key": "a", "value": "x"}, {"key": "a", "value": "x", "effect": "NoSchedule"}, True),
        (
            {"key": "a", "operator": "Equal", "value": "y"},
            {"key": "a", "value": "x", "effect": "NoSchedule"},
            False,
        ),
        ({"key": "a", "operator": "Equal"}, {"key": "a", "effect": "NoSchedule"}, True),
        ({"key": "a", "effect": "NoSchedule"}, {"key": "a", "effect": "NoSchedule"}, True),
        ({"key": "a", "effect": "NoSchedule"}, {"key": "a", "effect": "NoExecute"}, False),
    ],
)
def test_tolerates(toleration: dict[str, Any], taint: dict[str, Any], expected: bool) -> None:
    assert tolerates(toleration, taint) is expected


def test_placement_is_deterministic() -> None:
    spec = make_spec(GGUF)
    nodes = [nvidia_node("gpu-b"), cpu_node(), nvidia_node("gpu-a")]
    assert place(spec, nodes, default_catalog()) == place(spec, nodes, default_catalog())


@pytest.mark.parametrize(
    "device_type",
    ["CPU", "GPU", "npu", "AUTO:CPU,NPU", "AUTO:NPU,CPU", "MULTI:NPU,CPU", "HETERO:NPU", ""],
)
def test_a_catalog_openvino_device_other_than_the_npu_is_refused_at_load(device_type: str) -> None:
    with pytest.raises(ValueError, match="openvinoDevice"):
        AcceleratorOption(name="npu", resource="intel.com/npu", openvino_device=device_type)
