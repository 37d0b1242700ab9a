"""slmctl without a cluster: what `run` would send, tables, status text, errors, completion."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from slm_operator import cli, cli_chat, cli_cluster, cli_output
from slm_operator.api import parse_localmodel

pytestmark = pytest.mark.unit

NOW = "2026-01-01T12:00:00Z"


def slmctl(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run slmctl in-process: (exit status, stdout, stderr)."""
    try:
        code = cli.main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_run_dry_run_sends_only_what_was_given(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = slmctl(
        capsys, "run", "gemma", "--source", "hf://ggml-org/gemma-3-270m-GGUF/gemma-3-270m-Q8_0.gguf",
        "--hardware", "npu,gpu,cpu", "--replicas", "2", "--format", "gguf",
        "--sha256", "a" * 64, "-n", "models", "--dry-run",
    )  # fmt: skip
    assert code == 0
    body = yaml.safe_load(out)
    assert body == {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "LocalModel",
        "metadata": {"name": "gemma", "namespace": "models"},
        "spec": {
            "model": {
                "source": "hf://ggml-org/gemma-3-270m-GGUF/gemma-3-270m-Q8_0.gguf",
                "format": "gguf",
                "sha256": "a" * 64,
            },
            "hardware": {"preferred": "npu", "fallback": ["gpu", "cpu"]},
            "serving": {"replicas": 2},
        },
    }
    assert parse_localmodel(body).spec.hardware.fallback == ["gpu", "cpu"]


def test_run_cpu_only_means_no_fallback_and_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = slmctl(
        capsys, "run", "m", "--source", "ollama://gemma3:270m", "--hardware", "cpu",
        "--dry-run", "-o", "json",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out)["spec"]["hardware"] == {"preferred": "cpu", "fallback": []}


def test_run_http_source_opts_in_to_insecure(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = slmctl(capsys, "run", "m", "--source", "http://10.0.0.1/m.gguf", "--dry-run")
    assert code == 0
    assert yaml.safe_load(out)["spec"]["model"]["allowInsecure"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Gemma", "--source", "ollama://gemma3"], "invalid name 'Gemma': use lowercase letters"),
        (["m", "--source", "hf://org/repo"], "spec.model.source: hf source 'hf://org/repo' needs"),
        (["m", "--source", "s3://b/k"], "spec.model.source"),
        (["m", "--source", "ollama://gemma3", "--sha256", "ABC"], "spec.model.sha256"),
        (["m", "--source", "https://x.example/model.bin"], "set spec.model.format to gguf or onnx"),
        (["m", "--source", "ollama://gemma3", "--replicas", "-1"], "spec.serving.replicas"),
    ],
)
def test_run_rejects_bad_input_before_sending(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = slmctl(capsys, "run", *args, "--dry-run")
    assert code == 1
    assert out == ""
    assert err.startswith("error: ")
    assert message in err


@pytest.mark.parametrize("hardware", ["tpu", "gpu,gpu", "", "npu,,cpu,cpu"])
def test_run_rejects_unknown_tiers(capsys: pytest.CaptureFixture[str], hardware: str) -> None:
    code, _, err = slmctl(capsys, "run", "m", "--source", "ollama://x", "--hardware", hardware)
    assert code == 2
    assert "give tiers from npu,gpu,cpu in order of preference" in err


def lm(name: str, namespace: str = "default", **status: Any) -> dict[str, Any]:
    """A LocalModel as the API server returns it."""
    return {
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": NOW},
        "spec": {"model": {"source": f"ollama://{name}"}, "serving": {"replicas": 1}},
        "status": status,
    }


def test_list_table_has_kubectl_columns_and_progress() -> None:
    items = [
        lm("gemma", phase="Ready", backend="cpu", readyReplicas=1),
        lm("qwen", "team-b", phase="Pulling", model={"progress": "37%"}),
        lm("fresh"),
    ]
    lines = cli_output.list_table(items, all_namespaces=True).splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "MODEL", "BACKEND", "READY", "PHASE", "AGE"]
    assert lines[1].split()[:6] == ["default", "gemma", "ollama://gemma", "cpu", "1/1", "Ready"]
    assert lines[2].split()[:7] == [
        "team-b",
        "qwen",
        "ollama://qwen",
        "<none>",
        "0/1",
        "Pulling",
        "(37%)",
    ]
    assert lines[3].split()[4:6] == ["0/1", "Pending"]
    column = lines[0].index("MODEL")
    assert all(line[column - 1] == " " and line[column] != " " for line in lines)
    assert "NAMESPACE" not in cli_output.list_table(items, all_namespaces=False)


def test_status_text_for_a_fallback_and_a_failure() -> None:
    three_days_ago = (datetime.now(UTC) - timedelta(days=3, hours=1)).isoformat()
    cond = {"lastTransitionTime": three_days_ago, "observedGeneration": 1}
    obj = lm(
        "gemma",
        phase="Failed",
        backend="cpu",
        fallbackReason="npu: no node with intel.com/npu; gpu: GGUF on gpu needs nvidia.com/gpu",
        model={"progress": "100%", "digest": "sha256:" + "b" * 64, "sizeBytes": 253 * 2**20},
        endpoint="http://gemma.default.svc:8080",
        conditions=[
            {**cond, "type": "Ready", "status": "False", "reason": "DigestMismatch",
             "message": "expected sha256 aaaa, got bbbb"},
            {**cond, "type": "Placed", "status": "True", "reason": "FellBack", "message": "cpu"},
        ],
    )  # fmt: skip
    text = cli_output.describe(obj)
    fields = dict(line.split(":", 1) for line in text.splitlines() if not line.startswith(" "))
    assert fields["Phase"].strip() == "Failed"
    assert fields["Backend"].strip() == "cpu"
    assert fields["Fallback reason"].strip().startswith("npu: no node with intel.com/npu")
    assert fields["Pull progress"].strip() == "100%"
    assert fields["Size"].strip() == "253.0 MiB"
    assert fields["Endpoint"].strip() == "http://gemma.default.svc:8080"
    assert fields["Error"].strip() == "DigestMismatch: expected sha256 aaaa, got bbbb"
    rows = text.split("Conditions:\n")[1].splitlines()
    assert rows[0].split() == ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]
    assert rows[1].split(None, 4) == [
        "Ready", "False", "DigestMismatch", "3d", "expected sha256 aaaa, got bbbb"
    ]  # fmt: skip


