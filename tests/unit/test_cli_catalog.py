"""slmctl catalog without a cluster: the catalogs from the operator's ConfigMap (or the built-in
ones), the tiers given nodes can serve now, the table and the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from slm_operator import cli_catalog
from slm_operator.aliases import ModelCatalog, default_models
from slm_operator.catalog import default_catalog
from slm_operator.cli_catalog import Catalogs, catalog_report, catalog_table, from_configmap
from slm_operator.cli_cluster import CliError
from slm_operator.summary import node_info

from tests.unit.test_cli import CONFIGMAPS, FakeCluster, slmctl

pytestmark = pytest.mark.unit

VALUES = Path(__file__).resolve().parents[2] / "charts" / "slm-operator" / "values.yaml"
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
GPU_TAINT = {"key": "nvidia.com/gpu", "effect": "NoSchedule"}


def node(name: str, taints: list[dict[str, str]] | None = None, **devices: str) -> dict[str, Any]:
    """A Ready node as the API server lists it, with 8 cores and these extended resources
    (``nvidia_com__gpu="1"`` for nvidia.com/gpu)."""
    resources = {k.replace("__", "/").replace("_", "."): v for k, v in devices.items()}
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"taints": taints or []},
        "status": {
            "allocatable": {"cpu": "8", "memory": "31Gi", **resources},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def configmap(values: dict[str, Any], namespace: str = "slm-system") -> dict[str, Any]:
    """The catalog ConfigMap as the chart renders it from ``values`` (templates/configmap.yaml)."""
    return {
        "metadata": {"name": "slm-operator-catalog", "namespace": namespace},
        "data": {
            "catalog.yaml": yaml.safe_dump(values["catalog"]),
            "models.yaml": yaml.safe_dump(values["models"]),
        },
    }


CHART_VALUES = yaml.safe_load(VALUES.read_text())
MIXED = [
    node("cpu-0"),
    node("gpu-0", [GPU_TAINT], nvidia_com__gpu="1"),  # the GPU option tolerates its taint
]
"""A cluster with a CPU node and a GPU node, and no NPU."""


def report(nodes: list[dict[str, Any]] | str, catalogs: Catalogs | None = None) -> dict[str, Any]:
    found = nodes if isinstance(nodes, str) else [node_info(n) for n in nodes]
    return catalog_report(catalogs or from_configmap(configmap(CHART_VALUES)), found)


def test_the_charts_configmap_holds_the_built_in_catalogs() -> None:
    catalogs = from_configmap(configmap(CHART_VALUES))
    assert catalogs.configmap == "slm-system/slm-operator-catalog"
    assert catalogs.origin == "ConfigMap slm-system/slm-operator-catalog"
    assert catalogs.models == default_models()
    assert catalogs.accelerators == default_catalog()


def test_table_on_a_cpu_and_gpu_cluster() -> None:
    text = catalog_table(report(MIXED))
    lines = text.splitlines()
    header = lines[0]
    assert header.split() == [
        "ALIAS", "VARIANT", "TIERS", "FORMAT", "PINNED", "SERVABLE", "NOW", "SOURCE"
    ]  # fmt: skip
    now, source = header.index("SERVABLE NOW"), header.index("SOURCE")
    rows = [(line[:now].split(), line[now:source].strip(), line[source:]) for line in lines[1:6]]
    gemma = "hf://unsloth/gemma-3-270m-it-GGUF/gemma-3-270m-it-Q4_K_M.gguf"
    assert rows[0] == (["gemma-3-270m", "gguf-q4-k-m", "gpu,cpu", "gguf", "no"], "gpu,cpu", gemma)
    # One row per variant: the alias and what is servable now on its first.
    assert rows[1][:2] == (["phi-4-mini", "npu-onnx-int4", "npu", "onnx", "no"], "gpu,cpu")
    assert rows[1][2].startswith("hf://microsoft/Phi-4-mini-instruct-onnx/")
    assert rows[2][:2] == (["gguf-q4-k-m", "gpu,cpu", "gguf", "no"], "")
    assert [row[0][0] for row in rows[3:]] == ["qwen2.5-0.5b", "smollm2-135m"]
    assert lines[6] == ""
    assert lines[7:] == [
        "Servable now: gpu,cpu (for a LocalModel without spec.scheduling)",
        "  npu: no node offers intel.com/npu",
        "Catalog: ConfigMap slm-system/slm-operator-catalog",
    ]


def test_kwok_taints_leave_only_the_untainted_node() -> None:
    # The test cluster: fake nodes tainted for kwok, and one real untainted node.
    nodes = [
        node("node-0"),
        node("cpu-0", [KWOK_TAINT]),
        node("gpu-0", [KWOK_TAINT], nvidia_com__gpu="1"),
        node("npu-0", [KWOK_TAINT], intel_com__npu="1"),
    ]
    result = report(nodes)
    assert [(t["tier"], t["servableNow"]) for t in result["tiers"]] == [
        ("npu", False), ("gpu", False), ("cpu", True)
    ]  # fmt: skip
    gpu = result["tiers"][1]["reason"]
    assert gpu == (
        "every Ready node offering nvidia.com/gpu has a taint the pods do not tolerate "
        "(kwok.x-k8s.io/node=fake:NoSchedule)"
    )
    assert {m["alias"]: m["servableNow"] for m in result["models"]} == {
        "gemma-3-270m": ["cpu"], "phi-4-mini": ["cpu"], "qwen2.5-0.5b": ["cpu"],
        "smollm2-135m": ["cpu"],
    }  # fmt: skip


def test_a_tier_counts_only_for_a_variant_in_a_format_it_serves() -> None:
    nodes = [node("npu-0", intel_com__npu="1")]  # no GPU, and the CPU tier fits here too
    models = ModelCatalog.model_validate(
        {
            "onnx-everywhere": {
                "description": "ONNX on every tier",
                "variants": [
                    {"name": "onnx", "tiers": ["npu", "gpu", "cpu"], "source": "hf://o/r/m.onnx"}
                ],
            },
            "gguf-on-npu": {
                "description": "a GGUF the npu runtime cannot serve",
                "variants": [{"name": "gguf", "tiers": ["npu"], "source": "hf://o/r/m.gguf"}],
            },
        }
    )
    result = report(nodes, Catalogs(models, default_catalog(), "ns/cm"))
    assert {m["alias"]: m["servableNow"] for m in result["models"]} == {
        "gguf-on-npu": [], "onnx-everywhere": ["npu", "cpu"]
    }  # fmt: skip
    table = catalog_table(result).splitlines()
    gguf = next(line for line in table if line.startswith("gguf-on-npu"))
    assert gguf.split()[:6] == ["gguf-on-npu", "gguf", "npu", "gguf", "no", "none"]


def test_a_tier_the_accelerator_catalog_lacks() -> None:
    only_cpu = default_catalog().model_copy(
        update={"tiers": [t for t in default_catalog().tiers if t.device.value == "cpu"]}
    )
    result = report([node("cpu-0")], Catalogs(default_models(), only_cpu, "ns/cm"))
    assert result["tiers"][:2] == [
        {"tier": "npu", "servableNow": False, "reason": "not in the accelerator catalog"},
        {"tier": "gpu", "servableNow": False, "reason": "not in the accelerator catalog"},
    ]


def test_nodes_that_cannot_be_listed_make_servability_unknown() -> None:
    why = "cannot list nodes: 403 Forbidden: nodes is forbidden"
    result = report(why)
    assert {t["servableNow"] for t in result["tiers"]} == {None}
    assert {m["servableNow"] for m in result["models"]} == {None}
    lines = catalog_table(result).splitlines()
    assert lines[1].split()[5] == "unknown"
    assert f"Servable now: unknown ({why})" in lines


def test_report_is_the_data_the_table_shows() -> None:
    result = report(MIXED, cli_catalog.built_in("no operator catalog ConfigMap (labels ...)"))
    assert result["catalog"] == "built-in"
    assert result["note"] == "no operator catalog ConfigMap (labels ...)"
    phi = next(m for m in result["models"] if m["alias"] == "phi-4-mini")
    assert phi["servableNow"] == ["gpu", "cpu"]
    assert phi["description"].startswith("Microsoft Phi-4-mini-instruct")
    assert phi["variants"][1] == {
        "name": "gguf-q4-k-m",
        "tiers": ["gpu", "cpu"],
        "format": "gguf",
        "source": "hf://unsloth/Phi-4-mini-instruct-GGUF/Phi-4-mini-instruct-Q4_K_M.gguf",
        "pinned": False,
    }
    assert catalog_table(result).endswith(
        "Catalog: built-in (no operator catalog ConfigMap (labels ...))\n"
    )


def test_pinned_variants_say_so() -> None:
    models = ModelCatalog.model_validate(
        {
            "pinned": {
                "description": "a pinned model",
                "variants": [
                    {
                        "name": "q4",
                        "tiers": ["cpu"],
                        "source": "hf://o/r/m.gguf",
                        "sha256": "a" * 64,
                    }
                ],
            }
        }
    )
    result = report(MIXED, Catalogs(models, default_catalog(), "ns/cm"))
    assert result["models"][0]["variants"][0]["pinned"] is True
    assert catalog_table(result).splitlines()[1].split()[4] == "yes"


def test_a_configmap_without_models_yaml_means_the_built_in_models() -> None:
    cm = configmap(CHART_VALUES)
    del cm["data"]["models.yaml"]
    assert from_configmap(cm).models == default_models()


@pytest.mark.parametrize(
    ("key", "text", "message"),
    [
        ("models.yaml", "m: {description: x, variants: []}", "m.variants: List should have"),
        (
            "models.yaml",
            "Bad: {description: x, variants: [{name: c, tiers: [cpu], source: 'hf://o/r/m.gguf'}]}",
            "model catalog alias 'Bad'",
        ),
        ("catalog.yaml", "tiers: [{device: tpu, options: []}]", "tiers.0.device"),
        ("models.yaml", "a: [", "models.yaml is not YAML"),
    ],
)
def test_an_invalid_configmap_is_an_error(key: str, text: str, message: str) -> None:
    cm = configmap(CHART_VALUES)
    cm["data"][key] = text
    with pytest.raises(
        CliError, match=f"^ConfigMap slm-system/slm-operator-catalog: {key} "
    ) as info:
        from_configmap(cm)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_several_configmaps_are_refused_naming_each() -> None:
    with pytest.raises(CliError) as info:
        cli_catalog.from_configmaps(
            [configmap(CHART_VALUES, "team-b"), configmap(CHART_VALUES, "team-a")],
            "in any namespace",
        )
    assert str(info.value) == (
        "2 operator catalogs found (team-a/slm-operator-catalog, team-b/slm-operator-catalog); "
        "name the operator's namespace with --operator-namespace"
    )


# --- the command, against a fake API server ---------------------------------------------------


@pytest.fixture
def connect_to(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point ``slmctl catalog`` at a FakeCluster with these answers."""

    def to(answers: dict[str, Any]) -> FakeCluster:
        fake = FakeCluster(answers)
        monkeypatch.setattr(cli_catalog, "connect", lambda args: fake)
        return fake

    return to


