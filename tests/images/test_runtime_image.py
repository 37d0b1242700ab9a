"""The CPU runtime image: serves the real Gemma GGUF to the real clients, pulls, and is locked down.

Each container runs as the runtime contract runs pods: UID 65532, a read-only root filesystem,
only /tmp writable, the model mounted read-only at /models, the config at /etc/slm/config.yaml,
an explicit command. Host networking lets it reach loopback servers (the pull suite's nginx).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
import yaml

from tests.conftest import GEMMA_TEMPLATE, ROOT
from tests.images.conftest import Docker, image_names
from tests.pull.conftest import Nginx, free_port
from tests.runtime.conftest import TINY_ONNX

pytestmark = pytest.mark.image

RESTRICTED = ("--read-only", "--user", "65532:65532", "--tmpfs", "/tmp", "--network", "host")
"""How pods run the image (runtime contract): non-root, read-only root, /tmp the only scratch."""

# ggml's x86-64 CPU variants (GGML_CPU_ALL_VARIANTS in ggml/src/CMakeLists.txt) and the
# /proc/cpuinfo flags each needs.
CPU_VARIANTS: dict[str, set[str]] = {
    "x64": set(),
    "sse42": {"sse4_2"},
    "sandybridge": {"sse4_2", "avx"},
    "ivybridge": {"sse4_2", "avx", "f16c"},
    "piledriver": {"sse4_2", "avx", "f16c", "fma"},
    "haswell": {"sse4_2", "avx", "f16c", "fma", "avx2", "bmi2"},
    "skylakex": {"sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f"},
    "cannonlake": {"sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f", "avx512vbmi"},
    "cascadelake": {"sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f", "avx512_vnni"},
    "icelake": {
        *{"sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f"},
        *{"avx512vbmi", "avx512_vnni"},
    },
    "cooperlake": {
        *{"sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f"},
        *{"avx512_vnni", "avx512_bf16"},
    },
    "zen4": {
        *{"sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f"},
        *{"avx512vbmi", "avx512_vnni", "avx512_bf16"},
    },
    "alderlake": {"sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx_vnni"},
    "sapphirerapids": {
        *{"sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f"},
        *{"avx512vbmi", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"},
    },
}


def cpu_flags() -> set[str]:
    """This machine's CPU flags."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    raise AssertionError("no flags line in /proc/cpuinfo")


class Container:
    """A detached container, removed afterwards."""

    def __init__(self, docker: Docker, name: str) -> None:
        self.docker = docker
        self.name = name

    def logs(self) -> str:
        """What the container printed."""
        proc = subprocess.run(
            [self.docker.binary, "logs", self.name], capture_output=True, text=True, check=False
        )
        return proc.stdout + proc.stderr

    def running(self) -> bool:
        """Whether the container still runs."""
        state = self.docker.run("inspect", "--format", "{{.State.Running}}", self.name)
        return state.strip() == "true"


@pytest.fixture
def container(docker: Docker) -> Iterator[Callable[..., Container]]:
    """Start detached containers for one test; each is removed afterwards."""
    names: list[str] = []

    def start(image: str, *args: str, run: tuple[str, ...] = ()) -> Container:
        name = f"slm-test-{time.monotonic_ns()}"
        docker.run("run", "-d", "--name", name, *RESTRICTED, *run, image, *args)
        names.append(name)
        return Container(docker, name)

    yield start
    for name in names:
        docker.run("rm", "-f", name, check=False)


