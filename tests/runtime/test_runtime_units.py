"""Pure pieces of the runtime: stop matching, configuration overrides, prompt rendering, the
default thread count."""

from __future__ import annotations

import ctypes.util
import os
import shlex
from pathlib import Path

import pytest
import yaml
from slm_runtime.config import Device
from slm_runtime.cpus import ENV_CPU_REQUEST, usable_cpus
from slm_runtime.engines import openvino
from slm_runtime.engines.base import StopMatcher
from slm_runtime.engines.ggml import gpu_backend_absence
from slm_runtime.prompt import PromptBuilder, PromptError
from slm_runtime.server import load_settings

from tests.conftest import GEMMA_TEMPLATE

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("stops", "pieces", "emitted", "stopped"),
    [
        ((), ["ab", "c"], "abc", False),
        (("END",), ["hello E", "N", "D more"], "hello ", True),
        (("END",), ["hello E", "NX"], "hello ENX", False),
        (("\n\n", "###"), ["a\n", "b##", "#c"], "a\nb", True),
        (("xy",), ["x"], "", False),
    ],
)
def test_stop_matcher(
    stops: tuple[str, ...], pieces: list[str], emitted: str, stopped: bool
) -> None:
    matcher = StopMatcher(stops)
    out, hit = "", False
    for piece in pieces:
        text, hit = matcher.feed(piece)
        out += text
        if hit:
            break
    assert hit is stopped
    assert out == emitted


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "modelName: m\nformat: gguf\nmodelPath: /models/m.gguf\n"
        "parameters: {temperature: 0.5, topK: 10}\nlimits: {maxQueue: 4}\n"
    )
    monkeypatch.setenv("SLM_PORT", "9000")
    monkeypatch.setenv("SLM_DEVICES", '["gpu", "cpu"]')
    monkeypatch.setenv("SLM_PARAMETERS__TEMPERATURE", "0.2")
    monkeypatch.setenv("SLM_LIMITS__MAXQUEUE", "8")
    monkeypatch.setenv("SLM_API_TOKEN", "not-a-config-field")
    config = load_settings(path)
    assert config.port == 9000
    assert config.devices == [Device.GPU, Device.CPU]
    assert config.parameters.temperature == 0.2
    assert config.parameters.top_k == 10
    assert config.limits.max_queue == 8


def test_environment_names_are_the_files_keys_and_lists_are_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("modelName: m\nformat: gguf\nmodelPath: /m.gguf\n")
    monkeypatch.setenv("SLM_PARAMETERS__STOP", '["<end_of_turn>"]')
    monkeypatch.setenv("SLM_PARAMETERS__TOPK", "7")
    monkeypatch.setenv("slm_parameters__repeatPenalty", "1.3")
    monkeypatch.setenv("SLM_LIMITS__REQUESTTIMEOUTSECONDS", "30")
    config = load_settings(path)
    assert config.parameters.stop == ["<end_of_turn>"]
    assert config.parameters.top_k == 7
    assert config.parameters.repeat_penalty == 1.3
    assert config.limits.request_timeout_seconds == 30


def test_environment_alone_gives_a_complete_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLM_MODELNAME", "gemma")
    monkeypatch.setenv("SLM_FORMAT", "gguf")
    monkeypatch.setenv("SLM_MODELPATH", "/models/gemma.gguf")
    monkeypatch.setenv("SLM_OPENVINODEVICE", "NPU.1")
    config = load_settings()  # no file at /etc/slm/config.yaml here
    assert (config.model_name, config.model_path) == ("gemma", "/models/gemma.gguf")
    assert config.openvino_device == "NPU.1"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SLM_PARAMETERS__TOP_K", "7", "top_k"),  # snake_case: not the file's name
        ("SLM_LIMITS__MAX_QUEUE", "8", "max_queue"),
        ("SLM_PARAMETERS__TEMPERATURE", "9", "temperature"),
        ("SLM_PARAMETERS__STOP", "<end_of_turn>", "stop"),  # not JSON
        ("SLM_DEVICES", '["tpu"]', "devices"),
        ("SLM_DEVICES", '["gpu", "cpu", "gpu"]', "repeated: gpu"),
        ("SLM_OPENVINODEVICE", "GPU", "openvinoDevice"),
    ],
)
def test_environment_values_are_validated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("modelName: m\nformat: gguf\nmodelPath: /m.gguf\n")
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        load_settings(path)


def test_a_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.yaml")


