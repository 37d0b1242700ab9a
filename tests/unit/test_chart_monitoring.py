"""The chart's PrometheusRule and Grafana dashboard, checked without a cluster.

The rules go through promtool (built from Prometheus' Go module by hack/cluster/build.sh):
`check rules`, then `test rules` with series shaped as the operator and the runtime write them,
so each alert is shown to fire for the model in trouble, with the text a person reads, and to
stay quiet for a healthy one. Every metric the rules and the dashboard name is one the operator
or the runtime exports. tests/cluster/test_monitoring.py loads both into a real Prometheus.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from slm_operator import metrics as operator_metrics
from slm_runtime.metrics import Metrics

from tests.cluster.conftest import CACHE, VERSIONS
from tests.unit.test_chart import CHART, one, render

pytestmark = pytest.mark.unit

PROMTOOL = CACHE / "bin" / f"promtool-{VERSIONS['PROMETHEUS_VERSION']}"
Obj = dict[str, Any]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if not PROMTOOL.exists():
        pytest.fail(f"{PROMTOOL} is missing: run `make setup` to build it", pytrace=False)
    return subprocess.run(
        [str(PROMTOOL), *args], capture_output=True, text=True, check=False, timeout=120
    )


def rule_groups(*sets: str) -> Obj:
    """The rendered PrometheusRule's spec (a Prometheus rule file)."""
    rule = one(render("prometheusRule.enabled=true", *sets), "PrometheusRule")
    spec: Obj = rule["spec"]
    return spec


def exported_metric_names() -> set[str]:
    """Every series name the runtime and the operator export (with each histogram's and
    counter's suffixed names), from their registries."""
    runtime = Metrics()
    runtime.device.info({"device": "cpu", "engine": "llama.cpp", "engine_version": "1"})
    for histogram in (runtime.latency, runtime.ttft):
        histogram.labels(route="/api/chat").observe(0.1)
    runtime.requests.labels(route="/api/chat", code="200").inc()
    operator_metrics.MODEL_STATUS.labels("ns", "m", "Ready", "ModelServing").set(1)
    text = generate_latest(runtime.registry).decode() + generate_latest().decode()
    operator_metrics.MODEL_STATUS.clear()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def named_metrics(expr: str) -> set[str]:
    """The metric names an expression selects (identifiers followed by ``{`` or a range)."""
    return set(re.findall(r"\b(slm_[a-z0-9_]+)\b", expr))