def serve(
    start: Callable[..., Container],
    image: str,
    tmp_path: Path,
    model: Path,
    config: dict[str, Any],
) -> tuple[Container, str]:
    """The image serving ``model`` (mounted read-only at ``config["modelPath"]``) on a free
    loopback port, once /readyz answers 200."""
    port = free_port()
    config_path = tmp_path / f"config-{port}.yaml"
    config_path.write_text(yaml.safe_dump({**config, "host": "127.0.0.1", "port": port}))
    config_path.chmod(0o644)
    box = start(
        image,
        *("slm-runtime", "serve", "--config", "/etc/slm/config.yaml"),
        run=(
            *("-v", f"{model.resolve()}:{config['modelPath']}:ro"),
            *("-v", f"{config_path}:/etc/slm/config.yaml:ro"),
        ),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if not box.running():
            pytest.fail(f"the runtime container exited:\n{box.logs()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return box, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the runtime container never became ready:\n{box.logs()}")
        time.sleep(0.2)


def serve_gemma(
    start: Callable[..., Container], image: str, gguf: Path, tmp_path: Path
) -> tuple[Container, str]:
    """The image serving the Gemma GGUF with a chat template."""
    config = {
        "modelName": "gemma",
        "format": "gguf",
        "modelPath": "/models/gemma.gguf",
        "template": GEMMA_TEMPLATE,
        "parallel": 2,
        "parameters": {"contextLength": 1024, "numPredict": 16, "numThread": 2},
    }
    return serve(start, image, tmp_path, gguf, config)


def test_the_runtime_image_answers_both_apis_with_the_real_clients(
    container: Callable[..., Container], runtime_image: str, gemma_gguf: Path, tmp_path: Path
) -> None:
    _, url = serve_gemma(container, runtime_image, gemma_gguf, tmp_path)

    oai = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    completion = oai.completions.create(
        model="gemma", prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert completion.choices[0].text.strip()
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in oai.chat.completions.create(
            model="gemma",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
            temperature=0,
            stream=True,
        )
        if chunk.choices
    )
    assert streamed

    client = ollama.Client(host=url)
    generated = client.generate(
        model="gemma", prompt="One, two, three,", options={"num_predict": 8}
    )
    assert generated.response.strip()
    assert generated.eval_count
    assert [m.model for m in client.list().models] == ["gemma:latest"]


def test_the_runtime_image_loads_the_best_cpu_backend_this_cpu_supports(
    container: Callable[..., Container], runtime_image: str, gemma_gguf: Path, tmp_path: Path
) -> None:
    """llama.cpp is built for any x86-64 CPU and picks its variant when it starts."""
    _, url = serve_gemma(container, runtime_image, gemma_gguf, tmp_path)
    ready = httpx.get(f"{url}/readyz", timeout=5).json()
    assert ready["device"] == "cpu"
    variant = ready["cpuBackend"]
    assert variant in CPU_VARIANTS, f"{variant!r} is not one of ggml's CPU variants"
    flags = cpu_flags()
    assert CPU_VARIANTS[variant] <= flags, f"{variant} needs {CPU_VARIANTS[variant] - flags}"
    better = [
        name
        for name, needs in CPU_VARIANTS.items()
        if needs <= flags and needs > CPU_VARIANTS[variant]
    ]
    assert not better, f"{variant} was loaded although this CPU supports {better}"


def test_the_runtime_image_llama_cpp_has_no_llamafile(docker: Docker, runtime_image: str) -> None:
    """Its greedy answers do not depend on a prompt-cache hit or a busy batch."""
    probe = (
        "from pathlib import Path; import llama_cpp; "
        "from slm_runtime.engines.ggml import has_llamafile, load_cpu_backend; "
        "lib = Path(llama_cpp.__file__).parent / 'lib'; "
        "print(int(has_llamafile(lib, load_cpu_backend(lib))))"
    )
    out = docker.run("run", "--rm", *RESTRICTED, runtime_image, "python3", "-c", probe)
    assert out.strip() == "0"


OPENVINO_PROBE = """
import asyncio
from slm_runtime.config import Device
from slm_runtime.engines import openvino
from slm_runtime.engines.base import Finished, SamplingParams
from slm_runtime.engines.onnx import OnnxGenaiEngine

engine = OnnxGenaiEngine("/models/tiny", Device.NPU, context_length=None, threads=1,
                         openvino_device="CPU")

async def run():
    generation = engine.generate("hello", SamplingParams(max_tokens=4, temperature=0.0),
                                 asyncio.get_running_loop())
    return [event async for event in generation.events()]

finished = asyncio.run(run())[-1]
assert isinstance(finished, Finished) and finished.completion_tokens > 0, finished
print(",".join(openvino.available_devices()))
"""


def test_the_runtime_image_runs_onnx_on_openvino_and_names_why_its_npu_try_failed(
    docker: Docker,
    container: Callable[..., Container],
    runtime_image: str,
    tmp_path: Path,
) -> None:
    """The npu device's path (ONNX Runtime's OpenVINO provider, OpenVINO's NPU plugin) is in
    the image and generates, with OpenVINO's CPU device standing in for the NPU this machine
    lacks; served with devices [npu, cpu], the model falls back to the CPU and says why."""
    out = docker.run(
        "run", "--rm", *RESTRICTED, "-v", f"{TINY_ONNX}:/models/tiny:ro",
        runtime_image, "python3", "-c", OPENVINO_PROBE,
    )  # fmt: skip
    assert out.strip().splitlines()[-1] == "CPU"
    plugin = docker.run(
        "run", "--rm", *RESTRICTED, runtime_image, "python3", "-c",
        "import importlib.util, pathlib; "
        "spec = importlib.util.find_spec('onnxruntime'); "
        "capi = pathlib.Path(next(iter(spec.submodule_search_locations))) / 'capi'; "
        "print((capi / 'libopenvino_intel_npu_plugin.so').is_file())",
    )  # fmt: skip
    assert plugin.strip() == "True"
    config = {
        "modelName": "tiny",
        "format": "onnx",
        "modelPath": "/models/tiny",
        "devices": ["npu", "cpu"],
        "parameters": {"numPredict": 4, "temperature": 0},
    }
    _, url = serve(container, runtime_image, tmp_path, TINY_ONNX, config)
    ready = httpx.get(f"{url}/readyz", timeout=5).json()
    assert ready["engine"] == "onnxruntime-genai"
    assert ready["device"] == "cpu"
    assert ready["fallback"]["npu"] == "OpenVINO finds no NPU device on this node (it finds: CPU)"
    reply = httpx.post(
        f"{url}/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False}, timeout=60
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["eval_count"] > 0


def test_the_runtime_image_is_non_root_and_writes_only_tmp(
    docker: Docker, runtime_image: str
) -> None:
    config = docker.inspect(runtime_image)["Config"]
    assert config["User"] == "65532:65532"
    script = "id -u; touch /tmp/ok && echo tmp-ok; touch /opt/slm/x 2>&1 || echo root-read-only"
    out = docker.run("run", "--rm", *RESTRICTED, runtime_image, "sh", "-c", script)
    assert out.split()[:2] == ["65532", "tmp-ok"]
    assert "root-read-only" in out


def test_the_runtime_image_carries_its_labels_and_no_build_secret(
    docker: Docker, runtime_image: str
) -> None:
    labels = docker.inspect(runtime_image)["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == image_names()["SLM_VERSION"]
    assert labels["org.opencontainers.image.source"].startswith("https://")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    revision = labels["org.opencontainers.image.revision"].removesuffix("-dirty")
    assert revision == head, "the image was built from another commit: run make images"
    # The build host's CA bundle reaches pip as a build secret only: it is in no layer.
    out = docker.run("run", "--rm", runtime_image, "sh", "-c", "ls /run/secrets 2>&1 || true")
    assert "No such file" in out


def test_slm_runtime_pull_in_the_image_fills_a_volume_from_nginx(
    docker: Docker, runtime_image: str, nginx: Nginx, gemma_gguf: Path, tmp_path: Path
) -> None:
    digest = hashlib.sha256(gemma_gguf.read_bytes()).hexdigest()
    volume = tmp_path / "models"
    volume.mkdir()
    volume.chmod(0o777)
    termination = tmp_path / "termination-log"
    termination.touch()
    termination.chmod(0o666)
    docker.run(
        "run", "--rm", *RESTRICTED,
        *("-v", f"{volume}:/models", "-v", f"{termination}:/dev/termination-log"),
        runtime_image,
        *("slm-runtime", "pull", "--source", nginx.url("gemma.gguf"), "--dest", "/models"),
        *("--sha256", digest, "--allow-insecure"),
    )  # fmt: skip
    result = json.loads(termination.read_text())
    assert result["digest"] == f"sha256:{digest}"
    assert result["sizeBytes"] == gemma_gguf.stat().st_size
    pulled = [p for p in volume.iterdir() if p.suffix == ".gguf"]
    assert len(pulled) == 1
    assert hashlib.sha256(pulled[0].read_bytes()).hexdigest() == digest
    assert json.loads((volume / ".slm-model.json").read_text())["digest"] == f"sha256:{digest}"
