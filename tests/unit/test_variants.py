"""Hardware variants: the tier is placed first, then that tier's variant is pulled and served.

Tables over every tier order, a tier no variant serves, a step down that switches variant, and
the in-pod device order that stays within the placed variant; the alias catalog; the render of
a variant LocalModel (its own source, parameters, volume and pull Job).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from slm_operator.aliases import ModelCatalog, default_models, unknown_alias, with_alias
from slm_operator.api import InvalidSpecError, LocalModel, parse_localmodel
from slm_operator.catalog import default_catalog
from slm_operator.children import RenderOptions, pvc_name
from slm_operator.conditions import LocalModelStatus, Reason
from slm_operator.place import NO_VARIANT, NoServableTier, decide, place
from slm_operator.render import pull_job_name, render
from slm_operator.sizing import pulled_size, requests_by_tier
from slm_operator.status import variant_choice
from slm_operator.summary import NodeInfo, Observation, PodSummary
from slm_runtime.config import Device, RuntimeConfig

pytestmark = pytest.mark.unit

GIB = 1024**3
ONNX_NPU = {
    "name": "npu-onnx",
    "tiers": ["npu"],
    "source": "hf://org/phi-onnx/npu-int4",
    "format": "onnx",
    "parameters": {"contextLength": 2048},
}
GGUF_GPU_CPU = {"name": "gguf", "tiers": ["gpu", "cpu"], "source": "hf://org/phi-gguf/m.gguf"}
GGUF_CPU = {"name": "gguf-cpu", "tiers": ["cpu"], "source": "hf://org/phi-gguf/m.gguf"}
ONNX_GPU = {
    "name": "gpu-onnx",
    "tiers": ["gpu"],
    "source": "hf://org/phi-onnx/gpu",
    "format": "onnx",
}


def model(variants: list[dict[str, Any]], **spec: Any) -> LocalModel:
    body = {
        "metadata": {"name": "phi", "namespace": "ai", "uid": "u-1"},
        "spec": {"model": {"variants": variants}, "parameters": {"contextLength": 8192}, **spec},
    }
    return parse_localmodel(body)


def nodes(*devices: str, free: bool = True) -> list[NodeInfo]:
    """One node per device resource (plus a CPU node), each device free or taken."""
    out = [NodeInfo(name="cpu-0", allocatable={"cpu": 8.0, "memory": 32.0 * GIB, "pods": 110.0})]
    for resource in devices:
        out.append(
            NodeInfo(
                name=resource.split("/")[0],
                allocatable={"cpu": 8.0, "memory": 32.0 * GIB, "pods": 110.0, resource: 1.0},
                requested={} if free else {resource: 1.0},
                labels={"nvidia.com/gpu.present": "true"} if "nvidia" in resource else {},
                taints=[],
            )
        )
    return out


ALL = nodes("intel.com/npu", "nvidia.com/gpu")
THREE = [ONNX_NPU, ONNX_GPU, GGUF_CPU]


# --- placement: tier first, then its variant --------------------------------------------------


@pytest.mark.parametrize("order", list(itertools.permutations(["npu", "gpu", "cpu"])))
def test_every_tier_order_places_the_first_tier_and_runs_its_variant(
    order: tuple[str, ...],
) -> None:
    lm = model(THREE, hardware={"preferred": order[0], "fallback": list(order[1:])})
    placement = place(lm.spec, ALL, default_catalog())
    assert placement.device.value == order[0]
    assert placement.reason is Reason.PLACED
    expected = {"npu": "npu-onnx", "gpu": "gpu-onnx", "cpu": "gguf-cpu"}[order[0]]
    assert placement.variant is not None
    assert placement.variant.name == expected


@pytest.mark.parametrize(
    ("free", "tier", "variant", "skipped"),
    [
        ({"intel.com/npu", "nvidia.com/gpu"}, Device.NPU, "npu-onnx", ""),
        ({"nvidia.com/gpu"}, Device.GPU, "gguf", "npu: no Ready node with free intel.com/npu"),
        (set(), Device.CPU, "gguf", "npu: no Ready node with free intel.com/npu; gpu: no Ready "
         "node with free nvidia.com/gpu"),
    ],
)  # fmt: skip
def test_a_full_tier_falls_back_to_the_next_tiers_variant(
    free: set[str], tier: Device, variant: str, skipped: str
) -> None:
    cluster = [nodes()[0]] + [
        n
        for resource in ("intel.com/npu", "nvidia.com/gpu")
        for n in nodes(resource, free=resource in free)[1:]
    ]
    lm = model([ONNX_NPU, GGUF_GPU_CPU], hardware={"preferred": "npu", "fallback": ["gpu", "cpu"]})
    placement = place(lm.spec, cluster, default_catalog())
    assert (placement.device, placement.variant and placement.variant.name) == (tier, variant)
    assert (placement.fallback_reason or "") == skipped


def test_a_tier_no_variant_serves_is_skipped_with_its_reason() -> None:
    """An alias's variants may leave a tier of spec.hardware uncovered (the CRD cannot see the
    catalog): placement passes it by, naming why."""
    lm = model([GGUF_GPU_CPU], hardware={"preferred": "gpu", "fallback": ["cpu"]})
    hardware = lm.spec.hardware.model_copy(
        update={"preferred": Device.NPU, "fallback": [Device.GPU, Device.CPU]}
    )
    spec = lm.spec.model_copy(update={"hardware": hardware})
    placement = place(spec, ALL, default_catalog())
    assert placement.device is Device.GPU
    assert placement.fallback_reason == f"npu: {NO_VARIANT}"


def test_a_variant_whose_format_its_tier_cannot_serve_is_skipped() -> None:
    gguf_on_npu = {**GGUF_GPU_CPU, "tiers": ["npu", "gpu", "cpu"]}
    lm = model([gguf_on_npu])
    placement = place(lm.spec, ALL, default_catalog())
    assert placement.device is Device.GPU
    assert placement.fallback_reason == "npu: format gguf is not served on npu"


def test_no_tier_can_serve_any_variant_is_refused_naming_each_tier() -> None:
    gguf_on_npu = {**GGUF_GPU_CPU, "tiers": ["npu"]}
    lm = model([gguf_on_npu], hardware={"preferred": "npu", "fallback": []})
    with pytest.raises(NoServableTier, match=r"npu: format gguf is not served on npu"):
        place(lm.spec, ALL, default_catalog())


@pytest.mark.parametrize(
    ("variants", "tier", "devices"),
    [
        ([ONNX_NPU, GGUF_GPU_CPU], Device.NPU, (Device.NPU,)),
        ([ONNX_NPU, GGUF_GPU_CPU], Device.GPU, (Device.GPU, Device.CPU)),
        ([ONNX_NPU, GGUF_GPU_CPU], Device.CPU, (Device.CPU,)),
        (THREE, Device.GPU, (Device.GPU,)),
        ([{**ONNX_NPU, "tiers": ["npu", "gpu", "cpu"]}], Device.NPU, tuple(Device)),
    ],
)
def test_the_runtime_tries_only_the_devices_its_variant_serves(
    variants: list[dict[str, Any]], tier: Device, devices: tuple[Device, ...]
) -> None:
    lm = model(variants, hardware={"preferred": "npu", "fallback": ["gpu", "cpu"]})
    placement = place(lm.spec, ALL, default_catalog(), start_at=tier)
    assert placement.device is tier
    assert placement.devices == devices


def test_the_single_source_form_is_one_variant_and_names_none() -> None:
    lm = parse_localmodel(
        {"metadata": {"name": "g"}, "spec": {"model": {"source": "hf://o/r/m.gguf"}}}
    )
    placement = place(lm.spec, ALL, default_catalog())
    assert placement.device is Device.GPU  # gguf skips the npu, as before variants
    assert placement.variant is None
    assert placement.devices == (Device.GPU, Device.CPU)
    assert lm.serving(placement.variant) is lm


def test_a_step_down_switches_to_the_lower_tiers_variant() -> None:
    lm = model([ONNX_NPU, GGUF_GPU_CPU], hardware={"preferred": "npu", "fallback": ["cpu"],
                                                   "fallbackAfter": "30s"})  # fmt: skip
    now = datetime(2026, 1, 1, tzinfo=UTC)
    waiting = Observation(
        pods=(
            PodSummary(
                name="phi-0",
                unschedulable_since=now - timedelta(seconds=31),
                scheduler_message="0/2 nodes are available: 1 Insufficient intel.com/npu.",
            ),
        )
    )
    decision = decide(lm.spec, ALL, default_catalog(), Device.NPU, waiting, now)
    placement = decision.placement
    assert placement.device is Device.CPU
    assert placement.variant is not None
    assert placement.variant.name == "gguf"
    assert decision.stepped_down is not None
    assert "unschedulable on npu" in decision.stepped_down
    served = lm.serving(placement.variant)
    npu = lm.serving(lm.spec.model.variant_for(Device.NPU))
    assert pvc_name(served) != pvc_name(npu)


def test_a_tier_is_sized_by_its_variant_and_only_by_that_variants_pulled_size() -> None:
    """After the NPU variant pulled 12 GiB, the CPU tier's GGUF is sized by its own estimate,
    not by the other variant's size (status describes the NPU source)."""
    lm = model([ONNX_NPU, GGUF_GPU_CPU], hardware={"preferred": "npu", "fallback": ["cpu"]})
    lm = lm.model_copy(
        update={
            "status": LocalModelStatus.model_validate(
                {"model": {"source": ONNX_NPU["source"], "sizeBytes": 12 * GIB}}
            )
        }
    )
    requests = requests_by_tier(lm)
    assert requests(Device.NPU)["memory"] > 12 * GIB
    assert requests(Device.CPU)["memory"] < 12 * GIB
    cpu = lm.serving(lm.spec.model.variant_for(Device.CPU))
    assert pulled_size(cpu) is None
    assert pulled_size(lm.serving(lm.spec.model.variant_for(Device.NPU))) == 12 * GIB


