"""Reads of the API objects a pod refers to (ConfigMaps, Secrets, PVCs, tokens)."""

from __future__ import annotations

import base64
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

Obj = dict[str, Any]


class NotReadyError(Exception):
    """A pod cannot start yet (a missing object, an unbound claim); retried later."""


class ConfigError(Exception):
    """A pod can never start as written on host-0; the message says what to change."""


def to_dict(api: client.ApiClient, obj: object) -> Obj:
    """An API model object as the plain dict the API serves (camelCase keys)."""
    out: Obj = api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    return out


class Objects:
    """Fetches referenced objects through one API client, as plain dicts."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)

    def _get(self, fn: Any, *args: Any) -> Obj | None:
        try:
            obj = to_dict(self.api, fn(*args))
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return obj

    def data(self, kind: str, namespace: str, name: str, optional: bool) -> dict[str, bytes]:
        """The keys of a ConfigMap or Secret, decoded; {} when optional and missing."""
        if kind == "configMap":
            obj = self._get(self.core.read_namespaced_config_map, name, namespace)
        else:
            obj = self._get(self.core.read_namespaced_secret, name, namespace)
        if obj is None:
            if optional:
                return {}
            raise NotReadyError(f'{kind} "{name}" not found')
        out: dict[str, bytes] = {}
        if kind == "configMap":
            out.update({k: v.encode() for k, v in (obj.get("data") or {}).items()})
            out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        else:
            out.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
        return out

    def claim_path(self, namespace: str, claim: str) -> str:
        """The host folder behind a bound PersistentVolumeClaim (hostPath or local PV)."""
        pvc = self._get(self.core.read_namespaced_persistent_volume_claim, claim, namespace)
        if pvc is None:
            raise NotReadyError(f'persistentvolumeclaim "{claim}" not found')
        volume = (pvc.get("spec") or {}).get("volumeName")
        if (pvc.get("status") or {}).get("phase") != "Bound" or not volume:
            raise NotReadyError(f'persistentvolumeclaim "{claim}" is not bound')
        pv = self._get(self.core.read_persistent_volume, volume)
        if pv is None:
            raise NotReadyError(f'persistentvolume "{volume}" not found')
        spec = pv["spec"]
        source = spec.get("hostPath") or spec.get("local")
        if not source:
            raise ConfigError(
                f'persistentvolume "{volume}" is neither hostPath nor local: host-0 cannot mount it'
            )
        return str(source["path"])

    def token(self, namespace: str, sa: str, pod: Obj, source: Obj) -> str:
        """A bound service-account token for the pod (TokenRequest API)."""
        spec: Obj = {
            "expirationSeconds": source.get("expirationSeconds", 3607),
            "boundObjectRef": {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": pod["metadata"]["name"],
                "uid": pod["metadata"]["uid"],
            },
        }
        if source.get("audience"):
            spec["audiences"] = [source["audience"]]
        body: Any = {"spec": spec}
        result = self.core.create_namespaced_service_account_token(sa, namespace, body)
        if result.status is None:
            raise NotReadyError(f'no token issued for serviceaccount "{sa}"')
        return str(result.status.token)
