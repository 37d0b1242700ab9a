"""A container's environment and argv, resolved as the kubelet does."""

from __future__ import annotations

import re
from typing import Any

from .fields import field, resource
from .objects import ConfigError, NotReadyError, Objects

Obj = dict[str, Any]
_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Expand $(VAR) from env; $$ is a literal $; unknown references stay as written."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REF.sub(sub, text)


def environment(
    objects: Objects, pod: Obj, container: Obj, base: dict[str, str], allocatable: Obj
) -> dict[str, str]:
    """The container's env: base, then envFrom, then env (later wins, $(VAR) expanded)."""
    ns = pod["metadata"]["namespace"]
    env = dict(base)
    for src in container.get("envFrom") or []:
        kind = "configMap" if "configMapRef" in src else "secret"
        ref = src.get("configMapRef") or src.get("secretRef")
        data = objects.data(kind, ns, ref["name"], bool(ref.get("optional")))
        prefix = src.get("prefix", "")
        env.update({prefix + k: v.decode() for k, v in data.items()})
    for var in container.get("env") or []:
        if "valueFrom" not in var:
            env[var["name"]] = expand(var.get("value", ""), env)
            continue
        vf = var["valueFrom"]
        if "fieldRef" in vf:
            env[var["name"]] = field(pod, vf["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in vf:
            ref = vf["resourceFieldRef"]
            env[var["name"]] = resource(pod, container["name"], ref, allocatable)
        elif "configMapKeyRef" in vf or "secretKeyRef" in vf:
            kind = "configMap" if "configMapKeyRef" in vf else "secret"
            ref = vf.get("configMapKeyRef") or vf.get("secretKeyRef")
            optional = bool(ref.get("optional"))
            data = objects.data(kind, ns, ref["name"], optional)
            if ref["key"] in data:
                env[var["name"]] = data[ref["key"]].decode()
            elif not optional:
                raise NotReadyError(f'{kind} "{ref["name"]}": key "{ref["key"]}" not found')
        else:
            raise ConfigError(f"env {var['name']}: valueFrom {sorted(vf)} is not supported")
    return env


def argv(container: Obj, env: dict[str, str]) -> list[str]:
    """command + args with $(VAR) expanded; host-0 has no images, so command is required."""
    if not container.get("command"):
        raise ConfigError(
            f"container {container['name']!r} has no command: host-0 never pulls images and "
            "runs the command on the host, so set spec.containers[].command"
        )
    return [expand(a, env) for a in [*container["command"], *(container.get("args") or [])]]
