"""`slmctl import`: real Ollama Modelfiles become LocalModels that the API models accept."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

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
        ("FROM what is this\n", "is neither an Ollama model name"),
        ("FROM hf.co/org\n", "is not hf.co/ORG/REPO[:QUANT] nor hf.co/ORG/REPO/FILE.gguf"),
    ],
)  # fmt: skip
def test_bad_modelfiles_say_what_to_change(text: str, message: str) -> None:
    with pytest.raises(ModelfileError) as info:
        modelfile.source_for(modelfile.parse(text))
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


# --- FROM hf.co/ORG/REPO:QUANT ------------------------------------------------------------------

LLAMA = "Llama-3.2-1B-Instruct"
Q4_SHA = "4" * 64
HUB_LISTING = [
    {"type": "file", "path": ".gitattributes", "size": 2000, "oid": "a" * 40},
    {"type": "file", "path": "README.md", "size": 9000, "oid": "b" * 40},
    *(
        {
            "type": "file",
            "path": f"{LLAMA}-{quant}.gguf",
            "size": 800_000_000,
            "oid": "c" * 40,
            "lfs": {"oid": sha, "size": 800_000_000, "pointerSize": 135},
        }
        for quant, sha in (("Q4_K_M", Q4_SHA), ("Q4_K_L", "5" * 64), ("Q8_0", "8" * 64))
    ),
    {"type": "directory", "path": "split", "oid": "d" * 40},
    *(
        {"type": "file", "path": f"split/{LLAMA}-F16-0000{i}-of-00002.gguf", "size": 9}
        for i in (1, 2)
    ),
    {"type": "file", "path": "mmproj-Q8_0.gguf", "size": 9, "oid": "f" * 40},
]  # fmt: skip


class HubListing:
    """A loopback stand-in for the Hugging Face Hub's file-listing API (no hub is reachable
    here): ``GET /api/models/ORG/REPO/tree/main?recursive=true``, in two pages as the Hub pages
    a long listing (``Link: <...>; rel="next"``)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        listing = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                listing.requests.append((self.path, self.headers.get("Authorization")))
                page = parse_qs(url.query).get("cursor", ["0"])[0]
                headers = {"Content-Type": "application/json"}
                if url.path != f"/api/models/{BARTOWSKI}/tree/main":
                    status, body = 404, {"error": "Repository not found"}
                elif page == "0":
                    status, body = 200, HUB_LISTING[:3]
                    headers["Link"] = (
                        f'<{listing.url}{url.path}?recursive=true&cursor=1>; rel="next"'
                    )
                else:
                    status, body = 200, HUB_LISTING[3:]
                data = json.dumps(body).encode()
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def hub_listing() -> Iterator[HubListing]:
    hub = HubListing()
    thread = threading.Thread(target=hub.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.server.shutdown()
        hub.server.server_close()


def _modelfile(tmp_path: Path, from_value: str) -> str:
    path = tmp_path / "Modelfile"
    path.write_text(f"FROM {from_value}\nPARAMETER temperature 0.3\n")
    return str(path)


def _import_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(["import", *args])
    assert info.value.code == 1
    return capsys.readouterr().err


def test_source_override_takes_effect_before_from_is_judged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    modelfile_path = _modelfile(tmp_path, f"hf.co/{BARTOWSKI}:Q4_K_M")
    override = f"hf://{BARTOWSKI}/{LLAMA}-Q4_K_M.gguf"
    # The endpoint is a closed port: with an override, nothing is asked of the Hub.
    body, _ = run_import(
        capsys, modelfile_path, "--source-override", override, "--hf-endpoint", "http://127.0.0.1:9"
    )
    assert body["spec"]["model"] == {"source": override}
    assert body["spec"]["parameters"] == {"temperature": 0.3}
    assert body["metadata"]["name"] == "llama-3-2-1b-instruct-gguf-q4-k-m"
    # Any FROM, even one that names nothing, gives way to the override.
    path = tmp_path / "Other"
    path.write_text("FROM what is this\n")
    body, _ = run_import(capsys, str(path), "--name", "m", "--source-override", override)
    assert body["spec"]["model"] == {"source": override}


@pytest.mark.parametrize(
    ("tag", "path", "sha256"),
    [
        (":Q4_K_M", f"{LLAMA}-Q4_K_M.gguf", Q4_SHA),
        ("", f"{LLAMA}-Q4_K_M.gguf", Q4_SHA),  # no tag means Q4_K_M, as in Ollama
        (":latest", f"{LLAMA}-Q4_K_M.gguf", Q4_SHA),
        (":q8_0", f"{LLAMA}-Q8_0.gguf", "8" * 64),  # any case; mmproj-Q8_0.gguf is skipped
        (":Q4_K_L", f"{LLAMA}-Q4_K_L.gguf", "5" * 64),
    ],
)
def test_hf_repo_quant_resolves_to_the_repo_file_from_its_listing(
    tag: str,
    path: str,
    sha256: str,
    hub_listing: HubListing,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub_listing.url)
    monkeypatch.setenv("HF_TOKEN", "hf_listingToken")
    body, _ = run_import(capsys, _modelfile(tmp_path, f"hf.co/{BARTOWSKI}{tag}"), "--name", "m")
    assert body["spec"]["model"] == {"source": f"hf://{BARTOWSKI}/{path}", "sha256": sha256}
    assert parse_localmodel(body).spec.model.sha256 == sha256
    assert [p.split("?")[0] for p, _ in hub_listing.requests] == [
        f"/api/models/{BARTOWSKI}/tree/main"
    ] * 2
    assert {auth for _, auth in hub_listing.requests} == {"Bearer hf_listingToken"}


@pytest.mark.parametrize(
    ("from_value", "message"),
    [
        (f"hf.co/{BARTOWSKI}:IQ2", f"IQ2 matches no file; the repo's GGUF files are: {LLAMA}-Q"),
        (f"hf.co/{BARTOWSKI}:Q4_K", "matches no file"),  # Q4_K is not Q4_K_M
        (f"hf.co/{BARTOWSKI}:F16", "is split into 2 files, and a LocalModel pulls one file"),
        ("hf.co/bartowski/missing-GGUF:Q4_K_M", "cannot list hf.co/bartowski/missing-GGUF on http://127.0.0.1:"),
    ],
)  # fmt: skip
def test_hf_repo_quant_that_the_listing_cannot_settle_says_what_to_pass(
    from_value: str,
    message: str,
    hub_listing: HubListing,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = _import_error(capsys, _modelfile(tmp_path, from_value), "--hf-endpoint", hub_listing.url)
    assert message in err
    assert "--source-override hf://" in err


def test_hf_repo_quant_without_a_reachable_hub_says_to_pass_the_override(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _import_error(
        capsys,
        _modelfile(tmp_path, f"hf.co/{BARTOWSKI}:Q4_K_M"),
        "--hf-endpoint",
        "http://127.0.0.1:9",
    )
    assert f"cannot list hf.co/{BARTOWSKI} on http://127.0.0.1:9 (ConnectError" in err
    assert f"--source-override hf://{BARTOWSKI}/<file>.gguf" in err
    assert f"hf://{BARTOWSKI}/{LLAMA}-Q4_K_M.gguf" in err
