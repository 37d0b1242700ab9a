"""Server-side apply of rendered children only when they differ; prune what is no longer rendered.

Every write is earned: a child is applied only when it is missing, when what we render changed
(its ``slm.dev/applied`` hash differs) or when someone changed a field we own (drift). A no-op
apply would still count as a write in the audit log, so it is never sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from slm_operator.controller.kube import Kube, Object
from slm_operator.kinds import CHILD_KINDS, JOB, PVC, Kind, kind_of
from slm_operator.sizing import parse_quantity

log = logging.getLogger(__name__)

APPLIED_HASH_ANNOTATION: Final = "slm.dev/applied"
"""Hash of the object as last rendered; a change means the operator has something new to say."""

CREATE_ONLY: Final = frozenset({(JOB.api_version, JOB.kind), (PVC.api_version, PVC.kind)})
"""Kinds whose spec is immutable once created; their names carry a hash of what they depend on."""

_QUANTITY_KEYS: Final = frozenset({"cpu", "memory", "storage", "ephemeral-storage"})


def rendered_hash(obj: Mapping[str, Any]) -> str:
    """A stable digest of a rendered object (without the hash annotation itself)."""
    canonical = json.dumps(_without_hash(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def with_hash(obj: Mapping[str, Any]) -> Object:
    """A copy of the object carrying its rendered hash as an annotation."""
    stamped = json.loads(json.dumps(obj))
    annotations = stamped["metadata"].setdefault("annotations", {})
    annotations[APPLIED_HASH_ANNOTATION] = rendered_hash(obj)
    return dict(stamped)


def _without_hash(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    if "annotations" not in obj.get("metadata", {}):
        return obj
    copy = json.loads(json.dumps(obj))
    annotations = copy["metadata"]["annotations"]
    annotations.pop(APPLIED_HASH_ANNOTATION, None)
    if not annotations:
        del copy["metadata"]["annotations"]
    return dict(copy)


def _same_scalar(key: str | None, want: Any, have: Any) -> bool:
    if want == have:
        return True
    if key in _QUANTITY_KEYS or (key or "").count(".") or (key or "").count("/"):
        # Resource quantities come back normalised ("1024Mi" -> "1Gi", 2 -> "2").
        try:
            return parse_quantity(str(want)) == parse_quantity(str(have))
        except ValueError:
            return False
    return False


def first_difference(want: Any, have: Any, path: str = "", key: str | None = None) -> str | None:
    """The path of the first field of ``want`` that ``have`` lacks or holds differently, or None.

    ``have`` is the live object, which also carries server defaults and other managers' fields.
    """
    if have is None and isinstance(want, Mapping | list) and not want:
        return None  # the API server omits empty lists and maps
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            return path or "."
        for k, v in want.items():
            found = first_difference(v, have.get(k), f"{path}.{k}", k)
            if found is not None:
                return found
        return None
    if isinstance(want, list):
        if not isinstance(have, list) or len(want) != len(have):
            return path
        for i, (w, h) in enumerate(zip(want, have, strict=True)):
            found = first_difference(w, h, f"{path}[{i}]", key)
            if found is not None:
                return found
        return None
    return None if _same_scalar(key, want, have) else path


def is_subset(want: Any, have: Any) -> bool:
    """True when every field of ``want`` is present with the same value in ``have``."""
    return first_difference(want, have) is None


def apply_reason(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> str | None:
    """Why the desired object (stamped by ``with_hash``) must be sent, or None when it need not."""
    if live is None:
        return "missing"
    if (kind_of(desired).api_version, kind_of(desired).kind) in CREATE_ONLY:
        return None
    live_hash = (live.get("metadata", {}).get("annotations") or {}).get(APPLIED_HASH_ANNOTATION)
    want_hash = desired["metadata"]["annotations"][APPLIED_HASH_ANNOTATION]
    if live_hash != want_hash:
        return "changed"
    drift = first_difference(_comparable(desired), live)
    return None if drift is None else f"drift at {drift}"


def needs_apply(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """Whether the desired object (stamped by ``with_hash``) must be sent to the API server."""
    return apply_reason(desired, live) is not None


def _comparable(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The parts of an object that drift detection compares (status is never ours)."""
    return {k: v for k, v in obj.items() if k not in ("status",)}


def key_of(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    """(apiVersion, kind, name) identifying a child within its namespace."""
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])


@dataclass
class ApplyResult:
    """What one apply pass did."""

    applied: list[tuple[str, str, str]] = field(default_factory=list)
    pruned: list[tuple[str, str, str]] = field(default_factory=list)
    live: dict[tuple[str, str, str], Object] = field(default_factory=dict)

    @property
    def wrote(self) -> bool:
        """Whether any write was sent."""
        return bool(self.applied or self.pruned)


LiveLookup = Callable[[Kind, str, str], Object | None]
"""(kind, namespace, name) -> the live object, from a watch cache or a GET."""


def apply_children(
    kube: Kube,
    desired: Sequence[Mapping[str, Any]],
    live_lookup: LiveLookup,
) -> ApplyResult:
    """Apply each desired object that is missing, changed or drifted, in order; each carries
    its rendered hash already (``with_hash``)."""
    result = ApplyResult()
    for stamped in desired:
        kind = kind_of(stamped)
        meta = stamped["metadata"]
        live = live_lookup(kind, meta["namespace"], meta["name"])
        reason = apply_reason(stamped, live)
        if reason is not None:
            if (kind.api_version, kind.kind) in CREATE_ONLY:
                live = kube.create(stamped) or kube.get(kind, meta["namespace"], meta["name"])
            else:
                live = kube.apply(stamped)
            result.applied.append(key_of(stamped))
            log.info("applied %s %s/%s (%s)", kind.kind, meta["namespace"], meta["name"], reason)
        if live is not None:
            result.live[key_of(stamped)] = live
    return result


def prune_children(
    kube: Kube,
    owner_uid: str,
    desired: Iterable[Mapping[str, Any]],
    existing: Iterable[Mapping[str, Any]],
    kinds: Sequence[Kind] = CHILD_KINDS,
) -> list[tuple[str, str, str]]:
    """Delete children owned by ``owner_uid`` that are no longer rendered."""
    wanted = {key_of(o) for o in desired}
    kind_keys = {(k.api_version, k.kind) for k in kinds}
    pruned = []
    for obj in existing:
        if (obj["apiVersion"], obj["kind"]) not in kind_keys or key_of(obj) in wanted:
            continue
        owners = obj.get("metadata", {}).get("ownerReferences") or []
        if not any(ref.get("uid") == owner_uid and ref.get("controller") for ref in owners):
            continue
        meta = obj["metadata"]
        if kube.delete(kind_of(obj), meta["namespace"], meta["name"]):
            pruned.append(key_of(obj))
            log.info("pruned %s %s/%s", obj["kind"], meta["namespace"], meta["name"])
    return pruned
