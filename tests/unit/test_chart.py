"""The Helm chart, plain manifests and GitOps example, rendered offline with Helm and kustomize.

Helm is the cached v3 binary that `make setup` builds (hack/setup.d/20-cluster.sh); the API
server's own checks of the same output run in tests/cluster/test_install.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from slm_operator import catalog as catalog_module
from slm_operator import chartgen
from slm_operator.api import parse_localmodel
from slm_operator.catalog import (
    ALLOW_CUSTOM_IMAGES_SETTING,
    DEFAULT_CUDA_IMAGE,
    DEFAULT_IMAGE,
    AcceleratorCatalog,
    default_catalog,
    runtime_image_refusal,
)
from slm_operator.children import RenderOptions
from slm_operator.render import network_policy
from slm_operator.settings import OperatorSettings
from slm_runtime.config import DEVICE_TIERS

from tests.cluster.conftest import CACHE, VERSIONS
from tests.unit.crdcheck import crd_errors

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "slm-operator"
HELM = CACHE / "bin" / f"helm-{VERSIONS['HELM_VERSION']}"
RBAC_RULES = CHART / "files" / "rbac-rules.yaml"
CLUSTER_SCOPED = {"nodes", "namespaces", "customresourcedefinitions"}

Obj = dict[str, Any]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the cached Helm binary."""
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing: run `make setup` to build it", pytrace=False)
    result = subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, check=False, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def render(*sets: str, tests: bool = False) -> list[Obj]:
    """`helm template` of the chart with ``--set`` values (``--set-json`` for ``key={...}``)."""
    args = ["template", "rel", str(CHART), "--namespace", "ops"]
    args += [arg for s in sets for arg in (set_flag(s), s)]
    if not tests:
        args.append("--skip-tests")
    return [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]


def set_flag(value: str) -> str:
    """``--set-json`` for a JSON value, else ``--set``."""
    return "--set-json" if '={"' in value or "=[" in value else "--set"


def is_gateway(obj: Obj) -> bool:
    """Whether ``obj`` is one of the gateway's objects."""
    labels = obj["metadata"].get("labels") or {}
    return bool(labels.get("app.kubernetes.io/component") == "gateway")


def one(
    objects: list[Obj], kind: str, namespace: str | None = None, *, gateway: bool = False
) -> Obj:
    """The single object of ``kind`` (in ``namespace`` when given) of the operator, or with
    ``gateway`` of the gateway."""
    found = [
        o
        for o in objects
        if o["kind"] == kind
        and (namespace is None or o["metadata"].get("namespace") == namespace)
        and is_gateway(o) == gateway
    ]
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def operator_role(objects: list[Obj]) -> Obj:
    """The operator's own ClusterRole (the release's name), not the aggregated user roles."""
    (role,) = [
        o
        for o in objects
        if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "rel-slm-operator"
    ]
    return role


def operator_env(objects: list[Obj]) -> dict[str, str]:
    """The operator container's plain environment variables."""
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def rule_key(rule: Obj) -> str:
    """A rule as comparable text."""
    return json.dumps(rule, sort_keys=True)


def test_helm_lint_strict() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in result.stdout


def test_default_objects() -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in render())
    assert kinds == [
        ("ClusterRole", "rel-slm-operator"),
        ("ClusterRole", "rel-slm-operator-gateway"),
        ("ClusterRole", "slm-localmodel-edit"),
        ("ClusterRole", "slm-localmodel-view"),
        ("ClusterRoleBinding", "rel-slm-operator"),
        ("ClusterRoleBinding", "rel-slm-operator-gateway"),
        ("ConfigMap", "rel-slm-operator-catalog"),
        ("CustomResourceDefinition", "localmodels.slm.dev"),
        ("Deployment", "rel-slm-operator"),
        ("Deployment", "rel-slm-operator-gateway"),
        ("Service", "rel-slm-operator"),
        ("Service", "rel-slm-operator-gateway"),
        ("ServiceAccount", "rel-slm-operator"),
        ("ServiceAccount", "rel-slm-operator-gateway"),
    ]
    without = {o["metadata"]["name"] for o in render("gateway.enabled=false")}
    assert not {n for n in without if n.endswith("-gateway")}


