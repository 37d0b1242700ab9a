"""`slmctl import`: real Ollama Modelfiles become LocalModels that the API models accept."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from slm_operator import cli, modelfile
from slm_operator.api import parse_localmodel
from slm_operator.modelfile import ModelfileError
from slm_runtime.config import ModelParameters

pytestmark = pytest.mark.unit

MODELFILES = Path(__file__).resolve().parents[1] / "data" / "modelfiles"
BARTOWSKI = "bartowski/Llama-3.2-1B-Instruct-GGUF"
FIXTURES = sorted(MODELFILES.glob("*.Modelfile"))


def run_import(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[dict[str, Any], str]:
    """`slmctl import ARGS`: the parsed YAML on stdout and stderr."""
    assert cli.main(["import", *args]) == 0
    out, err = capsys.readouterr()
    return yaml.safe_load(out), err


def test_fixture_set_is_there() -> None:
    assert len(FIXTURES) >= 5


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_every_fixture_becomes_a_valid_localmodel(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body, _ = run_import(capsys, str(path))
    lm = parse_localmodel(body)
    assert lm.spec.model.source == body["spec"]["model"]["source"]
    assert lm.spec.parameters.model_dump(by_alias=True, exclude_none=True) == body["spec"].get(
        "parameters", {}
    )


def test_llama_template_stops_and_license(capsys: pytest.CaptureFixture[str]) -> None:
    body, err = run_import(capsys, str(MODELFILES / "llama3.2.Modelfile"))
    spec = body["spec"]
    assert body["metadata"]["name"] == "llama3-2-1b"
    assert spec["model"]["source"] == "ollama://llama3.2:1b"
    assert spec["parameters"] == {
        "stop": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "temperature": 0.6,
        "topP": 0.9,
    }
    template = spec["template"]
    assert template.startswith("<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge")
    assert template.endswith("{{- end }}")
    assert template == (MODELFILES / "llama3.2.Modelfile").read_text().split('"""')[1]
    assert "LICENSE ignored" in err
    assert "line 29" in err


def test_qwen_lowercase_instructions_quoted_stops_and_system(
    capsys: pytest.CaptureFixture[str],
) -> None:
    body, err = run_import(capsys, str(MODELFILES / "qwen2.5.Modelfile"), "--name", "qwen")
    spec = body["spec"]
    assert body["metadata"]["name"] == "qwen"
    assert spec["model"]["source"] == "ollama://qwen2.5:0.5b-instruct-q4_K_M"
    assert spec["system"] == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    assert spec["parameters"] == {
        "stop": ["<|im_start|>", "<|im_end|>"],
        "repeatPenalty": 1.05,
        "repeatLastN": 64,
        "numPredict": 512,
        "seed": 42,
    }
    assert "# Tools" in spec["template"]  # a '#' inside a string is not a comment
    assert err == ""


def test_gemma_context_and_sampling(capsys: pytest.CaptureFixture[str]) -> None:
    body, _ = run_import(capsys, str(MODELFILES / "gemma3.Modelfile"), "-n", "models")
    assert body["metadata"] == {"name": "gemma3-270m", "namespace": "models"}
    assert body["spec"]["parameters"] == {
        "stop": ["<end_of_turn>"],
        "temperature": 1.0,
        "topK": 64,
        "topP": 0.95,
        "minP": 0.0,
        "contextLength": 8192,
    }
    assert body["spec"]["system"] == "You are a concise assistant. Answer in one sentence."


def test_phi3_penalties_threads_and_ignored_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    body, err = run_import(capsys, str(MODELFILES / "phi3.Modelfile"))
    params = body["spec"]["parameters"]
    assert params["stop"] == ["<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    assert params["contextLength"] == 4096
    assert params["numThread"] == 4
    assert (params["presencePenalty"], params["frequencyPenalty"]) == (0.5, 0.25)
    assert "mirostat" not in params
    assert "PARAMETER mirostat ignored" in err
    assert body["spec"]["template"].endswith("{{ .Response }}<|end|>\n")


def test_hf_url_becomes_hf_source_and_escaped_quotes(capsys: pytest.CaptureFixture[str]) -> None:
    body, _ = run_import(capsys, str(MODELFILES / "hf-gguf.Modelfile"))
    assert body["spec"]["model"]["source"] == (
        "hf://bartowski/SmolLM2-135M-Instruct-GGUF@main/SmolLM2-135M-Instruct-Q4_K_M.gguf"
    )
    assert body["spec"]["system"] == 'You are SmolLM, a "tiny" helpful assistant.'


def test_source_override_and_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("FROM ./my-model.gguf\nPARAMETER seed 7\n"))
    body, _ = run_import(
        capsys, "-", "--name", "mine", "--source-override", "https://models.example/m.gguf"
    )
    assert body["spec"]["model"] == {"source": "https://models.example/m.gguf"}
    assert body["spec"]["parameters"] == {"seed": 7}


