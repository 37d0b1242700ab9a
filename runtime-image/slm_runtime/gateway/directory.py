"""The models the gateway serves, built from the cluster's LocalModels and the EndpointSlices of
their Services. Pure bookkeeping: the watches feed it objects as the API server sends them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, Final
from urllib.parse import urlsplit

from slm_runtime.config import PORT_NAME, parse_duration
from slm_runtime.gateway.core import Model

Obj = Mapping[str, Any]

SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
MODEL_SLICE_SELECTOR: Final = (
    "app.kubernetes.io/name=slm-runtime,app.kubernetes.io/component=model-server"
)
"""The labels the operator puts on a model's Service, which its EndpointSlices copy."""


class AmbiguousModelError(LookupError):
    """A bare model name that LocalModels in several namespaces carry."""

    def __init__(self, name: str, keys: Iterable[str]) -> None:
        self.keys = sorted(keys)
        super().__init__(
            f'model "{name}" exists in several namespaces; name it as one of '
            + ", ".join(f'"{k}"' for k in self.keys)
        )


def model_from(obj: Obj) -> Model:
    """A LocalModel object -> the gateway's view of it (without endpoints)."""
    meta, spec = obj["metadata"], obj.get("spec") or {}
    serving = spec.get("serving") or {}
    autoscaling = spec.get("autoscaling") or {}
    after = None
    if autoscaling.get("enabled") and autoscaling.get("minReplicas") == 0:
        after = parse_duration(str(autoscaling.get("scaleToZeroAfter", "15m")))
    status = obj.get("status") or {}
    served = status.get("model") or {}
    return Model(
        namespace=meta["namespace"],
        name=meta["name"],
        port=int(serving.get("port", 8080)),
        phase=str(status.get("phase", "")),
        digest=str(served.get("digest") or ""),
        size_bytes=int(served.get("sizeBytes") or 0),
        auth_secret=serving.get("authSecret"),
        scale_to_zero_after=after,
    )


def ready_endpoints(endpoint_slice: Obj) -> dict[str, str]:
    """Ready pods of one EndpointSlice: pod name -> base URL of the API port."""
    port = next(
        (p.get("port") for p in endpoint_slice.get("ports") or [] if p.get("name") == PORT_NAME),
        None,
    )
    if port is None:
        return {}
    found = {}
    for endpoint in endpoint_slice.get("endpoints") or []:
        conditions = endpoint.get("conditions") or {}
        if conditions.get("ready") is False or conditions.get("terminating") is True:
            continue
        addresses = endpoint.get("addresses") or []
        if not addresses:
            continue
        pod = (endpoint.get("targetRef") or {}).get("name") or addresses[0]
        host = f"[{addresses[0]}]" if ":" in addresses[0] else addresses[0]
        found[pod] = f"http://{host}:{port}"
    return found


