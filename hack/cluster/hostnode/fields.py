"""Downward API field paths (env fieldRef and downwardAPI volumes)."""

from __future__ import annotations

import re
from typing import Any

from .objects import ConfigError
from .quantity import divide_up

Obj = dict[str, Any]
_INDEXED = re.compile(r"metadata\.(labels|annotations)\['(.+)'\]")


def field(pod: Obj, path: str) -> str:
    """The value of a fieldRef fieldPath on this pod."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": status.get("podIP"),
        "status.hostIPs": status.get("hostIP"),
    }
    if path in simple:
        return str(simple[path] or "")
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    m = _INDEXED.fullmatch(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise ConfigError(f"fieldPath {path!r} is not supported")


def resource(pod: Obj, container_name: str, ref: Obj, node_allocatable: Obj) -> str:
    """The value of a resourceFieldRef: the limit (or the node's allocatable) or request."""
    name = ref.get("containerName") or container_name
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    if name not in containers:
        raise ConfigError(f"resourceFieldRef names unknown container {name!r}")
    kind, _, res = ref["resource"].partition(".")
    resources = containers[name].get("resources") or {}
    value = (resources.get(kind) or {}).get(res)
    if value is None and kind == "limits":
        value = node_allocatable.get(res)
    if value is None:
        value = "0"
    return divide_up(str(value), ref.get("divisor"))