def test_http_source_opts_in_to_insecure_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "Modelfile"
    path.write_text("FROM http://10.0.0.1:8000/m.gguf\n")
    body, err = run_import(capsys, str(path), "--name", "m")
    assert body["spec"]["model"] == {"source": "http://10.0.0.1:8000/m.gguf", "allowInsecure": True}
    assert "plain http: allowInsecure set" in err


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["import", str(MODELFILES / "gemma3.Modelfile"), "-o", "json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["kind"] == "LocalModel"


@pytest.mark.parametrize(
    ("value", "source"),
    [
        ("llama3.2", "ollama://llama3.2"),
        ("Llama3.2:Q4_K_M", "ollama://llama3.2:Q4_K_M"),
        ("library/llama3.2:3b", "ollama://library/llama3.2:3b"),
        ("registry.ollama.ai/library/qwen2.5:latest", "ollama://registry.ollama.ai/library/qwen2.5:latest"),
        ("hf.co/org/repo/model-Q8_0.gguf", "hf://org/repo/model-Q8_0.gguf"),
        ("https://huggingface.co/org/repo/resolve/v1.0/sub/m.gguf", "hf://org/repo@v1.0/sub/m.gguf"),
        ("/models/model.gguf", "file:///models/model.gguf"),
        ("./model.gguf", None),
        ("../weights", None),
        ("https://models.example/m.gguf", "https://models.example/m.gguf"),
    ],
)  # fmt: skip
def test_from_values(value: str, source: str | None) -> None:
    assert modelfile.source_from(value) == source


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PARAMETER temperature 0.1\n", "no FROM line"),
        ("FROM x\nADAPTER ./lora.gguf\n", "line 2: ADAPTER: LoRA adapters are not supported"),
        ("FROM x\nPARAMETER temperature hot\n", "line 2: PARAMETER temperature 'hot' is not a"),
        ("FROM x\nPARAMETER num_ctx 4k\n", "is not an integer"),
        ("FROM x\nPARAMETER top_q 3\n", "unknown PARAMETER 'top_q'; supported:"),
        ("FROM x\nPARAMETER temperature 7\n", "temperature: Input should be less than or equal"),
        ("FROM x\nPARAMETER stop\n", "PARAMETER needs a name and a value"),
        ("FROM x\nQUANTIZE q4\n", "line 2: unknown instruction 'QUANTIZE'"),
        ('FROM x\nSYSTEM """never closed\n', 'line 2: SYSTEM opens """ but never closes it'),
        ('FROM x\nSYSTEM "unterminated\n', "unterminated quoted string"),
        (f"FROM hf.co/{BARTOWSKI}:Q4_K_M\n", f"--source-override hf://{BARTOWSKI}/<file>.gguf"),
        (f"FROM hf.co/{BARTOWSKI}:Q4_K_M\n", "Llama-3.2-1B-Instruct-Q4_K_M.gguf"),
        ("FROM what is this\n", "is neither an Ollama model name"),
    ],
)  # fmt: skip
def test_bad_modelfiles_say_what_to_change(text: str, message: str) -> None:
    with pytest.raises(ModelfileError) as info:
        modelfile.parse(text)
    assert message in str(info.value)


def test_local_file_needs_a_source_override(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "Modelfile"
    path.write_text("FROM ./model.gguf\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["import", str(path)])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "is a file on this machine" in err
    assert "--source-override" in err


def test_ignored_instructions_warn_and_mapping_is_case_insensitive() -> None:
    parsed = modelfile.parse(
        "from llama3.2\nmessage user hi\nRequires 0.5.0\nparameter TEMPERATURE 0\n"
    )
    assert parsed.parameters == {"temperature": 0.0}
    assert [w.split(":")[0] for w in parsed.warnings] == ["line 2", "line 3"]


def test_last_system_and_template_win_and_stops_are_distinct() -> None:
    parsed = modelfile.parse(
        'FROM x\nSYSTEM one\nSYSTEM """two"""\nTEMPLATE a\nTEMPLATE """b\nc"""\n'
        'PARAMETER stop END\nPARAMETER stop END\nPARAMETER stop "two words"\n'
    )
    assert parsed.system == "two"
    assert parsed.template == "b\nc"
    assert parsed.parameters["stop"] == ["END", "two words"]


def test_every_typed_parameter_is_mapped() -> None:
    mapped = {field for field, _ in modelfile.PARAMETERS.values()}
    assert mapped == set(ModelParameters.model_json_schema(by_alias=True)["properties"])


@pytest.mark.parametrize(
    ("from_value", "name"),
    [
        ("llama3.2:1b", "llama3-2-1b"),
        ("/m/Phi-3-mini.Q4.gguf", "phi-3-mini-q4"),
        ("7b", "b"),
        ("1", "model"),
    ],
)
def test_default_names_are_dns_labels(from_value: str, name: str) -> None:
    assert modelfile.default_name(modelfile.Modelfile(from_value=from_value)) == name