def test_each_tier_sizes_its_pods_by_its_own_variant() -> None:
    """The memory a tier's pods must find free is that tier's variant's, not another's."""
    lm = model([ONNX_NPU, GGUF_GPU_CPU], hardware={"preferred": "npu", "fallback": ["cpu"]})
    asked: list[Device] = []

    def requests(device: Device) -> dict[str, float]:
        asked.append(device)
        return {"memory": 64.0 * GIB} if device is Device.NPU else {"memory": 1.0 * GIB}

    placement = place(lm.spec, ALL, default_catalog(), pod_requests=requests)
    assert placement.device is Device.CPU
    assert asked == [Device.NPU, Device.CPU]
    assert "64Gi memory" in (placement.fallback_reason or "")


# --- the served model ---------------------------------------------------------------------------


def test_the_pods_pull_and_run_their_variant_with_its_parameter_overrides() -> None:
    lm = model([ONNX_NPU, GGUF_GPU_CPU], hardware={"preferred": "npu", "fallback": ["cpu"]})
    options = RenderOptions()
    by_tier = {}
    for tier in (Device.NPU, Device.CPU):
        placement = place(lm.spec, ALL, default_catalog(), start_at=tier)
        objects = {o["kind"]: o for o in render(lm, placement, options)}
        config = RuntimeConfig.from_yaml(objects["ConfigMap"]["data"]["config.yaml"])
        by_tier[tier] = (config, objects, pull_job_name(lm, placement, options))
    npu, cpu = by_tier[Device.NPU], by_tier[Device.CPU]
    assert (npu[0].source, npu[0].format.value) == ("hf://org/phi-onnx/npu-int4", "onnx")
    assert npu[0].parameters.context_length == 2048  # the variant's override
    assert (cpu[0].source, cpu[0].format.value) == ("hf://org/phi-gguf/m.gguf", "gguf")
    assert cpu[0].parameters.context_length == 8192  # spec.parameters
    assert npu[0].devices == [Device.NPU]
    # Each variant its own volume and pull Job, named by the hash of what it holds.
    assert (
        npu[1]["PersistentVolumeClaim"]["metadata"]["name"]
        != (cpu[1]["PersistentVolumeClaim"]["metadata"]["name"])
    )
    assert npu[2] != cpu[2]
    assert npu[2] == npu[1]["Job"]["metadata"]["name"]


