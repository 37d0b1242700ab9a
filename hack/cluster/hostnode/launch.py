"""Container entry point: set up mounts and identity inside fresh namespaces, then exec.

Runs under `nsenter --net=... unshare --mount --uts --`, with the standard library only,
and execs the container's command in place so the agent's child pid is the container.
Usage: launch.py SPEC_JSON ERROR_FD. On failure before exec it writes the reason to
ERROR_FD and exits 127; a successful exec closes ERROR_FD (close-on-exec).
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import stat
import subprocess
import sys
from typing import Any

PR_SET_NO_NEW_PRIVS = 38


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise OSError(f"mount {' '.join(args)}: {result.stderr.strip()}")


def _bind(fd: int, target: str) -> None:
    # Bind from the open file: the source's path may be hidden by now.
    _mount("--no-canonicalize", "--bind", f"/proc/{os.getpid()}/fd/{fd}", target)
    os.close(fd)


def _hide(path: str, keep: list[str]) -> None:
    """Cover path with an empty tmpfs that shows only the folders in keep, read-only."""
    fds = [os.open(k, os.O_PATH) for k in keep]
    _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", path)
    for k, fd in zip(keep, fds, strict=True):
        os.makedirs(k, exist_ok=True)
        _bind(fd, k)
        _mount("-o", "remount,bind,ro", k)


def _setup(spec: dict[str, Any]) -> None:
    socket.sethostname(spec["hostname"])
    sources = {
        m["source"]: os.open(m["source"], os.O_PATH) for m in spec["mounts"] if m["kind"] == "bind"
    }
    dirs = {src for src, fd in sources.items() if stat.S_ISDIR(os.fstat(fd).st_mode)}
    restore = {p: os.open(p, os.O_PATH) for p in spec.get("restore", []) if os.path.isdir(p)}
    for hidden in spec["hide"]:
        _hide(hidden["path"], hidden["keep"])
    for m in spec["mounts"]:
        if not os.path.lexists(m["target"]):
            if m["source"] in dirs or m["kind"] == "tmpfs":
                os.makedirs(m["target"])
            else:
                os.makedirs(os.path.dirname(m["target"]), exist_ok=True)
                open(m["target"], "x").close()
        if m["kind"] == "tmpfs":
            _mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", m["target"])
        else:
            _bind(os.dup(sources[m["source"]]), m["target"])
        if m["readOnly"]:
            _mount("-o", "remount,bind,ro", m["target"])
    targets = [m["target"].rstrip("/") for m in spec["mounts"]]
    for path, fd in restore.items():
        if any(path == t or path.startswith(t + "/") for t in targets):
            os.makedirs(path, exist_ok=True)
            _bind(fd, path)
            _mount("-o", "remount,bind,ro", path)
        else:
            os.close(fd)
    if spec["readOnlyRoot"]:
        _mount("-o", "remount,bind,ro", "/")
    os.setgroups(spec["groups"])
    os.setgid(spec["gid"])
    os.setuid(spec["uid"])
    if spec["noNewPrivs"]:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    os.chdir(spec["workingDir"])


def main() -> None:
    """Set up the container from the spec file and exec its command."""
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    error_fd = int(sys.argv[2])
    os.set_inheritable(error_fd, False)
    argv: list[str] = spec["argv"]
    try:
        _setup(spec)
        os.execvpe(argv[0], argv, spec["env"])  # noqa: S606 (the container's command)
    except OSError as e:
        detail = e.strerror or str(e)
        if isinstance(e, FileNotFoundError) and "/" not in argv[0]:
            detail = f'exec: "{argv[0]}": executable file not found in $PATH'
        elif isinstance(e, FileNotFoundError | PermissionError):
            detail = f'exec: "{argv[0]}": {e.strerror}'
        os.write(error_fd, detail.encode())
        os._exit(127)


if __name__ == "__main__":
    main()