def test_catalog_command_reads_the_configmap_and_nodes(
    capsys: pytest.CaptureFixture[str], connect_to: Any
) -> None:
    connect_to(
        {CONFIGMAPS: {"items": [configmap(CHART_VALUES)]}, "/api/v1/nodes": {"items": MIXED}}
    )
    code, out, err = slmctl(capsys, "catalog")
    assert (code, err) == (0, "")
    assert out == catalog_table(report(MIXED))
    code, out, _ = slmctl(capsys, "catalog", "-o", "json")
    assert json.loads(out) == report(MIXED)
    code, out, _ = slmctl(capsys, "catalog", "-o", "yaml")
    assert yaml.safe_load(out) == report(MIXED)


def test_catalog_command_in_the_operator_namespace(
    capsys: pytest.CaptureFixture[str], connect_to: Any
) -> None:
    connect_to(
        {
            "/api/v1/namespaces/ops/configmaps": {"items": [configmap(CHART_VALUES, "ops")]},
            "/api/v1/nodes": {"items": MIXED},
        }
    )
    code, out, err = slmctl(capsys, "catalog", "--operator-namespace", "ops", "-o", "json")
    assert (code, err) == (0, "")
    assert json.loads(out)["catalog"] == "ConfigMap ops/slm-operator-catalog"


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (403, "cannot list ConfigMaps in any namespace (403 Forbidden: /api/v1/configmaps is "
              "forbidden)"),
        ({"items": []}, "no operator catalog ConfigMap (labels "
                        "app.kubernetes.io/part-of=slm-operator,"
                        "app.kubernetes.io/component=catalog) in any namespace"),
    ],
)  # fmt: skip
def test_catalog_command_falls_back_to_the_built_in_catalog(
    capsys: pytest.CaptureFixture[str], connect_to: Any, answer: Any, why: str
) -> None:
    connect_to({CONFIGMAPS: answer, "/api/v1/nodes": 403})
    code, out, err = slmctl(capsys, "catalog")
    assert code == 0
    assert err == f"warning: {why}; showing the built-in catalog\n"
    lines = out.splitlines()
    aliases = [line.split()[0] for line in lines[1:] if line[:1].isalnum()]
    assert aliases[: len(default_models().names())] == default_models().names()
    assert lines[-2:] == [
        "Servable now: unknown (cannot list nodes: 403 Forbidden: /api/v1/nodes is forbidden)",
        f"Catalog: built-in ({why})",
    ]