def test_rules_pass_promtool_check_and_name_exported_metrics(tmp_path: Path) -> None:
    groups = rule_groups()
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(groups))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 4 rules found" in checked.stdout
    alerts = {r["alert"]: r for g in groups["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "SLMModelNotReady",
        "SLMModelPullFailed",
        "SLMModelQueueSaturated",
        "SLMModelRuntimeErrors",
    }
    exported = exported_metric_names()
    for name, rule in alerts.items():
        used = named_metrics(rule["expr"])
        assert used, name
        assert used <= exported, (name, used - exported)


def pull_failed(model: str, reason: str) -> Obj:
    return {
        "exp_labels": {"severity": "critical", "namespace": "team-a", "localmodel": model,
                       "reason": reason},
        "exp_annotations": {
            "summary": f"LocalModel team-a/{model} could not get its model.",
            "description": f"Its model could not be pulled or used ({reason}): the Ready "
            f"condition of `kubectl describe localmodel -n team-a {model}` names the source, "
            "the error and what to change.",
        },
    }  # fmt: skip


def not_ready(model: str, now: str) -> Obj:
    return {
        "exp_labels": {"severity": "warning", "namespace": "team-a", "localmodel": model},
        "exp_annotations": {
            "summary": f"LocalModel team-a/{model} is not Ready.",
            "description": f"It has been out of Ready for 20m; now {now}. `kubectl describe "
            f"localmodel -n team-a {model}` shows the condition that says what to change.",
        },
    }


def test_each_alert_fires_for_the_model_in_trouble_and_not_for_a_healthy_one(
    tmp_path: Path,
) -> None:
    groups = rule_groups("prometheusRule.notReadyFor=20m")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    status = "slm_operator_model_status"
    requests = "slm_runtime_requests_total"
    series = [
        # Operator: one model stuck Pulling, one whose digest did not match, one whose file
        # does not load, one that moved from Pulling to Deploying without ever being Ready, one
        # Ready, one scaled to zero.
        (f'{status}{{namespace="team-a",localmodel="gemma",phase="Pulling",reason="NotReady"}}',
         "1x40"),
        (f'{status}{{namespace="team-a",localmodel="qwen",phase="Failed",'
         'reason="DigestMismatch"}', "1x40"),
        (f'{status}{{namespace="team-a",localmodel="broken",phase="Failed",'
         'reason="ModelCorrupt"}', "1x40"),
        (f'{status}{{namespace="team-a",localmodel="moving",phase="Pulling",reason="NotReady"}}',
         "1x11"),
        (f'{status}{{namespace="team-a",localmodel="moving",phase="Deploying",'
         'reason="NotReady"}', "_x12 1x28"),
        (f'{status}{{namespace="team-a",localmodel="smol",phase="Ready",reason="ModelServing"}}',
         "1x40"),
        (f'{status}{{namespace="team-a",localmodel="idle",phase="Pending",'
         'reason="ScaledToZero"}', "1x40"),
        # Runtime: busy has two replicas with requests always waiting; calm's queue mostly
        # empty.
        ('slm_runtime_requests_queued{namespace="team-b",localmodel="busy",pod="busy-1"}', "2x40"),
        ('slm_runtime_requests_queued{namespace="team-b",localmodel="busy",pod="busy-2"}', "1x40"),
        ('slm_runtime_requests_queued{namespace="team-b",localmodel="calm",pod="calm-1"}',
         "3 0 0 0 0 3 0 0 0 0 3 0 0 0 0 3 0 0 0 0 3 0 0 0 0"),
        # Runtime: broken answers one chat in four with a 500, among many probes that pass;
        # fine answers some requests with 501 (a feature the model lacks), a client's matter.
        (f'{requests}{{namespace="team-b",localmodel="broken",route="/api/chat",code="200"}}',
         "0+30x40"),
        (f'{requests}{{namespace="team-b",localmodel="broken",route="/api/chat",code="500"}}',
         "0+10x40"),
        (f'{requests}{{namespace="team-b",localmodel="broken",route="/readyz",code="200"}}',
         "0+1000x40"),
        (f'{requests}{{namespace="team-b",localmodel="fine",route="/api/chat",code="200"}}',
         "0+40x40"),
        (f'{requests}{{namespace="team-b",localmodel="fine",route="/api/embed",code="501"}}',
         "0+10x40"),
    ]  # fmt: skip
    cases = [
        ("SLMModelNotReady", "10m", []),  # not for 20m yet
        (
            "SLMModelNotReady",
            "25m",
            [
                not_ready("broken", "Failed (ModelCorrupt)"),
                not_ready("gemma", "Pulling (NotReady)"),
                not_ready("moving", "Deploying (NotReady)"),
                not_ready("qwen", "Failed (DigestMismatch)"),
            ],
        ),
        (
            "SLMModelPullFailed",
            "5m",
            [pull_failed("broken", "ModelCorrupt"), pull_failed("qwen", "DigestMismatch")],
        ),
        ("SLMModelQueueSaturated", "5m", []),  # not for 10m yet
        (
            "SLMModelQueueSaturated",
            "20m",
            [
                {
                    "exp_labels": {"severity": "warning", "namespace": "team-b",
                                   "localmodel": "busy"},
                    "exp_annotations": {
                        "summary": "LocalModel team-b/busy keeps requests waiting.",
                        "description": "Every replica has had requests waiting for a sequence "
                        "slot for 10m. Raise spec.serving.parallel or spec.serving.replicas, or "
                        "turn on spec.autoscaling.",
                    },
                }
            ],
        ),
        (
            "SLMModelRuntimeErrors",
            "15m",
            [
                {
                    "exp_labels": {"severity": "warning", "namespace": "team-b",
                                   "localmodel": "broken"},
                    "exp_annotations": {
                        "summary": "LocalModel team-b/broken answers with server errors.",
                        "description": "25% of its API requests got a 5xx over the last 5 "
                        "minutes. The runtime's log (`kubectl logs -n team-b deploy/broken`) "
                        "says why.",
                    },
                }
            ],
        ),
    ]  # fmt: skip
    test_file = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "alert_rule_test": [
                    {"alertname": name, "eval_time": at, "exp_alerts": expected}
                    for name, at, expected in cases
                ],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test_file))
    result = promtool("test", "rules", str(tmp_path / "test.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_labels_and_the_operator_monitor_keep_model_namespaces() -> None:
    objects = render(
        "prometheusRule.enabled=true", "serviceMonitor.enabled=true",
        'prometheusRule.labels.release=kube-prometheus-stack',
    )  # fmt: skip
    rule = one(objects, "PrometheusRule")
    assert rule["metadata"]["namespace"] == "ops"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # The operator's model status carries each model's namespace: the scrape must keep it.
    (endpoint,) = one(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True
    assert not [o for o in render() if o["kind"] == "PrometheusRule"]


def dashboard(*sets: str) -> tuple[Obj, Obj]:
    """The dashboard ConfigMap and the dashboard it holds."""
    (config_map,) = [
        o
        for o in render("grafanaDashboard.enabled=true", *sets)
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "rel-slm-operator-dashboard"
    ]
    (text,) = config_map["data"].values()
    board: Obj = json.loads(text)
    return config_map, board


def test_the_dashboard_has_a_row_per_model_with_the_four_views() -> None:
    config_map, board = dashboard()
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "ops"
    assert board == json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["localmodel"]["multi"]
    assert variables["localmodel"]["includeAll"]
    # One namespace at a time: a model's name is only unique within its namespace.
    assert not variables["namespace"]["multi"]
    assert not variables["namespace"]["includeAll"]
    rows = [p for p in board["panels"] if p["type"] == "row"]
    assert [r.get("repeat") for r in rows] == ["localmodel"]
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert [p["title"] for p in panels] == ["Tokens/s", "Time to first token", "Queue", "Device"]
    exported = exported_metric_names()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            used = named_metrics(target["expr"])
            assert used, panel["title"]
            assert used <= exported, (panel["title"], used - exported)
            assert 'namespace="$namespace", localmodel="$localmodel"' in target["expr"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_the_dashboard_goes_where_grafana_looks() -> None:
    config_map, _ = dashboard(
        "grafanaDashboard.namespace=grafana", "grafanaDashboard.annotations.grafana_folder=SLM"
    )
    assert config_map["metadata"]["namespace"] == "grafana"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "SLM"}
    assert not [o for o in render() if o["kind"] == "ConfigMap" and "dashboard" in
                o["metadata"]["name"]]  # fmt: skip
