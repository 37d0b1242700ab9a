"""The serving device: each ready runtime pod's /readyz read once, in the background."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from slm_operator.controller.readiness import DeviceReader, readyz_url
from slm_operator.summary import RuntimeDevice
from slm_runtime.config import Device

pytestmark = pytest.mark.unit

KEY = ("ai", "gemma")


class Readyz(http.server.BaseHTTPRequestHandler):
    """Answers /readyz as a runtime that fell back from the NPU to the CPU; counts requests."""

    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        Readyz.asked.append(self.path)
        body = json.dumps(
            {"status": "ready", "device": "cpu", "fallback": {"npu": "no OpenVINO"}}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def runtime_port() -> Iterator[int]:
    """A local HTTP server standing in for a runtime pod's health port."""
    Readyz.asked = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Readyz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def pod(name: str, *, ready: bool = True, restarts: int = 0, ip: str = "127.0.0.1") -> Any:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}"},
        "status": {
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": "runtime", "restartCount": restarts}],
        },
    }


class Queued:
    """The reconciler's queue: records each model queued, and lets a test wait for one."""

    def __init__(self) -> None:
        self.keys: list[tuple[tuple[str, str], str]] = []
        self.event = threading.Event()

    def __call__(self, key: tuple[str, str], cause: str) -> None:
        self.keys.append((key, cause))
        self.event.set()

    def wait(self) -> None:
        assert self.event.wait(10), "the model was not queued again"
        self.event.clear()


def test_a_ready_pod_is_asked_once_and_its_model_queued_again(runtime_port: int) -> None:
    queued = Queued()
    reader = DeviceReader(queued)
    try:
        assert reader.devices(KEY, [pod("a", ready=False)], runtime_port) == {}
        assert Readyz.asked == []  # not ready: not asked

        assert reader.devices(KEY, [pod("a")], runtime_port) == {}  # asked in the background
        queued.wait()
        assert queued.keys == [(KEY, "readyz")]
        expected = {"a": RuntimeDevice(Device.CPU, (("npu", "no OpenVINO"),))}
        for _ in range(3):  # at rest: answered from memory
            assert reader.devices(KEY, [pod("a")], runtime_port) == expected
        assert Readyz.asked == ["/readyz"]

        # A restarted runtime chooses its device again, so it is asked again.
        assert reader.devices(KEY, [pod("a", restarts=1)], runtime_port) == {}
        queued.wait()
        assert reader.devices(KEY, [pod("a", restarts=1)], runtime_port) == expected
        assert Readyz.asked == ["/readyz", "/readyz"]
    finally:
        reader.shutdown()


def test_a_pod_that_cannot_be_reached_is_not_asked_again() -> None:
    queued = Queued()
    asked: ClassVar[list[str]] = []
    done = threading.Event()

    def unreachable(url: str) -> RuntimeDevice | None:
        asked.append(url)
        done.set()
        return None

    reader = DeviceReader(queued, asker=unreachable)
    try:
        reader.devices(KEY, [pod("a", ip="10.9.8.7")], 8080)
        assert done.wait(10)
        reader.shutdown()  # the answer is recorded
        assert reader.devices(KEY, [pod("a", ip="10.9.8.7")], 8080) == {}
        assert asked == ["http://10.9.8.7:8080/readyz"]
        assert queued.keys == []  # nothing learnt, nothing to reconcile
    finally:
        reader.shutdown()


def test_readyz_url_brackets_ipv6() -> None:
    assert readyz_url("fd00::5", 8080) == "http://[fd00::5]:8080/readyz"
