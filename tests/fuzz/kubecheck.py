"""The API server's checks that an OpenAPI schema cannot express, for rendered objects.

kubernetes-validate checks types and fields; the API server also rejects bad names, label and
annotation syntax, negative quantities, requests above limits and fractional or unequal
extended-resource requests (k8s.io/apimachinery validation and ValidateResourceRequirements).
Each function returns the problems it finds, as ``path: message`` lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

from slm_operator.fields import quantity_value

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
NAME_RULES = {
    "Service": (DNS1035_LABEL, 63),
    "Deployment": (DNS1123_SUBDOMAIN, 253),
    "Job": (DNS1123_SUBDOMAIN, 63),
}
"""Kinds whose names are stricter than a DNS-1123 subdomain (a Job's name becomes a label)."""
STANDARD_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage", "storage"})


def qualified_name_problems(key: str) -> list[str]:
    """A label or annotation key: ``[prefix/]name``, name <= 63, prefix a DNS subdomain."""
    prefix, slash, name = key.rpartition("/")
    problems = []
    if slash and not (prefix and len(prefix) <= 253 and DNS1123_SUBDOMAIN.fullmatch(prefix)):
        problems.append(f"key {key!r}: prefix must be a DNS-1123 subdomain")
    if not (name and len(name) <= 63 and QUALIFIED_NAME.fullmatch(name)):
        problems.append(f"key {key!r}: name must be a qualified name of at most 63 characters")
    return problems


def label_problems(labels: Mapping[str, Any], where: str) -> list[str]:
    """Label keys and values as the API server checks them."""
    problems = [f"{where}: {p}" for key in labels for p in qualified_name_problems(key)]
    for key, value in labels.items():
        if not (isinstance(value, str) and len(value) <= 63 and LABEL_VALUE.fullmatch(value)):
            problems.append(f"{where}: value {value!r} of {key!r} is not a valid label value")
    return problems


def annotation_problems(annotations: Mapping[str, Any], where: str) -> list[str]:
    """Annotation keys, and the 256 KiB limit on their total size."""
    problems = [f"{where}: {p}" for key in annotations for p in qualified_name_problems(key)]
    size = sum(len(k) + len(str(v)) for k, v in annotations.items())
    if size > 256 * 1024:
        problems.append(f"{where}: annotations total {size} bytes, more than 256 KiB")
    return problems


def quantity(text: Any) -> Decimal | None:
    """A quantity's value (the operator's one parser, ``api.quantity_value``), or None when it
    is not a quantity."""
    try:
        return quantity_value(str(text))
    except ValueError:
        return None


def resource_problems(resources: Mapping[str, Any], where: str) -> list[str]:
    """ValidateResourceRequirements: valid non-negative quantities, requests <= limits."""
    problems = []
    requests = resources.get("requests", {})
    limits = resources.get("limits", {})
    values: dict[str, dict[str, Decimal]] = {"requests": {}, "limits": {}}
    for kind, entries in (("requests", requests), ("limits", limits)):
        for name, text in entries.items():
            value = quantity(text)
            if value is None:
                problems.append(f"{where}.{kind}.{name}: {text!r} is not a quantity")
            elif value < 0:
                problems.append(f"{where}.{kind}.{name}: {text!r} is negative")
            elif name not in STANDARD_RESOURCES and value != value.to_integral_value():
                problems.append(f"{where}.{kind}.{name}: {text!r} must be a whole number")
            else:
                values[kind][name] = value
    for name, request in values["requests"].items():
        limit = values["limits"].get(name)
        if limit is not None and request > limit:
            problems.append(f"{where}.requests.{name}: {request} is above its limit {limit}")
        if name not in STANDARD_RESOURCES and limit != request:
            problems.append(f"{where}.{name}: an extended resource needs requests == limits")
    return problems


def _pod_spec_problems(spec: Mapping[str, Any], where: str) -> Iterator[str]:
    yield from label_problems(spec.get("nodeSelector", {}), f"{where}.nodeSelector")
    for index, volume in enumerate(spec.get("volumes", [])):
        limit = volume.get("emptyDir", {}).get("sizeLimit")
        if limit is not None and (quantity(limit) is None or quantity(limit) < 0):  # type: ignore[operator]
            yield f"{where}.volumes[{index}].emptyDir.sizeLimit: {limit!r} is not >= 0"
    names: set[str] = set()
    for group in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(group, [])):
            at = f"{where}.{group}[{index}]"
            if container["name"] in names:
                yield f"{at}.name: {container['name']!r} is used twice"
            names.add(container["name"])
            yield from resource_problems(container.get("resources", {}), f"{at}.resources")
            mounted = {v["name"] for v in spec.get("volumes", [])}
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in mounted:
                    yield f"{at}.volumeMounts: {mount['name']!r} is not a volume of the pod"


def object_problems(obj: Mapping[str, Any]) -> list[str]:
    """Name, labels, annotations and pod-spec checks the API server makes on top of the schema."""
    kind = obj["kind"]
    meta = obj["metadata"]
    where = f"{kind}/{meta['name']}"
    problems: list[str] = []
    pattern, length = NAME_RULES.get(kind, (DNS1123_SUBDOMAIN, 253))
    if len(meta["name"]) > length or not pattern.fullmatch(meta["name"]):
        problems.append(f"{where}: metadata.name is not a valid {kind} name")
    problems += label_problems(meta.get("labels", {}), f"{where} metadata.labels")
    problems += annotation_problems(meta.get("annotations", {}), f"{where} metadata.annotations")
    spec = obj.get("spec", {})
    template = spec.get("template")
    if kind in ("Deployment", "Job") and template:
        tmeta = template.get("metadata", {})
        problems += label_problems(tmeta.get("labels", {}), f"{where} template labels")
        problems += annotation_problems(tmeta.get("annotations", {}), f"{where} annotations")
        problems += list(_pod_spec_problems(template["spec"], f"{where} pod"))
        selector = spec.get("selector", {}).get("matchLabels", {})
        if any(tmeta.get("labels", {}).get(k) != v for k, v in selector.items()):
            problems.append(f"{where}: the selector does not match the template's labels")
    if kind == "PersistentVolumeClaim":
        storage = quantity(spec["resources"]["requests"]["storage"])
        if storage is None or storage <= 0:
            problems.append(f"{where}: storage request must be greater than zero")
    if kind == "ConfigMap":
        size = sum(len(v.encode()) for v in obj.get("data", {}).values())
        if size > 1024 * 1024:
            problems.append(f"{where}: data is {size} bytes, more than 1 MiB")
    if kind == "HorizontalPodAutoscaler" and spec["minReplicas"] > spec["maxReplicas"]:
        problems.append(f"{where}: minReplicas is above maxReplicas")
    return problems
