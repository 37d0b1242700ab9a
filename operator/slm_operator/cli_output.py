"""How slmctl shows LocalModels: YAML and JSON, the list table, describe."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml
from slm_runtime.config import Device


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (templates, system prompts) as YAML literal blocks."""


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def dump(obj: Any, output: str) -> str:
    """An object as YAML (block strings kept readable) or indented JSON."""
    if output == "json":
        return json.dumps(obj, indent=2) + "\n"
    return yaml.dump(
        obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def _age(timestamp: str | None, now: datetime | None = None) -> str:
    """kubectl-style age: 45s, 12m, 3h, 5d."""
    if not timestamp:
        return "<unknown>"
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size or (unit == "m" and seconds >= size):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Columns padded like kubectl's: three spaces between, no trailing space."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines) + "\n"


def _phase(obj: Mapping[str, Any]) -> str:
    st = obj.get("status") or {}
    phase = str(st.get("phase") or "Pending")
    progress = (st.get("model") or {}).get("progress")
    return f"{phase} ({progress})" if phase == "Pulling" and progress else phase


def list_table(items: Sequence[Mapping[str, Any]], all_namespaces: bool) -> str:
    """The ``slmctl ls`` table: the columns of ``kubectl get lm``, pull progress with the phase."""
    header = ["NAME", "MODEL", "BACKEND", "READY", "PHASE", "AGE"]
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    rows = [header]
    for obj in items:
        meta, spec, st = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
        row = [
            meta["name"],
            model_name(spec.get("model") or {}),
            str(st.get("backend") or "<none>"),
            f"{st.get('readyReplicas', 0)}/{(spec.get('serving') or {}).get('replicas', 1)}",
            _phase(obj),
            _age(meta.get("creationTimestamp")),
        ]
        if all_namespaces:
            row.insert(0, meta.get("namespace", ""))
        rows.append(row)
    return table(rows)


def model_name(model: Mapping[str, Any]) -> str:
    """What the MODEL column shows: the source, else the alias, else the variants' names."""
    if model.get("source"):
        return str(model["source"])
    if model.get("alias"):
        return str(model["alias"])
    return ",".join(str(v.get("name", "")) for v in model.get("variants") or [])


def describe(obj: Mapping[str, Any]) -> str:
    """The ``slmctl status`` text: phase, backend, fallback, model and pull progress, conditions."""
    meta, spec, st = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    model, hardware = st.get("model") or {}, spec.get("hardware") or {}
    spec_model = spec.get("model") or {}
    fields = [
        ("Name", meta["name"]),
        ("Namespace", meta.get("namespace", "")),
        ("Phase", st.get("phase") or "Pending (not yet reconciled: is the operator running?)"),
    ]
    if spec_model.get("alias"):
        fields.append(("Alias", spec_model["alias"]))
    if model.get("variant"):
        fields.append(("Variant", model["variant"]))
    fields += [
        ("Source", spec_model.get("source") or model.get("source") or "<none>"),
        ("Backend", st.get("backend") or "<none>"),
        ("Preferred", hardware.get("preferred", Device.NPU.value)),
    ]
    if st.get("fallbackReason"):
        fields.append(("Fallback reason", st["fallbackReason"]))
    if model.get("progress"):
        fields.append(("Pull progress", model["progress"]))
    if model.get("digest"):
        fields.append(("Digest", model["digest"]))
    if model.get("sizeBytes") is not None:
        fields.append(("Size", f"{model['sizeBytes'] / 2**20:.1f} MiB"))
    wanted = (spec.get("serving") or {}).get("replicas", 1)
    fields.append(("Replicas", f"{st.get('readyReplicas', 0)}/{wanted} ready"))
    fields.append(("Endpoint", st.get("endpoint") or "<none>"))
    width = max(len(k) for k, _ in fields) + 2
    text = "".join(f"{k + ':':<{width}}{v}\n" for k, v in fields)
    if st.get("phase") == "Failed":
        text += f"{'Error:':<{width}}{_failure(st)}\n"
    conditions = st.get("conditions") or []
    if conditions:
        rows = [["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]]
        rows += [
            [
                c.get("type", ""),
                c.get("status", ""),
                c.get("reason", ""),
                _age(c.get("lastTransitionTime")),
                c.get("message", ""),
            ]
            for c in conditions
        ]
        text += "Conditions:\n" + "".join(f"  {line}\n" for line in table(rows).splitlines())
    return text


def _failure(st: Mapping[str, Any]) -> str:
    for kind in ("Ready", "ModelAvailable", "Degraded"):
        for cond in st.get("conditions") or []:
            if cond.get("type") == kind and cond.get("status") != "True" and cond.get("message"):
                return f"{cond.get('reason')}: {cond['message']}"
    return "see the conditions below"