def test_status_and_event_name_the_variant_and_why() -> None:
    from slm_operator.status import compute_status

    lm = model([ONNX_NPU, GGUF_GPU_CPU], hardware={"preferred": "npu", "fallback": ["cpu"]})
    cluster = nodes("intel.com/npu", free=False)
    placement = place(lm.spec, cluster, default_catalog())
    served = lm.serving(placement.variant)
    status = compute_status(served, placement, Observation(), now=datetime.now(UTC))
    assert status.model.variant == "gguf"
    assert status.model.source == "hf://org/phi-gguf/m.gguf"
    assert status.model.format is not None
    assert status.model.format.value == "gguf"
    assert status.placed_tier is Device.CPU
    message = variant_choice(LocalModelStatus(), status, placement)
    assert message == (
        "serving variant gguf (gguf hf://org/phi-gguf/m.gguf) on cpu: npu: no Ready node with "
        "free intel.com/npu"
    )
    assert variant_choice(status, status, placement) is None  # said once


# --- the alias catalog --------------------------------------------------------------------------


def test_the_built_in_catalog_is_the_charts_models_value() -> None:
    from pathlib import Path

    values = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "charts/slm-operator/values.yaml").read_text()
    )
    assert ModelCatalog.model_validate(values["models"]) == default_models()


