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
from kubernetes.client.exceptions import ApiException
from slm_operator import cli, cli_chat, cli_cluster, cli_output
from slm_operator.aliases import default_models
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
    words = ("run", "import", "status", "chat", "catalog", "--hardware", "--all-namespaces")
    for word in (*words, "--alias", "--operator-namespace"):
        assert word in script
    if shell == "bash":
        result = subprocess.run(
            ["bash", "-n"], input=script, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr


# --- run with an alias ------------------------------------------------------------------------


class FakeCluster:
    """The API server calls slmctl makes: canned answers by path (a status code: that error);
    ``calls`` records the LocalModel calls (run's apply)."""

    def __init__(self, answers: dict[str, Any], namespace: str = "team") -> None:
        self.answers, self.namespace, self.host = answers, namespace, "https://fake"
        self.calls: list[tuple[str, str | None, str | None, Any]] = []

    def request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        answer = self.answers[path]
        if isinstance(answer, int):
            body = json.dumps({"message": f"{path} is forbidden"}).encode()
            raise ApiException(status=answer, reason="Forbidden", body=body)
        result: dict[str, Any] = answer
        return result

    def call(self, method: str, namespace: str | None, name: str | None = None, **kw: Any) -> Any:
        self.calls.append((method, namespace, name, kw.get("body")))
        return kw.get("body")


CONFIGMAPS = "/api/v1/configmaps"


def catalog_configmap(*aliases: str) -> dict[str, Any]:
    """The operator's catalog ConfigMap with these aliases of the built-in catalog."""
    models = default_models().model_dump(mode="json", by_alias=True, exclude_defaults=True)
    data = {"models.yaml": yaml.safe_dump({a: models[a] for a in aliases})}
    return {"metadata": {"name": "slm-operator-catalog", "namespace": "slm-system"}, "data": data}


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    """slmctl connected to a fake API server whose catalog has phi-4-mini and qwen2.5-0.5b."""
    fake = FakeCluster({CONFIGMAPS: {"items": [catalog_configmap("phi-4-mini", "qwen2.5-0.5b")]}})
    monkeypatch.setattr(cli, "connect", lambda args: fake)
    return fake


@pytest.mark.parametrize(
    ("args", "name", "alias"),
    [
        (["phi-4-mini"], "phi-4-mini", "phi-4-mini"),
        (["my-phi", "--alias", "phi-4-mini"], "my-phi", "phi-4-mini"),
        (["--alias", "phi-4-mini"], "phi-4-mini", "phi-4-mini"),
        (["qwen2.5-0.5b"], "qwen2-5-0-5b", "qwen2.5-0.5b"),
        (["--alias", "qwen2.5-0.5b"], "qwen2-5-0-5b", "qwen2.5-0.5b"),
        (["qwen", "--alias", "qwen2.5-0.5b"], "qwen", "qwen2.5-0.5b"),
    ],
)
def test_run_alias_dry_run(
    capsys: pytest.CaptureFixture[str],
    cluster: FakeCluster,
    args: list[str],
    name: str,
    alias: str,
) -> None:
    code, out, err = slmctl(capsys, "run", *args, "--hardware", "gpu,cpu", "--dry-run")
    assert code == 0, err
    body = yaml.safe_load(out)
    assert body == {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "LocalModel",
        "metadata": {"name": name},
        "spec": {
            "model": {"alias": alias},
            "hardware": {"preferred": "gpu", "fallback": ["cpu"]},
        },
    }
    assert parse_localmodel(body).spec.model.alias == alias
    renamed = f"note: {alias!r} is not a LocalModel name; naming it {name!r}"
    assert (renamed in err) is (name not in args)
    assert cluster.calls == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["gemma-3"], "alias 'gemma-3' is not in the operator's model catalog (ConfigMap slm-system"
         "/slm-operator-catalog); it has: phi-4-mini, qwen2.5-0.5b (see: slmctl catalog)"),
        (["m", "--alias", "phi-4-mini", "--format", "gguf"], "--format and --sha256 describe "
         "--source; an alias's variants carry their own"),
        (["phi-4-mini", "--sha256", "a" * 64], "--format and --sha256 describe --source"),
        (["2b-chat"], "alias '2b-chat' does not make a LocalModel name (use lowercase letters, "
         "digits and '-', starting with a letter, at most 52 characters); give one: slmctl run "
         "NAME --alias 2b-chat"),
        (["--alias", "a" * 60], "does not make a LocalModel name"),
        (["Phi"], "'Phi' is not a model alias (lowercase letters, digits, '.', '_' and '-'); to "
         "run a model by its source: slmctl run NAME --source SOURCE"),
        ([], "give the model: slmctl run ALIAS, slmctl run NAME --alias ALIAS or slmctl run NAME "
         "--source SOURCE"),
        (["--source", "ollama://gemma3"], "give the LocalModel a NAME"),
        (["m.x", "--alias", "phi-4-mini"], "invalid name 'm.x'"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("dry_run", [True, False])
def test_run_alias_refusals_send_nothing(
    capsys: pytest.CaptureFixture[str],
    cluster: FakeCluster,
    args: list[str],
    message: str,
    dry_run: bool,
) -> None:
    code, out, err = slmctl(capsys, "run", *args, *(["--dry-run"] if dry_run else []))
    assert code == 1
    assert out == ""
    assert err.startswith("error: ")
    assert message in err
    assert cluster.calls == []


def test_run_source_and_alias_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = slmctl(capsys, "run", "m", "--source", "ollama://x", "--alias", "phi-4-mini")
    assert code == 2
    assert "argument --alias: not allowed with argument --source" in err


def test_run_alias_applies_after_the_catalog_check(
    capsys: pytest.CaptureFixture[str], cluster: FakeCluster
) -> None:
    code, out, err = slmctl(capsys, "run", "qwen2.5-0.5b", "--replicas", "2")
    assert code == 0, err
    [(method, namespace, name, body)] = cluster.calls
    assert (method, namespace, name) == ("PATCH", "team", "qwen2-5-0-5b")
    assert body["spec"] == {"model": {"alias": "qwen2.5-0.5b"}, "serving": {"replicas": 2}}
    assert out.startswith("localmodel.slm.dev/qwen2-5-0-5b applied in namespace team\n")
    assert "watch it with: slmctl status qwen2-5-0-5b -n team" in out


def test_run_alias_looks_in_the_operator_namespace(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = "/api/v1/namespaces/slm-system/configmaps"
    fake = FakeCluster({path: {"items": [catalog_configmap("phi-4-mini")]}, CONFIGMAPS: 403})
    monkeypatch.setattr(cli, "connect", lambda args: fake)
    code, _, err = slmctl(capsys, "run", "phi-4-mini", "--operator-namespace", "slm-system")
    assert code == 0, err
    assert [c[2] for c in fake.calls] == ["phi-4-mini"]


@pytest.mark.parametrize("answer", [403, {"items": []}])
def test_run_alias_unchecked_when_the_catalog_cannot_be_read(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, answer: Any
) -> None:
    fake = FakeCluster({CONFIGMAPS: answer})
    monkeypatch.setattr(cli, "connect", lambda args: fake)
    code, _, err = slmctl(capsys, "run", "my-model", "--alias", "not-built-in")
    assert code == 0, err
    assert [c[2] for c in fake.calls] == ["my-model"]
    assert err.startswith("warning: alias 'not-built-in' not checked: ")
    assert err.rstrip().endswith("the operator fails the LocalModel if its catalog lacks it")
    assert len(err.splitlines()) == 1


def test_run_alias_dry_run_without_a_cluster_checks_the_built_in_catalog(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    kubeconfig = ["--kubeconfig", str(tmp_path / "none")]
    code, out, err = slmctl(capsys, "run", "gemma-3-270m", *kubeconfig, "--dry-run")
    assert code == 0
    assert yaml.safe_load(out)["spec"]["model"] == {"alias": "gemma-3-270m"}
    assert err.startswith("note: alias checked against the built-in catalog: cannot load a kubec")
    code, out, err = slmctl(capsys, "run", "gemma-3", *kubeconfig, "--dry-run")
    assert code == 1
    assert out == ""
    assert "error: alias 'gemma-3' is not in the built-in model catalog (cannot load a kubec" in err
    assert "it has: gemma-3-270m, phi-4-mini, qwen2.5-0.5b, smollm2-135m" in err


def test_list_and_status_show_an_alias() -> None:
    served = "hf://unsloth/Phi-4-mini-instruct-GGUF/Phi-4-mini-instruct-Q4_K_M.gguf"
    obj = lm(
        "phi", phase="Ready", backend="gpu", model={"variant": "gguf-q4-k-m", "source": served}
    )
    obj["spec"]["model"] = {"alias": "phi-4-mini"}
    assert cli_output.list_table([obj], all_namespaces=False).splitlines()[1].split()[:2] == [
        "phi", "phi-4-mini"
    ]  # fmt: skip
    text = cli_output.describe(obj)
    fields = dict(line.split(":", 1) for line in text.splitlines() if not line.startswith(" "))
    assert fields["Alias"].strip() == "phi-4-mini"
    assert fields["Variant"].strip() == "gguf-q4-k-m"
    assert fields["Source"].strip() == served
