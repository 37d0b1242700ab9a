"""slmctl against the real API server with the operator running.

`run`, `ls` and `status` run the tiny ONNX model on node-0 (and kwok nodes for the fallback they
show); `chat` streams a real answer from the Gemma runtime on node-0, reached through the API
server's service proxy.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from slm_operator import cli_cluster

from tests.conftest import GEMMA_TEMPLATE

from .conftest import KWOK_SCHEDULING, REAL_NODE, REAL_NODE_SCHEDULING, ROOT, TINY_ONNX, Cluster
from .operator_run import SUITE_RELEASE, SYSTEM_NAMESPACE, InClusterOperator, wait_for

MODELFILES = ROOT / "tests" / "data" / "modelfiles"


def slmctl(
    cluster: Cluster, *args: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the slmctl entry point as a user would, with the test cluster's kubeconfig."""
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    result = subprocess.run(
        [sys.executable, "-m", "slm_operator.cli", *args],
        input=input, capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"slmctl {' '.join(args)} failed:\n{result.stderr}")
    return result


def lm_status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """`slmctl status -o json`'s status."""
    out = slmctl(cluster, "status", name, "-n", namespace, "-o", "json").stdout
    result: dict[str, Any] = json.loads(out).get("status") or {}
    return result


@pytest.mark.parametrize("path", sorted(MODELFILES.glob("*.Modelfile")), ids=lambda p: p.stem)
def test_imported_modelfiles_are_accepted_by_the_api_server(
    cluster: Cluster, crds: list[str], namespace: str, path: Path
) -> None:
    manifest = slmctl(cluster, "import", str(path)).stdout
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-o", "json", "-f", "-", input=manifest, namespace=namespace
    )
    accepted = json.loads(result.stdout)
    sent = yaml.safe_load(manifest)
    assert accepted["spec"]["model"]["source"] == sent["spec"]["model"]["source"]
    assert accepted["spec"].get("template") == sent["spec"].get("template")
    assert (
        accepted["spec"].get("parameters", {}).items() >= sent["spec"].get("parameters", {}).items()
    )


def test_run_ls_status_on_the_cluster(
    cluster: Cluster, operator: InClusterOperator, namespace: str, fixtures_claim: str
) -> None:
    # A real model that runs on node-0: the tiny ONNX model on a claim, verified in place.
    source = f"pvc://{fixtures_claim}/{TINY_ONNX.name}"
    out = slmctl(
        cluster, "run", "small", "--source", source, "--format", "onnx", "--hardware", "cpu",
        "-n", namespace, "--wait", "240",
    )  # fmt: skip
    assert f"applied in namespace {namespace}" in out.stdout
    phases = out.stderr.splitlines()
    assert phases[0] == "small: Pending"
    assert phases[-1] == "small: Ready"
    obj = json.loads(
        cluster.kubectl(
            "get", "localmodel", "small", "-o", "json", "--show-managed-fields",
            namespace=namespace,
        ).stdout
    )  # fmt: skip
    assert {m["manager"] for m in obj["metadata"]["managedFields"]} >= {"slmctl"}
    assert obj["spec"]["hardware"] == {
        "preferred": "cpu", "fallback": [], "fallbackAfter": "120s"
    }  # fmt: skip

    assert lm_status(cluster, namespace, "small")["backend"] == "cpu"

    table = slmctl(cluster, "ls", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "MODEL", "BACKEND", "READY", "PHASE", "AGE"]
    assert table[1].split()[:5] == ["small", source, "cpu", "1/1", "Ready"]
    everywhere = slmctl(cluster, "ls", "-A").stdout
    assert any(line.split()[:2] == [namespace, "small"] for line in everywhere.splitlines())
    listed = json.loads(slmctl(cluster, "ls", "-n", namespace, "-o", "json").stdout)
    assert [i["metadata"]["name"] for i in listed["items"]] == ["small"]

    text = slmctl(cluster, "status", "small", "-n", namespace).stdout
    fields = dict(line.split(":", 1) for line in text.splitlines() if not line.startswith(" "))
    assert fields["Phase"].strip() == "Ready"
    assert fields["Backend"].strip() == "cpu"
    assert fields["Endpoint"].strip() == f"http://small.{namespace}.svc:8080"
    rows = [line.split()[:3] for line in text.split("Conditions:\n")[1].splitlines()]
    assert ["Ready", "True", "ModelServing"] in rows
    assert {row[0] for row in rows[1:]} == {
        "Ready", "ModelAvailable", "Placed", "Available", "Progressing", "Degraded"
    }  # fmt: skip

    # Running again is an update through the same field manager, not a conflict.
    slmctl(
        cluster, "run", "small", "--source", source, "--format", "onnx", "--hardware", "cpu",
        "--replicas", "2", "-n", namespace,
    )  # fmt: skip
    assert cluster.get("localmodel", "small", namespace)["spec"]["serving"]["replicas"] == 2
    slmctl(cluster, "delete", "small", "-n", namespace)
    missing = slmctl(cluster, "status", "small", "-n", namespace, check=False)
    assert missing.returncode == 1
    assert missing.stderr == f'error: LocalModel "small" not found in namespace "{namespace}"\n'