def test_every_built_in_entry_says_whether_it_is_pinned() -> None:
    for name in default_models().names():
        entry = default_models().get(name)
        assert entry is not None
        assert entry.pinned() or "Not pinned" in entry.description, name


def test_phi_4_mini_has_an_onnx_npu_variant_and_a_gguf_for_gpu_and_cpu() -> None:
    entry = default_models().get("phi-4-mini")
    assert entry is not None
    formats = {t: v.resolved_format().value for v in entry.variants for t in v.tiers}
    assert formats == {Device.NPU: "onnx", Device.GPU: "gguf", Device.CPU: "gguf"}


def test_an_unknown_alias_names_the_field_and_the_known_ones() -> None:
    message = unknown_alias("phi-5", default_models())
    assert message.startswith("spec.model.alias: phi-5 is not in the operator's model catalog")
    assert "phi-4-mini" in message


@pytest.mark.parametrize(
    ("catalog", "error"),
    [
        ({"Phi": {"description": "d", "variants": [GGUF_CPU]}}, "model catalog alias 'Phi'"),
        ({"p": {"description": "d", "variants": [GGUF_CPU, {**GGUF_CPU, "name": "b"}]}},
         "a tier is listed by two variants"),
        ({"p": {"description": "d", "variants": []}}, "at least 1 item"),
    ],
)  # fmt: skip
def test_a_bad_catalog_is_refused_at_start(catalog: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        ModelCatalog.model_validate(catalog)


def test_an_explicit_variant_list_overrides_the_alias() -> None:
    lm = model([GGUF_CPU], model={"alias": "phi-4-mini", "variants": [GGUF_CPU]},
               hardware={"preferred": "cpu", "fallback": []})  # fmt: skip
    assert with_alias(lm, default_models()) is lm


def test_an_alias_in_image_mode_needs_pinned_oci_variants() -> None:
    lm = parse_localmodel(
        {"metadata": {"name": "p"}, "spec": {"model": {"alias": "phi-4-mini"},
                                              "cache": {"mode": "Image"}}}
    )  # fmt: skip
    with pytest.raises(InvalidSpecError, match=r"^spec\.cache\.mode: Image needs oci://"):
        with_alias(lm, default_models())


def test_an_unknown_alias_is_refused_by_with_alias() -> None:
    lm = parse_localmodel({"metadata": {"name": "p"}, "spec": {"model": {"alias": "phi-5"}}})
    with pytest.raises(InvalidSpecError, match=r"^spec\.model\.alias: phi-5 is not"):
        with_alias(lm, default_models())


def test_messages_name_the_variant_a_pull_came_from() -> None:
    explicit = model([ONNX_NPU, GGUF_GPU_CPU], hardware={"preferred": "npu", "fallback": ["cpu"]})
    served = explicit.serving(explicit.spec.model.variant_for(Device.CPU))
    assert served.spec.model.field("sha256") == "spec.model.variants[gguf].sha256"
    alias = with_alias(
        parse_localmodel({"metadata": {"name": "p"}, "spec": {"model": {"alias": "phi-4-mini"}}}),
        default_models(),
    )
    served = alias.serving(alias.spec.model.variant_for(Device.CPU))
    assert served.spec.model.field("sha256") == (
        "sha256 of variant gguf-q4-k-m of the model catalog's phi-4-mini"
    )
    single = parse_localmodel(
        {"metadata": {"name": "g"}, "spec": {"model": {"source": "hf://o/r/m.gguf"}}}
    )
    assert single.spec.model.field("sha256") == "spec.model.sha256"


def test_an_alias_alone_parses_and_gets_the_catalogs_variants() -> None:
    lm = parse_localmodel({"metadata": {"name": "p"}, "spec": {"model": {"alias": "phi-4-mini"}}})
    resolved = with_alias(lm, default_models())
    assert [v.name for v in resolved.spec.model.variants or []] == ["npu-onnx-int4", "gguf-q4-k-m"]
    placement = place(resolved.spec, ALL, default_catalog())
    assert (placement.device, placement.variant and placement.variant.name) == (
        Device.NPU,
        "npu-onnx-int4",
    )


def test_a_variant_without_an_inferable_format_is_refused_naming_it() -> None:
    with pytest.raises(InvalidSpecError, match=r"spec\.model\.variants\.0: .* set format to gguf"):
        model([{"name": "a", "tiers": ["npu", "gpu", "cpu"], "source": "hf://o/r/folder"}])
