"""The operator's view of the cluster: one locked store of LocalModels, nodes and children.

The watches write it (kopf's handlers for LocalModels, nodes and CRDs; the operator's own watches,
watches.py, for children and their pods); reconcile workers read it. Every read takes a copy under
the one lock, so no worker thread iterates a dict that the event loop is changing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from slm_operator.controller.apply import APPLIED_HASH_ANNOTATION
from slm_operator.controller.kube import Object
from slm_operator.kinds import CHILD_KINDS, POD, Kind
from slm_operator.summary import NodeInfo

Key = tuple[str, str]
"""A LocalModel: (namespace, name)."""
Ident = tuple[str, str, str]
"""A child within its namespace: (apiVersion, kind, name)."""


def ident(obj: Mapping[str, Any]) -> Ident:
    """(apiVersion, kind, name) of an object."""
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])


def pack(body: Mapping[str, Any], *, keep_spec: bool = True) -> bytes:
    """An object as the caches keep it: compact JSON, without ``managedFields`` (often half of
    an object, and never read), and for Pods without ``spec`` (status and metadata say it all).

    Bytes take a fraction of the memory of the same object as Python dicts; a reconcile
    unpacks only the few objects of its own model.
    """
    obj = {k: v for k, v in _without_managed_fields(body).items() if keep_spec or k != "spec"}
    return json.dumps(obj, separators=(",", ":")).encode()


def _without_managed_fields(obj: Mapping[str, Any]) -> Object:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


def _unpack(value: Any) -> Any:
    return json.loads(value) if isinstance(value, bytes) else value


class Caches:
    """What the watches saw, under one lock: LocalModels, nodes and the optional CRDs (written by
    kopf's handlers, handlers.py), children and their pods (written by the operator's own
    watches, watches.py).

    LocalModels: (namespace, name) -> packed body. Nodes: name -> NodeInfo. Children: one store
    per kind, (namespace, instance) -> uid -> packed body. A child is stored by its event before
    the model is queued, so a worker never reads a child older than the event that queued it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[Key, bytes] = {}
        self._nodes: dict[str, NodeInfo] = {}
        self._crds: set[str] = set()
        self._uids: dict[tuple[str, Any], str] = {}
        """The uid of what each LocalModel, node and CRD entry holds: a deletion removes an entry
        only while it still holds the deleted object, not one created since under its name
        (kopf handles each object's events apart, so the new one's may come first)."""
        self._children: dict[str, dict[Key, dict[str, bytes]]] = {
            kind.plural: {} for kind in (*CHILD_KINDS, POD)
        }
        self._recent: dict[Key, dict[Ident, Object]] = {}
        self._recent_lock = threading.Lock()
        self.listed = threading.Event()
        """Set once kopf has listed LocalModels, nodes and CRDs."""

    def put_model(self, key: Key, body: Mapping[str, Any]) -> None:
        """Keep a LocalModel as its event has it."""
        packed = pack(body)
        with self._lock:
            self._models[key] = packed
            self._uids[("model", key)] = _uid(body)

    def put_node(self, body: Mapping[str, Any], node: NodeInfo) -> None:
        """Keep a node as placement sees it."""
        with self._lock:
            self._nodes[node.name] = node
            self._uids[("node", node.name)] = _uid(body)

    def put_crd(self, body: Mapping[str, Any]) -> None:
        """Note that an optional CRD is installed."""
        name = str(body.get("metadata", {}).get("name", ""))
        with self._lock:
            self._crds.add(name)
            self._uids[("crd", name)] = _uid(body)

    def drop_node(self, body: Mapping[str, Any]) -> None:
        """A node was deleted."""
        name = str(body.get("metadata", {}).get("name", ""))
        with self._lock:
            if self._holds(("node", name), body):
                self._nodes.pop(name, None)

    def drop_crd(self, body: Mapping[str, Any]) -> bool:
        """An optional CRD was deleted; False when a newer one of that name is installed."""
        name = str(body.get("metadata", {}).get("name", ""))
        with self._lock:
            if not self._holds(("crd", name), body):
                return False
            self._crds.discard(name)
            return True

    def _holds(self, entry: tuple[str, Any], body: Mapping[str, Any]) -> bool:
        """Whether the entry holds the object ``body`` (lock held); forgets its uid if so."""
        stored, uid = self._uids.get(entry, ""), _uid(body)
        if stored and uid and stored != uid:
            return False
        self._uids.pop(entry, None)
        return True

    def observe(self, kind: Kind, key: Key, obj: Mapping[str, Any], *, deleted: bool) -> None:
        """Cache a child from its watch event (watches.py)."""
        meta = obj.get("metadata", {})
        uid = str(meta.get("uid", ""))
        packed = None if deleted else pack(obj, keep_spec=kind != POD)
        if deleted:
            # An apply answer must not bring back a child that is gone.
            name = str(meta.get("name", ""))
            with self._recent_lock:
                self._recent.get(key, {}).pop((kind.api_version, kind.kind, name), None)
        with self._lock:
            store = self._children[kind.plural]
            if packed is None:
                store.get(key, {}).pop(uid, None)
                if not store.get(key, True):
                    del store[key]
            else:
                store.setdefault(key, {})[uid] = packed

    def replace_kind(
        self, kind: Kind, namespace: str | None, objects: Mapping[Key, Iterable[Object]]
    ) -> set[Key]:
        """Replace every cached object of a kind in ``namespace`` (every namespace when None) by
        a fresh listing; the keys whose objects changed."""
        fresh = {
            key: {
                str(o.get("metadata", {}).get("uid", "")): pack(o, keep_spec=kind != POD)
                for o in objs
            }
            for key, objs in objects.items()
        }
        with self._lock:
            store = self._children[kind.plural]
            mine = [k for k in store if namespace is None or k[0] == namespace]
            changed = {k for k in mine if store[k] != fresh.get(k)}
            changed |= {k for k in fresh if store.get(k) != fresh[k]}
            for k in mine:
                del store[k]
            store.update({k: v for k, v in fresh.items() if v})
        return changed

    def drop_kind(self, kind: Kind) -> None:
        """Forget every cached object of a kind (an optional kind whose CRD is gone)."""
        self.replace_kind(kind, None, {})

    def model(self, key: Key) -> Object | None:
        """The LocalModel body as last seen."""
        with self._lock:
            packed = self._models.get(key)
        return None if packed is None else _unpack(packed)

    def model_keys(self) -> list[Key]:
        """Every known LocalModel."""
        with self._lock:
            return list(self._models)

    def children_of(self, key: Key) -> list[Object]:
        """Every child of a LocalModel (pods included), as last seen."""
        with self._lock:
            packed = [v for kind in (*CHILD_KINDS, POD) for v in self._of(kind, key)]
        return [_unpack(v) for v in packed]

    def _of(self, kind: Kind, key: Key) -> list[bytes]:
        return list(self._children[kind.plural].get(key, {}).values())

    def children_now(self, key: Key) -> list[Object]:
        """Every child of a LocalModel (pods included) as the API server has it: the watch's
        copy, or the answer of an apply the watch has not delivered yet."""
        found = {ident(c): c for c in self.children_of(key)}
        with self._recent_lock:
            recent = self._recent.get(key, {})
            for wanted, answer in list(recent.items()):
                cached = found.get(wanted)
                if cached is not None and _hash(cached) == _hash(answer):
                    del recent[wanted]  # the watch caught up
                else:
                    found[wanted] = answer
            if not recent:
                self._recent.pop(key, None)
        return list(found.values())

    def nodes(self) -> list[NodeInfo]:
        """Placement's view of every node."""
        with self._lock:
            return list(self._nodes.values())

    def crd_installed(self, name: str) -> bool:
        """Whether a CRD of that name exists."""
        with self._lock:
            return name in self._crds

    # Applies reach the watch a moment later; until then the apply's answer is the live object.

    def remember(self, key: Key, obj: Object) -> None:
        """Record what an apply returned."""
        with self._recent_lock:
            self._recent.setdefault(key, {})[ident(obj)] = _without_managed_fields(obj)

    def own_write(self, key: Key, obj: Mapping[str, Any]) -> bool:
        """Whether a watch event only echoes one of the operator's own applies (the version
        its answer had): the reconcile that wrote it has taken it into account already."""
        version = (obj.get("metadata") or {}).get("resourceVersion")
        with self._recent_lock:
            recent = self._recent.get(key, {}).get(ident(obj))
        return recent is not None and recent["metadata"].get("resourceVersion") == version

    def live(self, key: Key, kind: Kind, name: str) -> Object | None:
        """The child as the API server has it: the watch's copy, or a fresher apply answer."""
        wanted = (kind.api_version, kind.kind, name)
        with self._lock:
            packed = self._of(kind, key)
        cached: Object | None = next((c for c in map(_unpack, packed) if ident(c) == wanted), None)
        with self._recent_lock:
            recent = self._recent.get(key, {}).get(wanted)
            if recent is None:
                return cached
            if cached is not None and _hash(cached) == _hash(recent):
                del self._recent[key][wanted]
                return cached
            return recent

    def forget(self, key: Key, body: Mapping[str, Any]) -> bool:
        """Drop a deleted LocalModel and the apply answers for its children; False (and nothing
        dropped) when a LocalModel created since holds its name."""
        with self._lock:
            if not self._holds(("model", key), body):
                return False
            self._models.pop(key, None)
        with self._recent_lock:
            self._recent.pop(key, None)
        return True


def _hash(obj: Mapping[str, Any]) -> str | None:
    annotations = obj.get("metadata", {}).get("annotations") or {}
    value = annotations.get(APPLIED_HASH_ANNOTATION)
    return str(value) if value is not None else None


def _uid(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("uid", ""))