def test_status_shows_the_fallback_reason(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    printed = slmctl(
        cluster, "run", "fallback", "--source", "https://models.example/m.gguf",
        "--hardware", "npu,gpu,cpu", "-n", namespace, "--dry-run", "-o", "json",
    ).stdout  # fmt: skip
    body = json.loads(printed)
    body["spec"]["scheduling"] = KWOK_SCHEDULING  # gpu-0, a fake node, takes the model
    cluster.apply(body, namespace)
    wait_for(
        lambda: lm_status(cluster, namespace, "fallback").get("backend"),
        timeout=60, what="a backend",
    )  # fmt: skip
    text = slmctl(cluster, "status", "fallback", "-n", namespace).stdout
    fields = dict(line.split(":", 1) for line in text.splitlines() if not line.startswith(" "))
    assert fields["Backend"].strip() == "gpu"
    assert fields["Preferred"].strip() == "npu"
    assert "npu" in fields["Fallback reason"]


def test_failed_model_shows_its_message_and_chat_refuses(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    rejected = slmctl(cluster, "run", "broken", "--source", "hf://org/repo", "-n", namespace,
                      check=False)  # fmt: skip
    assert rejected.returncode == 1
    assert "spec.model.source" in rejected.stderr
    # The API server accepts it; only the operator's catalog knows that no NPU runtime serves
    # GGUF, and the spec allows no other tier.
    cluster.apply(
        {
            "apiVersion": "slm.dev/v1alpha1",
            "kind": "LocalModel",
            "metadata": {"name": "broken"},
            "spec": {
                "model": {"source": "https://models.example/gemma-3-270m-q4_k_m.gguf"},
                "hardware": {"preferred": "npu", "fallback": []},
            },
        },
        namespace,
    )
    wait_for(
        lambda: lm_status(cluster, namespace, "broken").get("phase") == "Failed",
        timeout=60, what="broken to fail",
    )  # fmt: skip
    text = slmctl(cluster, "status", "broken", "-n", namespace).stdout
    error = next(line for line in text.splitlines() if line.startswith("Error:"))
    assert "InvalidSpec" in error
    assert "spec.hardware" in error
    assert "gguf" in error
    chat = slmctl(cluster, "chat", "broken", "-n", namespace, "-p", "hi", check=False)
    assert chat.returncode == 1
    assert chat.stderr.startswith('error: LocalModel "broken" has Failed: InvalidSpec')


def test_catalog_shows_the_operators_aliases_and_what_the_nodes_serve_now(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    # The chart's ConfigMap in the operator's namespace, and the nodes: node-0, untainted, takes
    # CPU pods; gpu-0 and npu-0 carry the kwok taint, which the catalog's options do not
    # tolerate. node-0 offers intel.com/npu only while a test advertises one.
    where = ["--operator-namespace", SYSTEM_NAMESPACE]
    shown = slmctl(cluster, "catalog", *where, "-o", "json")
    assert shown.stderr == ""
    report = json.loads(shown.stdout)
    assert report["catalog"] == f"ConfigMap {SYSTEM_NAMESPACE}/{SUITE_RELEASE}-catalog"
    tiers = {t["tier"]: t for t in report["tiers"]}
    assert tiers["cpu"] == {"tier": "cpu", "servableNow": True}
    assert tiers["gpu"]["servableNow"] is False
    assert "kwok.x-k8s.io/node" in tiers["gpu"]["reason"]
    npu_on_node_0 = "intel.com/npu" in cluster.get("node", REAL_NODE)["status"]["allocatable"]
    assert tiers["npu"]["servableNow"] is npu_on_node_0
    phi = next(m for m in report["models"] if m["alias"] == "phi-4-mini")
    assert phi["servableNow"] == [t for t in ("npu", "gpu", "cpu") if tiers[t]["servableNow"]]
    assert [(v["name"], v["tiers"]) for v in phi["variants"]] == [
        ("npu-onnx-int4", ["npu"]), ("gguf-q4-k-m", ["gpu", "cpu"])
    ]  # fmt: skip

    table = slmctl(cluster, "catalog", *where).stdout.splitlines()
    now = table[0].index("SERVABLE NOW")
    row = next(line for line in table if line.startswith("phi-4-mini "))
    assert row[now:].split()[0] == ",".join(phi["servableNow"])
    servable = ",".join(t for t in ("npu", "gpu", "cpu") if tiers[t]["servableNow"])
    assert f"Servable now: {servable} (for a LocalModel without spec.scheduling)" in table
    assert table[-1] == f"Catalog: ConfigMap {SYSTEM_NAMESPACE}/{SUITE_RELEASE}-catalog"

    # run checks an alias against that catalog before sending, and what it sends is accepted.
    unknown = slmctl(cluster, "run", "no-such-model", "-n", namespace, *where, check=False)
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("error: alias 'no-such-model' is not in the operator's model")
    assert "phi-4-mini" in unknown.stderr
    assert cluster.kubectl("get", "localmodels", "-o", "name", namespace=namespace).stdout == ""
    manifest = slmctl(cluster, "run", "phi-4-mini", "-n", namespace, *where, "--dry-run").stdout
    accepted = cluster.kubectl(
        "apply", "--dry-run=server", "-o", "json", "-f", "-", input=manifest, namespace=namespace
    )
    # (allowInsecure: the API server's default)
    assert json.loads(accepted.stdout)["spec"]["model"] == {
        "alias": "phi-4-mini",
        "allowInsecure": False,
    }


def test_an_api_server_without_the_crd_says_to_install_it(
    cluster: Cluster, crds: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = cli_cluster.Cluster.connect(str(cluster.kubeconfig), None, "default")
    monkeypatch.setattr(cli_cluster, "GROUP", "absent.slm.dev")
    with pytest.raises(cli_cluster.CliError, match="is not installed on https://") as info:
        api.call("GET", "default")
    assert "install the CRDs: kubectl apply --server-side -f crds/" in str(info.value)


def test_errors_for_a_missing_model_and_namespace(cluster: Cluster, crds: list[str]) -> None:
    result = slmctl(cluster, "chat", "nobody", "-n", "default", "-p", "hi", check=False)
    assert result.returncode == 1
    assert result.stderr == 'error: LocalModel "nobody" not found in namespace "default"\n'
    empty = slmctl(cluster, "ls", "-n", "no-such-namespace-here")
    assert empty.stdout == ""
    assert "No LocalModels in namespace no-such-namespace-here" in empty.stderr


def gemma_modelfile(source: str) -> str:
    """A Modelfile for Gemma 3 270M, a base model that the template makes a chat model."""
    return (
        f"# Gemma 3 270M served from the host\nFROM {source}\n"
        f'TEMPLATE """{GEMMA_TEMPLATE}"""\n'
        "PARAMETER num_ctx 1024\nPARAMETER num_predict 12\nPARAMETER temperature 0\n"
        "PARAMETER stop <end_of_turn>\n"
    )


def test_chat_streams_from_the_real_model_on_the_real_node(
    cluster: Cluster,
    operator: InClusterOperator,
    namespace: str,
    model_server: str,
    gemma_gguf: Path,
    tmp_path: Path,
) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(gemma_modelfile(model_server))
    body = yaml.safe_load(slmctl(cluster, "import", str(modelfile), "--name", "gemma").stdout)
    # What `run` has no flags for: the pin, the insecure test source, node-0 placement.
    body["spec"]["model"]["sha256"] = hashlib.sha256(gemma_gguf.read_bytes()).hexdigest()
    body["spec"]["model"]["allowInsecure"] = True
    body["spec"]["cache"] = {"size": "1Gi"}
    body["spec"]["hardware"] = {"preferred": "cpu", "fallback": []}
    body["spec"]["serving"] = {"parallel": 1}
    body["spec"]["scheduling"] = REAL_NODE_SCHEDULING
    cluster.apply(body, namespace)

    def ready() -> bool:
        st = lm_status(cluster, namespace, "gemma")
        assert st.get("phase") != "Failed", slmctl(cluster, "status", "gemma", "-n", namespace)
        return st.get("phase") == "Ready"

    wait_for(ready, timeout=300, what="gemma on node-0 to be Ready", interval=0.5)

    for api in ("ollama", "openai"):
        answer = slmctl(
            cluster, "chat", "gemma", "-n", namespace, "--api", api,
            "-p", "Name a primary colour.",
        )  # fmt: skip
        assert answer.stderr == ""
        assert answer.stdout.strip(), f"empty {api} answer"
    piped = slmctl(cluster, "chat", "gemma", "-n", namespace, input="Say hello.")
    assert piped.stdout.strip()
    # Greedy decoding: the same question gives the same answer through either API.
    again = slmctl(cluster, "chat", "gemma", "-n", namespace, "-p", "Name a primary colour.")
    assert again.stdout == answer.stdout

    # A bearer-token user with only the RBAC docs/slmctl.md names can chat too.
    kubeconfig = chat_user_kubeconfig(cluster, namespace, tmp_path / "chatter.kubeconfig")
    as_user = slmctl(
        cluster, "chat", "gemma", "-n", namespace, "--kubeconfig", str(kubeconfig),
        "-p", "Name a primary colour.",
    )  # fmt: skip
    assert as_user.stdout == answer.stdout


def chat_user_kubeconfig(cluster: Cluster, namespace: str, path: Path) -> Path:
    """A ServiceAccount token kubeconfig allowed to get LocalModels and use the service proxy."""
    rules = [
        {"apiGroups": ["slm.dev"], "resources": ["localmodels"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["services/proxy"], "verbs": ["create"]},
    ]
    objects = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "chatter"}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "chatter"},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "chatter"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "chatter"},
            "subjects": [{"kind": "ServiceAccount", "name": "chatter", "namespace": namespace}],
        },
    ]
    for obj in objects:
        cluster.apply(obj, namespace)
    token = cluster.kubectl("create", "token", "chatter", namespace=namespace).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": admin["clusters"][0]["cluster"]}],
                "users": [{"name": "chatter", "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "test", "user": "chatter"}}],
                "current-context": "c",
            }
        )
    )
    return path