def test_the_file_uses_the_same_names(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("model_name: m\nformat: gguf\nmodelPath: /m.gguf\n")
    with pytest.raises(ValueError, match="model_name"):
        load_settings(path)


def _builder(**kwargs: object) -> PromptBuilder:
    defaults: dict[str, object] = {
        "template": None,
        "system": None,
        "model_template": None,
        "bos_token": "<s>",
        "eos_token": "</s>",
    }
    defaults.update(kwargs)
    return PromptBuilder(**defaults)  # type: ignore[arg-type]


def test_go_template_with_configured_system() -> None:
    builder = _builder(template=GEMMA_TEMPLATE, system="Be brief.")
    prompt = builder.chat([{"role": "user", "content": "Hi"}])
    assert prompt == (
        "<start_of_turn>system\nBe brief.<end_of_turn>\n"
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    )
    own = builder.chat([{"role": "system", "content": "Mine."}, {"role": "user", "content": "Hi"}])
    assert "Be brief." not in own
    assert "Mine." in own


def test_generate_prompt_through_the_go_template() -> None:
    builder = _builder(template=GEMMA_TEMPLATE)
    assert builder.generate("Hi") == (
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    )
    assert builder.generate("Hi", raw=True) == "Hi"
    assert builder.generate("Hi", template="[{{ .Prompt }}]") == "[Hi]"


def test_model_jinja_template_is_used_when_none_is_configured() -> None:
    builder = _builder(
        model_template="{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}"
        "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
        system="S",
    )
    # BOS is left to the tokenizer.
    assert builder.chat([{"role": "user", "content": "Hi"}]) == "<system>S<user>Hi<assistant>"


def test_chat_without_any_template_says_what_to_set() -> None:
    with pytest.raises(PromptError, match="no chat template"):
        _builder().chat([{"role": "user", "content": "Hi"}])
    assert _builder(system="S").generate("Hi") == "S\n\nHi"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "max 100000\n"}, None),  # cgroup v2, no limit
        ({"cpu.max": "200000 100000\n"}, 2),  # limits.cpu: 2
        ({"cpu.max": "150000 100000\n"}, 2),  # 1500m rounds up
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),  # no cgroup files readable
    ],
)
def test_generation_threads_default_to_the_cpus_the_container_may_use(
    tmp_path: Path, files: dict[str, str], expected: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path) == (affinity if expected is None else min(affinity, expected))


@pytest.mark.parametrize(
    ("files", "request_millicores", "expected"),
    [
        ({}, "1000", 1),  # requests.cpu: 1, no limit: one thread, not one per node core
        ({"cpu.max": "max 100000\n"}, "1500", 2),  # rounded up
        ({}, "100", 1),  # at least 1
        ({}, "0", None),  # no request: the affinity
        ({}, "", None),
        ({"cpu.max": "300000 100000\n"}, "1000", 3),  # a limit wins over the request
        ({}, "64000", None),  # the CPU set still caps
    ],
)
def test_without_a_limit_generation_threads_follow_the_cpu_request(
    tmp_path: Path, files: dict[str, str], request_millicores: str, expected: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    environ = {ENV_CPU_REQUEST: request_millicores}
    got = usable_cpus(tmp_path, environ)
    assert got == (affinity if expected is None else min(affinity, expected))


def _doc_block(language: str) -> str:
    """The first ``language`` block under "A complete RuntimeConfig" in docs/runtime-api.md."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "runtime-api.md").read_text()
    section = doc.split("### A complete RuntimeConfig", 1)[1]
    return section.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def test_the_documented_runtime_config_is_complete_and_valid(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(_doc_block("yaml"))
    config = load_settings(path)
    documented = set(yaml.safe_load(_doc_block("yaml")))
    # Every setting but the template (shown as a comment) appears in the example.
    assert documented | {"template"} == {f.alias for f in type(config).model_fields.values()}
    assert config.parameters.stop == ["<end_of_turn>"]
    assert config.openvino_device == "NPU"


def test_the_documented_environment_example_is_a_whole_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    command = _doc_block("sh").replace("\\\n", " ")
    for word in shlex.split(command):
        if word.startswith("SLM_"):
            name, value = word.split("=", 1)
            monkeypatch.setenv(name, value)
    config = load_settings()
    assert config.model_name == "gemma3-270m"
    assert config.parameters.stop == ["<end_of_turn>"]
    assert config.parameters.num_thread == 4


def test_openvino_devices_are_unknown_when_its_library_does_not_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "libopenvino_c.so"
    broken.write_text("not a shared library")
    monkeypatch.setattr(openvino, "_library_path", lambda: broken)
    assert openvino.available_devices() is None


def test_openvino_devices_are_unknown_when_the_library_lacks_its_functions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    libc = ctypes.util.find_library("c")
    assert libc is not None
    monkeypatch.setattr(openvino, "_library_path", lambda: Path(libc))
    assert openvino.available_devices() is None


def _jinja(template: str) -> PromptBuilder:
    return PromptBuilder(
        template=None, system=None, model_template=template, bos_token="", eos_token=""
    )


def test_a_jinja_template_filter_on_an_undefined_value_is_a_prompt_error() -> None:
    prompts = _jinja("{{ messages[0].missing|tojson }}{{ messages[0].content }}")
    with pytest.raises(PromptError, match="chat template failed"):
        prompts.chat([{"role": "user", "content": "hi"}])


def test_a_template_that_fails_on_tools_has_no_tool_tag() -> None:
    prompts = _jinja(
        "{% if tools %}{{ tools[0].function.missing|tojson }}{% endif %}"
        "{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    assert prompts.chat([{"role": "user", "content": "hi"}]) == "hi"
    assert prompts.tool_tag() is None


def test_a_gpu_backend_that_does_not_load_is_named_with_the_loaders_reason(tmp_path: Path) -> None:
    assert "built without a GPU backend" in gpu_backend_absence(tmp_path)
    (tmp_path / "libggml-cuda.so").write_text("not a shared library")
    reason = gpu_backend_absence(tmp_path)
    assert reason.startswith("llama.cpp's cuda backend does not load on this node: ")
    assert "libggml-cuda.so" in reason