def test_status_before_the_operator_wrote_any() -> None:
    text = cli_output.describe(lm("gemma"))
    assert "not yet reconciled: is the operator running?" in text
    assert "Conditions" not in text


@pytest.mark.parametrize(
    ("api", "line", "piece"),
    [
        ("ollama", '{"message":{"role":"assistant","content":"Hi"},"done":false}', "Hi"),
        ("ollama", '{"message":{"role":"assistant","content":""},"done":true}', ""),
        ("openai", 'data: {"choices":[{"delta":{"content":"Hi"}}]}', "Hi"),
        ("openai", 'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}', ""),
        ("openai", "data: [DONE]", None),
        ("openai", ": keep-alive", ""),
        ("openai", "", ""),
    ],
)
def test_stream_lines(api: str, line: str, piece: str | None) -> None:
    assert cli_chat._piece(api, line) == piece


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_stream_errors_are_reported(api: str) -> None:
    line = 'data: {"error": {"message": "boom"}}' if api == "openai" else '{"error": "boom"}'
    with pytest.raises(cli_cluster.CliError, match=r"the model failed: .*boom"):
        cli_chat._piece(api, line)


def test_missing_kubeconfig_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = slmctl(capsys, "ls", "--kubeconfig", str(tmp_path / "nope"))
    assert code == 1
    assert err.startswith(f"error: cannot load a kubeconfig from {tmp_path / 'nope'}")
    assert "pass --kubeconfig FILE or set KUBECONFIG" in err


def test_unreachable_api_server_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import socket

    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                    "users": [{"name": "u", "user": {"token": "t"}}],
                    "contexts": [
                        {"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "ns"}}
                    ],
                    "current-context": "x",
                }
            )
        )
        code, _, err = slmctl(capsys, "status", "gemma", "--kubeconfig", str(kubeconfig))
    assert code == 1
    assert err.startswith(f"error: cannot reach the API server at http://127.0.0.1:{port}")
    assert "t\n" not in err


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_know_the_commands(shell: str) -> None:
    script = subprocess.run(
        [sys.executable, "-m", "slm_operator.cli", "completion", shell],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for word in ("run", "import", "status", "chat", "--hardware", "--all-namespaces"):
        assert word in script
    if shell == "bash":
        result = subprocess.run(
            ["bash", "-n"], input=script, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
