"""Hardware variants on the real control plane: the tier is placed, then its variant is served.

npu-0 (kwok) offers a fake intel.com/npu and takes the pods of the NPU tier without running
them; node-0, the real node, runs the runtime image and serves the CPU tier's GGUF variant for
real. The NPU there is fake too (a node status patch): no NPU can exist on this machine.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import GEMMA_TEMPLATE

from .conftest import (
    KWOK_SCHEDULING,
    REAL_NODE,
    REAL_NODE_SCHEDULING,
    TINY_ONNX,
    Cluster,
    hold_device,
)
from .operator_run import InClusterOperator, wait_for
from .test_operator import INSTANCE, condition, localmodel, status, wait_phase

ONNX_ON_NPU = {"name": "npu-onnx", "tiers": ["npu"], "format": "onnx"}


def events(cluster: Cluster, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    """The Events of reason ``reason`` on LocalModel ``name``."""
    out = cluster.kubectl(
        "get", "events", "--field-selector", f"involvedObject.name={name},reason={reason}",
        "-o", "json", namespace=namespace,
    ).stdout  # fmt: skip
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def pods_of(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    out = cluster.kubectl(
        "get", "pods", "-l", f"{INSTANCE}={name},app.kubernetes.io/name=slm-runtime",
        "-o", "json", namespace=namespace,
    ).stdout  # fmt: skip
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def test_an_npu_preferring_model_lands_on_the_npu_node_with_its_onnx_variant(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    body = localmodel(
        "phi",
        model={
            "source": None,
            "variants": [
                {**ONNX_ON_NPU, "source": "https://models.example/phi-npu/model.onnx"},
                {"name": "gguf", "tiers": ["cpu"], "source": "https://models.example/phi.gguf"},
            ],
        },
        hardware={"preferred": "npu", "fallback": ["cpu"]},
        scheduling=KWOK_SCHEDULING,
    )
    body["spec"]["model"].pop("source")
    cluster.apply(body, namespace)
    st = wait_phase(cluster, namespace, "phi", "Ready", timeout=120)
    assert st["placedTier"] == "npu"
    assert st["model"]["variant"] == "npu-onnx"
    assert st["model"]["format"] == "onnx"
    assert st["model"]["source"] == "https://models.example/phi-npu/model.onnx"
    (pod,) = pods_of(cluster, namespace, "phi")
    assert pod["spec"]["nodeName"] == "npu-0"
    assert pod["spec"]["containers"][0]["resources"]["limits"]["intel.com/npu"] == "1"
    config = cluster.get("configmap", "phi-config", namespace)["data"]["config.yaml"]
    assert "source: https://models.example/phi-npu/model.onnx" in config
    # `kubectl get lm` shows the variant in use.
    table = cluster.kubectl("get", "localmodels.slm.dev", "phi", namespace=namespace).stdout
    header, row = table.splitlines()
    assert header.split()[:3] == ["NAME", "MODEL", "VARIANT"]
    assert row.split()[header.split().index("VARIANT")] == "npu-onnx"
    (event,) = wait_for(
        lambda: events(cluster, namespace, "phi", "VariantSelected"),
        timeout=30,
        what="the VariantSelected Event",
    )
    assert event["type"] == "Normal"
    assert event["message"].startswith("serving variant npu-onnx (onnx https://models.example/")
    assert event["message"].endswith("on npu: npu is the preferred tier and has room")


def test_with_the_npu_full_the_model_steps_down_and_the_real_node_serves_its_gguf_variant(
    cluster: Cluster,
    operator: InClusterOperator,
    namespace: str,
    npu_on_the_real_node: str,
    fixtures_claim: str,
    model_server: str,
    gemma_gguf: Path,
) -> None:
    """node-0's one (fake) NPU is held by another pod: the ONNX variant's pods stay
    unschedulable, the operator steps down to cpu after fallbackAfter, and node-0's kubelet runs
    the GGUF variant, which is pulled, verified against its pin and answers the openai client."""
    hold_device(cluster, namespace, REAL_NODE, "intel.com/npu")
    digest = hashlib.sha256(gemma_gguf.read_bytes()).hexdigest()
    body = localmodel(
        "phi",
        model={
            "variants": [
                {**ONNX_ON_NPU, "source": f"pvc://{fixtures_claim}/{TINY_ONNX.name}"},
                {
                    "name": "gguf-cpu",
                    "tiers": ["cpu"],
                    "source": model_server,
                    "sha256": digest,
                    "allowInsecure": True,
                },
            ],
        },
        hardware={"preferred": "npu", "fallback": ["cpu"], "fallbackAfter": "3s"},
        cache={"size": "1Gi"},
        template=GEMMA_TEMPLATE,
        parameters={"contextLength": 1024, "numPredict": 8, "temperature": 0,
                    "stop": ["<end_of_turn>"]},
        serving={"parallel": 1},
        scheduling=REAL_NODE_SCHEDULING,
    )  # fmt: skip
    body["spec"]["model"].pop("source")
    cluster.apply(body, namespace)

    def served() -> dict[str, Any] | None:
        st = status(cluster, namespace, "phi")
        if st.get("phase") == "Failed":
            raise AssertionError(f"Failed: {st}\n{operator.log()[-3000:]}")
        ready = st.get("phase") == "Ready" and st.get("model", {}).get("variant") == "gguf-cpu"
        return st if ready else None

    st = wait_for(served, timeout=300, what="the GGUF variant to be Ready", interval=0.5)
    assert (st["placedTier"], st["backend"]) == ("cpu", "cpu")
    assert st["model"]["source"] == model_server
    assert st["model"]["format"] == "gguf"
    assert st["model"]["digest"] == f"sha256:{digest}"
    assert (
        st["fallbackReason"] == "npu: pods stayed unschedulable for longer than fallbackAfter (3s)"
    )
    placed = condition(st, "Placed")
    assert placed["reason"] == "FellBack", placed
    (pod,) = pods_of(cluster, namespace, "phi")
    assert pod["spec"]["nodeName"] == REAL_NODE
    assert "intel.com/npu" not in pod["spec"]["containers"][0]["resources"].get("limits", {})

    client = openai.OpenAI(base_url=f"http://{pod['status']['podIP']}:8080/v1", api_key="none")
    reply = client.chat.completions.create(
        model="phi",
        messages=[{"role": "user", "content": "Name a primary colour."}],
        max_tokens=8,
        temperature=0,
    )
    assert reply.model == "phi"
    assert (reply.choices[0].message.content or "").strip()

    chosen = wait_for(
        lambda: [
            e
            for e in events(cluster, namespace, "phi", "VariantSelected")
            if "gguf-cpu" in e["message"]
        ],
        timeout=30,
        what="the VariantSelected Event for the GGUF variant",
    )
    message = chosen[0]["message"]
    assert message.startswith(f"serving variant gguf-cpu (gguf {model_server}) on cpu: ")
    assert "pods unschedulable on npu" in message
    assert "intel.com/npu" in message  # the scheduler's own words
    assert events(cluster, namespace, "phi", "FellBack")


def test_an_alias_missing_from_the_catalog_fails_naming_spec_model_alias(
    cluster: Cluster, operator: InClusterOperator, namespace: str
) -> None:
    body = localmodel("unknown", model={"alias": "phi-5"})
    body["spec"]["model"].pop("source")
    cluster.apply(body, namespace)
    st = wait_phase(cluster, namespace, "unknown", "Failed", timeout=60)
    ready = condition(st, "Ready")
    assert ready["reason"] == "InvalidSpec"
    assert ready["message"].startswith("spec.model.alias: phi-5 is not in the operator's model")
    assert "phi-4-mini" in ready["message"]


@pytest.mark.parametrize(
    ("variants", "field"),
    [
        (
            [
                {
                    "name": "a",
                    "tiers": ["cpu"],
                    "source": "https://m.example/a.gguf",
                    "format": "onnx",
                }
            ],
            "spec.model.variants[0].format",
        ),
        (
            [
                {"name": "a", "tiers": ["cpu"], "source": "https://m.example/a.gguf"},
                {"name": "b", "tiers": ["cpu"], "source": "https://m.example/b.gguf"},
            ],
            "spec.model.variants",
        ),
    ],
    ids=["format-its-source-cannot-be", "two-variants-for-one-tier"],
)
def test_the_api_server_refuses_bad_variants_naming_the_field(
    cluster: Cluster, namespace: str, crds: list[str], variants: list[dict[str, Any]], field: str
) -> None:
    body = localmodel("bad", model={"variants": variants}, hardware={"preferred": "cpu",
                                                                     "fallback": []})  # fmt: skip
    body["spec"]["model"].pop("source")
    result = cluster.kubectl(
        "apply", "-f", "-", input=json.dumps(body), namespace=namespace, check=False
    )
    assert result.returncode != 0
    assert field in result.stderr, result.stderr
