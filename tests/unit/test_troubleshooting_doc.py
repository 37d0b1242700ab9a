"""docs/troubleshooting.md: an entry for every phase and condition reason; links that resolve."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from slm_operator import conditions, refdoc
from slm_operator.api import InvalidSpecError, LocalModel, parse_localmodel
from slm_operator.catalog import default_catalog
from slm_operator.conditions import Reason
from slm_operator.place import NoServableTier, Placement, place, step_down_reason
from slm_operator.status import compute_status
from slm_operator.summary import DeploymentSummary, JobSummary, NodeInfo, Observation, PodSummary
from slm_runtime.admission import DrainingError, OverloadedError
from slm_runtime.api.auth import bearer_auth
from slm_runtime.config import Device, PullResult
from slm_runtime.errors import install_handlers

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[2] / "docs"
TROUBLESHOOTING = DOCS / "troubleshooting.md"
REASONS_SECTION = "## Condition reasons"


def _text() -> str:
    return TROUBLESHOOTING.read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    """The text from ``heading`` to the next heading of the same level."""
    start = text.index(f"\n{heading}\n")
    level = heading.split(" ")[0]
    end = text.find(f"\n{level} ", start + len(heading) + 2)
    return text[start : end if end != -1 else len(text)]


def _entries(section: str) -> dict[str, str]:
    """``### `Name``` entries of a section, by name."""
    parts = re.split(r"^### `(\w+)`$", section, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _anchors(text: str) -> set[str]:
    in_code = False
    anchors = set()
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            anchors.add(refdoc.anchor(line.lstrip("#").strip()))
    return anchors


def test_every_reason_has_exactly_one_entry() -> None:
    entries = _entries(_section(_text(), REASONS_SECTION))
    wanted = [r.value for r in conditions.Reason]
    missing = sorted(set(wanted) - set(entries))
    assert not missing, (
        f"reasons in conditions.py without an entry in docs/troubleshooting.md: {missing}"
    )
    unknown = sorted(set(entries) - set(wanted))
    assert not unknown, f"entries for reasons conditions.py does not define: {unknown}"
    assert list(entries) == wanted, "keep the entries in conditions.py's order"


def test_each_reason_entry_names_the_condition_types_that_carry_it() -> None:
    entries = _entries(_section(_text(), REASONS_SECTION))
    for reason in conditions.Reason:
        set_on = re.search(r"^\*\*Set on:\*\* (.+)$", entries[reason.value], flags=re.MULTILINE)
        assert set_on, f"{reason.value}: no **Set on:** line"
        named = set(re.findall(r"`(\w+)`", set_on.group(1))) & {
            t.value for t in conditions.ConditionType
        }
        carriers = {
            t.value for t, reasons in conditions.CONDITION_REASONS.items() if reason in reasons
        }
        assert named == carriers, (
            f"{reason.value}: **Set on:** names {named}, conditions.py {carriers}"
        )


def test_each_entry_says_what_you_see_why_and_what_to_change() -> None:
    text = _text()
    entries = {
        **_entries(_section(text, REASONS_SECTION)),
        **{
            name.removeprefix("Phase "): body
            for name, body in re.findall(r"^### (Phase `\w+`)$(.*?)(?=^##)", text, re.M | re.S)
        },
    }
    for name, body in entries.items():
        for part in ("**What you see:**", "**Why:**", "**What to change:**"):
            assert part in body, f"{name}: no {part}"


def test_every_phase_has_an_entry() -> None:
    section = _section(_text(), "## Phases")
    names = re.findall(r"^### Phase `(\w+)`$", section, flags=re.MULTILINE)
    assert names == [p.value for p in conditions.Phase]


def test_runtime_and_pull_errors_are_covered() -> None:
    runtime = _section(_text(), "## Errors from the model's API")
    for heading in ("401", "429 or 503 with Retry-After", "context length", "model not found"):
        assert re.search(rf"^### .*{re.escape(heading)}", runtime, flags=re.MULTILINE), heading
    pull = _section(_text(), "## Pull errors")
    assert "sha256 mismatch for SOURCE: expected sha256:A, got sha256:B" in pull


def test_links_into_the_page_resolve() -> None:
    text = _text()
    anchors = _anchors(text)
    own = re.findall(r"\]\(#([\w-]+)\)", text)
    assert own
    assert sorted(set(own) - anchors) == []
    reference = (DOCS / "reference.md").read_text(encoding="utf-8")
    from_reference = re.findall(r"\(troubleshooting\.md#([\w-]+)\)", reference)
    assert from_reference
    assert sorted(set(from_reference) - anchors) == []


def test_links_to_other_docs_exist() -> None:
    for target in re.findall(r"\]\(([\w-]+\.md)(?:#[\w-]+)?\)", _text()):
        assert (DOCS / target).is_file(), target


# --- the messages the doc quotes are the ones the operator writes -------------------------------

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
JOB = "gemma3-270m-pull-1a2b3c4d"


def _lm(**spec: Any) -> LocalModel:
    body: dict[str, Any] = {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "LocalModel",
        "metadata": {"name": "gemma3-270m", "namespace": "ai", "generation": 1},
        "spec": {
            "model": {"source": "hf://org/repo@main/model.gguf"},
            "serving": {"replicas": 2},
            **spec,
        },
    }
    return parse_localmodel(body)


def _messages(lm: LocalModel, placement: Placement | None, obs: Observation) -> dict[str, str]:
    """``Type=Status Reason: message`` by reason, from the first condition type carrying it."""
    found: dict[str, str] = {}
    for c in compute_status(lm, placement, obs, now=NOW).conditions:
        found.setdefault(c.reason.value, f"{c.type.value}={c.status} {c.reason.value}: {c.message}")
    return found


def _placement(lm: LocalModel, *nodes: NodeInfo) -> Placement:
    return place(lm.spec, list(nodes), default_catalog(), pod_requests={"cpu": 1.0})


CPU_NODE = NodeInfo(name="n1", allocatable={"cpu": 4.0, "memory": 16 * 1024.0**3})
FULL_CPU_NODE = NodeInfo(name="n1", allocatable={"cpu": 4.0}, requested={"cpu": 3.5})
PULLED = JobSummary(
    name=JOB,
    succeeded=1,
    finished="Complete",
    result=PullResult(digest="sha256:" + "ab" * 32, size_bytes=1),
)


def _deployment(ready: int, desired: int = 2) -> DeploymentSummary:
    return DeploymentSummary(
        generation=1,
        observed_generation=1,
        spec_replicas=desired,
        replicas=desired,
        ready_replicas=ready,
        updated_replicas=desired,
        available_replicas=ready,
    )


def _written_messages() -> list[str]:
    """What the operator writes in the situations the doc shows, with the doc's names."""
    lm = _lm()
    cpu = _placement(lm, CPU_NODE)
    found: list[str] = []
    with pytest.raises(InvalidSpecError) as bad_format:
        _lm(model={"source": "https://example.com/model.bin"})
    found.append(f"Ready=False InvalidSpec: {bad_format.value}")
    npu_only = _lm(hardware={"preferred": "npu", "fallback": []})
    with pytest.raises(NoServableTier) as no_tier:
        _placement(npu_only, CPU_NODE)
    found.append(f"Ready=False InvalidSpec: spec.hardware: {no_tier.value}")
    secret = _lm(model={"source": "hf://org/repo@main/model.gguf", "credentialsSecret": "hf-token"})
    found.append(
        _messages(secret, cpu, Observation(missing_secrets=("hf-token",)))["SecretNotFound"]
    )
    failed = JobSummary(
        name=JOB,
        failed=1,
        finished="Failed",
        failure_message="hf://org/repo@main/model.gguf: HfHubHTTPError: 401 Client Error: ...",
    )
    found.append(_messages(lm, cpu, Observation(pull_job=failed))["PullFailed"])
    mismatch = replace(
        failed,
        failure_message="sha256 mismatch for hf://org/repo@main/model.gguf: "
        "expected sha256:cdcd..., got sha256:abab...",
    )
    found.append(_messages(lm, cpu, Observation(pull_job=mismatch))["DigestMismatch"])
    found.append(_messages(lm, cpu, Observation(pull_job=PULLED))["FellBack"])
    waiting = PodSummary(
        name="p",
        unschedulable_since=NOW,
        scheduler_message="0/3 nodes are available: 3 Insufficient memory.",
    )
    starved = _placement(lm, FULL_CPU_NODE)
    messages = _messages(
        lm, starved, Observation(deployment=_deployment(0), pull_job=PULLED, pods=(waiting,))
    )
    found += [messages["NoCapacity"], messages["WaitingForCapacity"]]
    crashing = PodSummary(
        name="gemma3-270m-7d9f-abcde",
        phase="Running",
        waiting_reason="CrashLoopBackOff",
        waiting_message="back-off 40s restarting failed container",
        container="runtime",
        restart_count=4,
        last_termination_message="no configured device could load the model (gpu: ...; cpu: ...)",
    )
    obs = Observation(deployment=_deployment(0), pull_job=PULLED, pods=(crashing,))
    found.append(_messages(lm, cpu, obs)["CrashLooping"])
    image = replace(
        crashing,
        waiting_reason="ImagePullBackOff",
        waiting_message='Back-off pulling image "ghcr.io/example/slm-runtime:0.1.0"',
        restart_count=0,
        last_termination_message=None,
    )
    obs = Observation(deployment=_deployment(0), pull_job=PULLED, pods=(image,))
    found.append(_messages(lm, cpu, obs)["ReplicasUnavailable"])
    obs = Observation(
        deployment=_deployment(2),
        pull_job=PULLED,
        pods=(PodSummary(name="a", ready=True), PodSummary(name="b", ready=True)),
        service_monitor_crd=False,
    )
    found.append(_messages(lm, cpu, obs)["ServiceMonitorUnsupported"])
    pool = {"inferencePool": {"enabled": True, "endpointPickerRef": {"name": "epp"}}}
    pooled = _lm(serving={"replicas": 2, **pool})
    obs = replace(obs, service_monitor_crd=True, inference_pool_crd=False)
    found.append(_messages(pooled, cpu, obs)["InferencePoolUnsupported"])
    gpu = Placement(device=Device.GPU, option="nvidia-gpu", placed=True, reason=Reason.PLACED)
    stuck = PodSummary(
        name="p",
        unschedulable_since=NOW - timedelta(seconds=121),
        scheduler_message="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
    )
    found.append(f"moved to cpu: {step_down_reason(gpu, Observation(pods=(stuck,)), NOW)}")
    return found


def test_quoted_operator_messages_are_what_the_operator_writes() -> None:
    text = " ".join(_text().split())
    for message in _written_messages():
        assert message in text, f"docs/troubleshooting.md does not quote: {message}"


def _runtime_errors() -> TestClient:
    """The runtime's own exception handlers and bearer check, on routes that raise its errors."""
    app = FastAPI()
    install_handlers(app)

    async def busy() -> None:
        raise OverloadedError

    async def draining() -> None:
        raise DrainingError

    async def secret() -> None:
        return None

    for prefix in ("/v1", "/api"):
        app.add_api_route(f"{prefix}/busy", busy)
        app.add_api_route(f"{prefix}/draining", draining)
        app.add_api_route(f"{prefix}/secret", secret, dependencies=[Depends(bearer_auth("t0k"))])
    return TestClient(app)


@pytest.mark.parametrize(
    ("path", "status", "retry_after"),
    [
        ("/v1/busy", 429, "1"),
        ("/api/busy", 503, "1"),
        ("/api/draining", 503, "1"),
        ("/v1/secret", 401, None),
    ],
)
def test_quoted_runtime_errors_are_what_the_runtime_answers(
    path: str, status: int, retry_after: str | None
) -> None:
    response = _runtime_errors().get(path)
    assert response.status_code == status
    assert response.headers.get("retry-after") == retry_after
    error = response.json()["error"]
    message = error["message"] if isinstance(error, dict) else error
    section = _section(_text(), "## Errors from the model's API")
    assert message in " ".join(section.split()), (
        f"docs/troubleshooting.md does not quote: {message}"
    )
    assert f"{status}" in section