class Directory:
    """LocalModels and their ready replicas, by ``namespace/name``; ``on_change`` runs after
    every change (the gateway wakes held requests with it)."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self._models: dict[str, Model] = {}
        self._slices: dict[str, str] = {}
        """``namespace/slice`` -> the key of the model whose Service it belongs to."""
        self._endpoints: dict[str, dict[str, dict[str, str]]] = {}
        """Model key -> ``namespace/slice`` -> that slice's ready endpoints."""
        self.on_change = on_change

    # --- feeding ------------------------------------------------------------------------------

    def sync_models(self, items: Iterable[Obj], namespace: str | None = None) -> None:
        """Replace every model (in ``namespace``, or all) with a fresh list."""
        self._models = {k: m for k, m in self._models.items() if not _in(k, namespace)}
        for obj in items:
            model = model_from(obj)
            self._models[model.key] = model
        self.on_change()

    def model_event(self, kind: str, obj: Obj) -> None:
        """A watch event (ADDED, MODIFIED, DELETED) of a LocalModel."""
        model = model_from(obj)
        if kind == "DELETED":
            self._models.pop(model.key, None)
        else:
            self._models[model.key] = model
        self.on_change()

    def sync_slices(self, items: Iterable[Obj], namespace: str | None = None) -> None:
        """Replace every EndpointSlice (in ``namespace``, or all) with a fresh list."""
        for key in [k for k in self._slices if _in(k, namespace)]:
            self._drop_slice(key)
        for obj in items:
            self._put_slice(obj)
        self.on_change()

    def slice_event(self, kind: str, obj: Obj) -> None:
        """A watch event of an EndpointSlice."""
        meta = obj["metadata"]
        if kind == "DELETED":
            self._drop_slice(f"{meta['namespace']}/{meta['name']}")
        else:
            self._put_slice(obj)
        self.on_change()

    def _put_slice(self, obj: Obj) -> None:
        meta = obj["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        self._drop_slice(key)
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if service:
            model = f"{meta['namespace']}/{service}"
            self._slices[key] = model
            self._endpoints.setdefault(model, {})[key] = ready_endpoints(obj)

    def _drop_slice(self, key: str) -> None:
        model = self._slices.pop(key, None)
        if model is not None:
            slices = self._endpoints[model]
            slices.pop(key, None)
            if not slices:
                del self._endpoints[model]

    # --- reading ------------------------------------------------------------------------------

    def get(self, key: str) -> Model | None:
        """One model with its ready endpoints, by ``namespace/name``."""
        model = self._models.get(key)
        if model is None:
            return None
        endpoints: dict[str, str] = {}
        for found in self._endpoints.get(key, {}).values():
            endpoints.update(found)
        return replace(model, endpoints=endpoints)

    def resolve(self, requested: str) -> Model | None:
        """The model a request names: ``name``, ``namespace/name``, either with ``:latest``.
        None when no LocalModel has that name; AmbiguousModelError when several do."""
        name = requested.removesuffix(":latest")
        if "/" in name:
            return self.get(name)
        keys = [k for k, m in self._models.items() if m.name == name]
        if len(keys) > 1:
            raise AmbiguousModelError(requested, keys)
        return self.get(keys[0]) if keys else None

    def models(self) -> list[Model]:
        """Every model, with endpoints, sorted by key."""
        return [m for k in sorted(self._models) if (m := self.get(k)) is not None]

    def public_name(self, model: Model) -> str:
        """The name a client uses: the bare name unless another namespace has it too."""
        clash = sum(1 for m in self._models.values() if m.name == model.name) > 1
        return model.key if clash else model.name


def static_objects(
    upstreams: Mapping[str, Iterable[str]], namespace: str = "default"
) -> tuple[list[Obj], list[Obj]]:
    """The LocalModels and EndpointSlices a cluster would send for models served at fixed
    URLs (``name -> [http://host:port, ...]``), Ready, without tokens or scale to zero."""
    models: list[Obj] = []
    slices: list[Obj] = []
    for name, urls in upstreams.items():
        meta = {"name": name, "namespace": namespace}
        models.append({"metadata": meta, "spec": {}, "status": {"phase": "Ready"}})
        for i, url in enumerate(urls):
            parsed = urlsplit(url)
            if parsed.scheme != "http" or not parsed.hostname or not parsed.port:
                raise ValueError(f"{url!r} is not http://HOST:PORT")
            slices.append(
                {
                    "metadata": {
                        "name": f"{name}-{i}",
                        "namespace": namespace,
                        "labels": {SERVICE_NAME_LABEL: name},
                    },
                    "ports": [{"name": PORT_NAME, "port": parsed.port}],
                    "endpoints": [
                        {
                            "addresses": [parsed.hostname],
                            "conditions": {"ready": True},
                            "targetRef": {"kind": "Pod", "name": f"{name}-{i}"},
                        }
                    ],
                }
            )
    return models, slices


def _in(key: str, namespace: str | None) -> bool:
    return namespace is None or key.startswith(f"{namespace}/")