def test_deployment_is_restricted_probed_and_single() -> None:
    deployment = one(render(), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["command"][0] == "slm-operator"
    security = container["securityContext"]
    assert security["runAsUser"] == 65532
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert ports == {"metrics": 9090, "health": 8081}
    assert env["SLM_OPERATOR_METRICS_PORT"] == "9090"
    assert env["SLM_OPERATOR_HEALTH_PORT"] == "8081"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert "memory" in container["resources"]["limits"]
    assert container["image"] == "ghcr.io/slm-operator/slm-operator:0.1.0"


def test_catalog_configmap_is_mounted_where_the_operator_reads_it() -> None:
    objects = render()
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    path = Path(env["SLM_OPERATOR_CATALOG_FILE"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    configmap = one(objects, "ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    catalog = AcceleratorCatalog.model_validate(yaml.safe_load(configmap["data"][path.name]))
    assert catalog == default_catalog()


def test_values_catalog_mirrors_the_operator_default() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    expected = default_catalog().model_dump(mode="json", by_alias=True, exclude_none=True)
    assert values["catalog"] == expected


def test_the_catalog_schema_names_every_tier_of_the_device_table() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    tiers = schema["properties"]["catalog"]["properties"]["tiers"]["items"]
    assert tiers["properties"]["device"]["enum"] == [t.device.value for t in DEVICE_TIERS]
    catalog = default_catalog()
    for tier in DEVICE_TIERS:
        entry = catalog.tier(tier.device)
        assert entry is not None
        assert [o.resource for o in entry.options] == [tier.resource]
        assert [o.formats for o in entry.options] == [list(tier.formats)]


def test_the_committed_chart_catalog_is_generated_from_the_device_table() -> None:
    assert chartgen.main(["--check"]) == 0, "the chart's catalog is stale: run `make crds`"


def test_the_chart_catalog_follows_a_changed_device_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    chart = tmp_path / "chart"
    chart.mkdir()
    for name, _ in chartgen.FILES:
        (chart / name).write_text((CHART / name).read_text())
    values = chart / "values.yaml"
    committed = values.read_text()
    # A blank line inside the block: the whole block is still replaced.
    values.write_text(committed.replace("    - device: gpu\n", "\n    - device: gpu\n"))
    without_npu = DEVICE_TIERS[1:]
    monkeypatch.setattr(chartgen, "DEVICE_TIERS", without_npu)
    monkeypatch.setattr(catalog_module, "DEVICE_TIERS", without_npu)
    assert chartgen.main(["--check", "--chart", str(chart)]) == 1
    report = capsys.readouterr().out
    assert "-    - device: npu" in report
    assert '-                  "npu",' in report
    assert chartgen.main(["--chart", str(chart)]) == 0
    assert chartgen.main(["--check", "--chart", str(chart)]) == 0
    schema = json.loads((chart / "values.schema.json").read_text())
    tiers = schema["properties"]["catalog"]["properties"]["tiers"]["items"]
    assert tiers["properties"]["device"]["enum"] == ["gpu", "cpu"]
    rewritten = values.read_text()
    catalog = yaml.safe_load(rewritten)["catalog"]
    assert [tier["device"] for tier in catalog["tiers"]] == ["gpu", "cpu"]
    assert catalog == default_catalog().model_dump(mode="json", by_alias=True, exclude_none=True)
    # Only the catalog block is rewritten: the comments and values around it stay.
    before, _, after = committed.partition("\ncatalog:\n")
    assert rewritten.startswith(before + "\ncatalog:\n")
    assert rewritten.endswith(after[after.index("\n\n") :])


@pytest.mark.parametrize(
    "value",
    ["y", "No", "null", "1.0", "0o17", "a:b", "x\ny", " lead", "ghcr.io/a/b:1", 3, True, None],
)
def test_chart_catalog_values_read_back_as_written(value: Any) -> None:
    for holder in (value, [value], {"key": value}):
        line = chartgen._flow(holder)
        assert yaml.safe_load(f"v: {line}")["v"] == holder, line


def test_settings_reach_the_operator_environment() -> None:
    objects = render(
        "watchNamespaces={team-a,team-b}",
        "runtime.image=mirror.example/slm-runtime:1",
        "operator.resyncSeconds=120",
        "runtime.maxImageRollouts=5",
        "image.digest=sha256:" + "a" * 64,
    )
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SLM_OPERATOR_NAMESPACES"] == "team-a,team-b"
    assert env["SLM_OPERATOR_RUNTIME_IMAGE"] == "mirror.example/slm-runtime:1"
    assert env["SLM_OPERATOR_RESYNC_SECONDS"] == "120"
    assert env["SLM_OPERATOR_MAX_IMAGE_ROLLOUTS"] == "5"
    settings = OperatorSettings.model_validate(
        {
            key.removeprefix("SLM_OPERATOR_").lower(): value
            for key, value in env.items()
            if key.startswith("SLM_OPERATOR_") and value is not None
        }
    )
    assert settings.max_image_rollouts == 5
    assert container["image"] == "ghcr.io/slm-operator/slm-operator@sha256:" + "a" * 64


def test_catalog_change_rolls_the_pod() -> None:
    def checksum(*sets: str) -> str:
        pod = one(render(*sets), "Deployment")["spec"]["template"]
        value: str = pod["metadata"]["annotations"]["slm.dev/catalog-checksum"]
        return value

    cpu_only = {"tiers": [{"device": "cpu", "options": [{"name": "cpu"}]}]}
    assert checksum() != checksum("catalog=" + json.dumps(cpu_only))


def test_crd_is_the_generated_one_and_kept_on_uninstall() -> None:
    generated = ROOT / "crds" / "slm.dev_localmodels.yaml"
    copy = CHART / "files" / "crds" / generated.name
    assert copy.read_text() == generated.read_text(), (
        "the chart's CRD is stale: run make chart-crds"
    )
    crd = one(render(), "CustomResourceDefinition")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    expected = yaml.safe_load(generated.read_text())
    assert crd["spec"] == expected["spec"]
    assert all(o["kind"] != "CustomResourceDefinition" for o in render("crds.enabled=false"))


def test_cluster_wide_rbac_is_the_single_source() -> None:
    source = yaml.safe_load(RBAC_RULES.read_text())
    objects = render()
    role = operator_role(objects)
    assert sorted(map(rule_key, role["rules"])) == sorted(map(rule_key, source))
    binding = one(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rel-slm-operator", "namespace": "ops"}
    ]
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]


def test_watched_namespaces_get_roles_and_only_cluster_reads_stay_cluster_wide() -> None:
    source = yaml.safe_load(RBAC_RULES.read_text())
    objects = render("watchNamespaces={team-a,team-b}")
    cluster_rules = operator_role(objects)["rules"]
    assert cluster_rules
    assert all(set(r["resources"]) <= CLUSTER_SCOPED for r in cluster_rules)
    for ns in ("team-a", "team-b"):
        role = one(objects, "Role", ns)
        assert not any(set(r["resources"]) & CLUSTER_SCOPED for r in role["rules"])
        assert sorted(map(rule_key, role["rules"] + cluster_rules)) == sorted(map(rule_key, source))
        binding = one(objects, "RoleBinding", ns)
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        assert binding["subjects"][0]["namespace"] == "ops"


def test_service_and_servicemonitor_select_the_operator_pod() -> None:
    objects = render("serviceMonitor.enabled=true", "serviceMonitor.labels.release=prom")
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(objects, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert {p["name"] for p in service["spec"]["ports"]} == {"metrics", "health"}
    assert all(o["kind"] != "ServiceMonitor" for o in render())


def test_helm_test_pod_is_restricted_with_an_explicit_command() -> None:
    (pod,) = [o for o in render(tests=True) if o["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["automountServiceAccountToken"] is False
    (container,) = pod["spec"]["containers"]
    assert container["command"][:2] == ["python3", "-c"]
    assert container["command"][-1] == "http://rel-slm-operator.ops.svc:8081/healthz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("bogus=1", "bogus"),
        ("operator.bogus=1", "bogus"),
        ('catalog={"tiers": [{"device": "cpu", "options": [{"name": "c", "gpus": 1}]}]}', "gpus"),
        ('catalog={"tiers": [{"device": "tpu", "options": [{"name": "c"}]}]}', "device"),
        (
            'catalog={"tiers": [{"device": "npu", "options": [{"name": "n", '
            '"openvinoDevice": "CPU"}]}]}',
            "openvinoDevice",
        ),
        ("serviceMonitor.enable=true", "enable"),
        ("replicaCount=3", "replicaCount"),
        ("leaderElection.leaseSeconds=1", "leaseSeconds"),
        ("operator.logFormat=xml", "logFormat"),
        ("watchNamespaces={Team_A}", "watchNamespaces"),
    ],
)
def test_schema_rejects_unknown_and_invalid_values(value: str, named: str) -> None:
    result = helm("template", "rel", str(CHART), set_flag(value), value, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert named in result.stderr


def test_two_replicas_need_leader_election() -> None:
    refused = helm("template", "rel", str(CHART), "--set", "replicaCount=2", check=False)
    assert refused.returncode != 0
    assert "replicaCount: more than 1 needs leaderElection.enabled=true" in refused.stderr
    docs = render("replicaCount=2", "leaderElection.enabled=true")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SLM_OPERATOR_LEADER_ELECTION"]["value"] == "true"
    assert env["SLM_OPERATOR_LEASE_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.namespace"
    )
    assert env["SLM_OPERATOR_IDENTITY"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    role = next(d for d in docs if d["kind"] == "Role")
    assert role["metadata"]["namespace"] == "ops"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "verbs": ["get", "create", "update"]}
    ]  # fmt: skip
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def _objects_in(schema: Any, path: str = "$") -> list[tuple[str, Obj]]:
    """Every sub-schema that describes an object with properties, with its path."""
    found: list[tuple[str, Obj]] = []
    if isinstance(schema, dict):
        if "properties" in schema:
            found.append((path, schema))
        for key, value in schema.items():
            found += _objects_in(value, f"{path}.{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            found += _objects_in(value, f"{path}[{i}]")
    return found


def test_schema_closes_every_object() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = [p for p, s in _objects_in(schema) if s.get("additionalProperties") is not False]
    assert not open_objects


def test_every_value_is_documented() -> None:
    """Each key has a `# --` comment, or sits inside a documented block (the catalog's data)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    key = re.compile(r"^(\s*)([A-Za-z][\w]*):(.*)$")
    undocumented = []
    documented_indent: int | None = None
    for i, line in enumerate(lines):
        match = key.match(line)
        if not match:
            continue
        indent = len(match.group(1))
        if documented_indent is not None and indent > documented_indent:
            continue
        documented_indent = None
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and "# --" not in lines[j]:
            j -= 1
        has_doc = j >= 0 and "# --" in lines[j]
        nxt = next(
            (ln for ln in lines[i + 1 :] if ln.strip() and not ln.strip().startswith("#")), ""
        )
        is_section = not match.group(3).strip() and len(nxt) - len(nxt.lstrip()) > indent
        if has_doc:
            documented_indent = indent
        elif not is_section:
            undocumented.append(match.group(2))
    assert not undocumented


def test_plain_manifests_are_fresh() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "deploy" / "generate.sh")],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HELM": str(HELM)},
    )
    committed = (ROOT / "deploy" / "slm-operator.yaml").read_text()
    assert result.stdout == committed, "deploy/ is stale: run make manifests"
    objects = [d for d in yaml.safe_load_all(committed) if d]
    assert objects[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "slm-system",
            "labels": {
                "app.kubernetes.io/part-of": "slm-operator",
                "pod-security.kubernetes.io/enforce": "restricted",
            },
        },
    }
    assert all(o["kind"] not in ("CustomResourceDefinition", "Pod") for o in objects)
    assert {o["metadata"].get("namespace", "slm-system") for o in objects} == {"slm-system"}


def test_gitops_overlay_renders_valid_localmodels() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "examples" / "gitops" / "overlays" / "production")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    objects = [d for d in yaml.safe_load_all(rendered) if d]
    model = one(objects, "LocalModel")
    assert model["metadata"]["namespace"] == "ai-prod"
    assert model["spec"]["autoscaling"] == {"enabled": True, "minReplicas": 1, "maxReplicas": 4}
    assert crd_errors(model) == []
    for path in (ROOT / "examples" / "gitops" / "argocd").glob("*.yaml"):
        app = yaml.safe_load(path.read_text())
        assert app["kind"] == "Application"
        source = app["spec"]["source"]["path"]
        assert (ROOT / source).is_dir(), f"{path.name} points at a missing folder {source}"


def _rule_grants(role: Obj, verb: str, resource: str) -> bool:
    return any(
        verb in rule["verbs"] and resource in rule["resources"] and "slm.dev" in rule["apiGroups"]
        for rule in role["rules"]
    )


def test_localmodel_roles_aggregate_into_the_default_user_roles() -> None:
    roles = {o["metadata"]["name"]: o for o in render() if o["kind"] == "ClusterRole"}
    view, edit = roles["slm-localmodel-view"], roles["slm-localmodel-edit"]
    prefix = "rbac.authorization.k8s.io/aggregate-to-"

    def aggregates_to(role: Obj) -> set[str]:
        labels = role["metadata"]["labels"]
        return {k.removeprefix(prefix) for k, v in labels.items() if k.startswith(prefix) and v}

    assert aggregates_to(view) == {"view", "edit", "admin"}
    assert aggregates_to(edit) == {"edit", "admin"}
    for verb in ("get", "list", "watch"):
        assert _rule_grants(view, verb, "localmodels")
    for verb in ("create", "update", "patch", "delete"):
        assert not _rule_grants(view, verb, "localmodels")
        assert _rule_grants(edit, verb, "localmodels")
    assert _rule_grants(edit, "update", "localmodels/scale")  # kubectl scale lm
    assert not _rule_grants(edit, "patch", "localmodels/status")  # status is the operator's
    assert all(r["apiGroups"] == ["slm.dev"] for r in view["rules"] + edit["rules"])
    kinds = {o["metadata"]["name"] for o in render("rbac.aggregateToDefaultRoles=false")}
    assert not kinds & {"slm-localmodel-view", "slm-localmodel-edit"}


def _settings_of(objects: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The OperatorSettings the rendered Deployment's operator reads (its env and catalog)."""
    env = operator_env(objects)
    catalog_file = tmp_path / "catalog.yaml"
    catalog_file.write_text(one(objects, "ConfigMap")["data"]["catalog.yaml"])
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SLM_OPERATOR_CATALOG_FILE", str(catalog_file))
    return OperatorSettings()


PROMETHEUS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}


def test_metrics_scrapers_reach_the_rendered_network_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render("runtime.metricsFrom=" + json.dumps([PROMETHEUS]))
    settings = _settings_of(objects, tmp_path, monkeypatch)
    assert settings.metrics_from == [PROMETHEUS]
    body = {
        "metadata": {"name": "m", "namespace": "ai", "uid": "u"},
        "spec": {
            "model": {"source": "hf://org/repo/model.gguf"},
            "serving": {"networkPolicy": {"enabled": True}},
        },
    }
    options = RenderOptions(metrics_from=tuple(settings.metrics_from))
    peers = network_policy(parse_localmodel(body), options)["spec"]["ingress"][0]["from"]
    assert peers == [{"podSelector": {}}, PROMETHEUS]  # the namespace, and the scrapers
    assert "SLM_OPERATOR_METRICS_FROM" not in operator_env(render())


@pytest.mark.parametrize(
    ("sets", "image", "refused"),
    [
        ((), "", False),
        ((), DEFAULT_IMAGE, False),
        ((), DEFAULT_CUDA_IMAGE, False),
        ((), "attacker.example/miner:1", True),
        (("runtime.allowCustomImages=true",), "attacker.example/miner:1", False),
        (("runtime.image=mirror.example/slm-runtime:1",), "mirror.example/slm-runtime:1", False),
        (("runtime.image=mirror.example/slm-runtime:1",), DEFAULT_IMAGE, True),
    ],
)
def test_images_outside_the_catalog_need_the_chart_value(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sets: tuple[str, ...],
    image: str,
    refused: bool,
) -> None:
    settings = _settings_of(render(*sets), tmp_path, monkeypatch)
    refusal = runtime_image_refusal(
        image, settings.load_catalog(), allow_custom=settings.allow_custom_images
    )
    if not refused:
        assert refusal is None
        return
    assert refusal is not None
    assert refusal.startswith(f"spec.runtime.image: {image} is not one of")
    assert ALLOW_CUSTOM_IMAGES_SETTING in refusal
    assert "runtime.allowCustomImages=true" in refusal


@pytest.mark.parametrize("peer", [{"podSelectr": {}}, {}, {"ipBlock": {"except": ["10.0.0.0/8"]}}])
def test_schema_rejects_a_metrics_peer_that_is_not_a_network_policy_peer(peer: Obj) -> None:
    value = "runtime.metricsFrom=" + json.dumps([peer])
    result = helm("template", "rel", str(CHART), "--set-json", value, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr


def test_operator_rules_read_no_secrets_and_write_no_spec() -> None:
    """What docs/security.md says of the operator's permissions."""
    rules = yaml.safe_load(RBAC_RULES.read_text())
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    assert not {r for _, r in grants if r == "secrets" or r.startswith("secrets/")}
    assert grants[("slm.dev", "localmodels")] == {"get", "list", "watch"}
    assert grants[("slm.dev", "localmodels/status")] == {"get", "patch"}
    assert grants[("", "pods")] == {"get", "list", "watch"}
    assert grants[("", "pods/log")] == {"get"}
    assert grants[("", "events")] == {"create"}
    assert "patch" not in grants[("batch", "jobs")]
    for read_only in ("nodes", "namespaces"):
        assert grants[("", read_only)] == {"get", "list", "watch"}
    assert grants[("apiextensions.k8s.io", "customresourcedefinitions")] == {"get", "list", "watch"}


def test_trusted_token_services_reach_the_operator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render("runtime.tokenRealmHosts={auth.docker.io,auth.example.com}")
    settings = _settings_of(objects, tmp_path, monkeypatch)
    assert settings.token_realm_hosts == ["auth.docker.io", "auth.example.com"]
    assert "SLM_OPERATOR_TOKEN_REALM_HOSTS" not in operator_env(render())


GATEWAY_RULES = CHART / "files" / "gateway-rbac-rules.yaml"


def test_the_gateway_is_restricted_probed_and_configured_from_values() -> None:
    objects = render(
        "gateway.balance=PrefixAffinity",
        "gateway.holdQueue=8",
        "watchNamespaces={team-a}",
        "gateway.namespaceTokenSecret=team-token",
    )
    deployment = one(objects, "Deployment", gateway=True)
    spec = deployment["spec"]
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "rel-slm-operator-gateway"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/slm-operator/slm-runtime:0.1.0"
    assert container["command"] == ["slm-runtime", "gateway"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SLM_GATEWAY_BALANCE"] == "PrefixAffinity"
    assert env["SLM_GATEWAY_HOLD_QUEUE"] == "8"
    assert env["SLM_GATEWAY_NAMESPACES"] == "team-a"
    assert env["SLM_GATEWAY_NAMESPACE_TOKEN_SECRET"] == "team-token"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert pod["terminationGracePeriodSeconds"] == 75

    service = one(objects, "Service", gateway=True)
    pod_labels = spec["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    operator_pod = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= operator_pod.items()
    assert not one(objects, "Service")["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}
    ]


def test_the_gateway_rules_are_the_single_source_in_either_scope() -> None:
    source = yaml.safe_load(GATEWAY_RULES.read_text())
    cluster = one(render(), "ClusterRole", gateway=True)
    assert sorted(map(rule_key, cluster["rules"])) == sorted(map(rule_key, source))
    binding = one(render(), "ClusterRoleBinding", gateway=True)
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rel-slm-operator-gateway", "namespace": "ops"}
    ]
    scoped = render("watchNamespaces={team-a,team-b}")
    assert not [o for o in scoped if o["kind"] == "ClusterRole" and is_gateway(o)]
    for ns in ("team-a", "team-b"):
        role = one(scoped, "Role", ns, gateway=True)
        assert sorted(map(rule_key, role["rules"])) == sorted(map(rule_key, source))
        assert (
            one(scoped, "RoleBinding", ns, gateway=True)["roleRef"]["name"]
            == (role["metadata"]["name"])
        )


def test_the_gateway_gets_secrets_and_writes_only_the_scale_subresource() -> None:
    """What docs/gateway.md and docs/security.md say of the gateway's permissions."""
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in yaml.safe_load(GATEWAY_RULES.read_text()):
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    assert grants == {
        ("slm.dev", "localmodels"): {"get", "list", "watch"},
        ("discovery.k8s.io", "endpointslices"): {"list", "watch"},
        ("", "secrets"): {"get"},
        ("apps", "deployments/scale"): {"get", "patch"},
    }
