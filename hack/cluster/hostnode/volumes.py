"""Pod volumes as host folders: ConfigMap/Secret keys as files, emptyDir, PVCs, hostPath, images."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fields import field, resource
from .images import image_volume
from .objects import ConfigError, NotReadyError, Objects

Obj = dict[str, Any]


@dataclass(frozen=True)
class Volume:
    """A volume ready to be bind-mounted: its host path and whether it is always read-only."""

    path: Path
    read_only: bool = False
    tmpfs: bool = False


def _write(dest: Path, files: dict[str, bytes], mode: int, gid: int | None) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        target = dest / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise ConfigError(f"volume item path {rel!r} must be relative and stay inside")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)
        if gid is not None:
            os.chown(target, -1, gid)


def _select(
    data: dict[str, bytes], items: list[Obj] | None, what: str, optional: bool
) -> dict[str, bytes]:
    if not items:
        return data
    out: dict[str, bytes] = {}
    for item in items:
        if item["key"] not in data:
            if optional:
                continue
            raise NotReadyError(f'{what}: key "{item["key"]}" not found')
        out[item["path"]] = data[item["key"]]
    return out


def _share(path: Path, gid: int | None) -> None:
    """Writable by the pod: world-writable like the kubelet's emptyDir, or owned by fsGroup."""
    if gid is None:
        path.chmod(0o777)
        return
    for p in [path, *path.rglob("*")]:
        os.chown(p, -1, gid)
        p.chmod(p.stat().st_mode | 0o060 | (0o2010 if p.is_dir() else 0))


class PodVolumes:
    """Materializes one pod's volumes under its folder."""

    def __init__(self, objects: Objects, pod: Obj, pod_dir: Path, allocatable: Obj) -> None:
        self.objects = objects
        self.pod = pod
        self.ns = pod["metadata"]["namespace"]
        self.dir = pod_dir / "volumes"
        self.allocatable = allocatable
        self.fs_group: int | None = (pod["spec"].get("securityContext") or {}).get("fsGroup")

    def prepare(self) -> dict[str, Volume]:
        """Create every volume; raise NotReadyError or ConfigError when one cannot be."""
        return {v["name"]: self._one(v) for v in self.pod["spec"].get("volumes") or []}

    def _one(self, v: Obj) -> Volume:
        name = v["name"]
        dest = self.dir / name
        if "emptyDir" in v:
            dest.mkdir(parents=True, exist_ok=True)
            _share(dest, self.fs_group)
            return Volume(dest)
        if "configMap" in v or "secret" in v:
            kind = "configMap" if "configMap" in v else "secret"
            src = v[kind]
            ref = src.get("name") or src.get("secretName")
            optional = bool(src.get("optional"))
            data = self.objects.data(kind, self.ns, ref, optional)
            selected = _select(data, src.get("items"), f'{kind} "{ref}"', optional)
            _write(dest, selected, src.get("defaultMode", 0o644), self.fs_group)
            return Volume(dest, read_only=True)
        if "persistentVolumeClaim" in v:
            src = v["persistentVolumeClaim"]
            path = Path(self.objects.claim_path(self.ns, src["claimName"]))
            path.mkdir(parents=True, exist_ok=True)
            _share(path, self.fs_group)
            return Volume(path, read_only=bool(src.get("readOnly")))
        if "hostPath" in v:
            src = v["hostPath"]
            path = Path(src["path"])
            if not path.exists():
                if src.get("type") != "DirectoryOrCreate":
                    raise NotReadyError(f'hostPath "{path}" does not exist')
                path.mkdir(parents=True)
            return Volume(path)
        if "projected" in v:
            files: dict[str, bytes] = {}
            for source in v["projected"].get("sources") or []:
                files.update(self._projected(source))
            _write(dest, files, v["projected"].get("defaultMode", 0o644), self.fs_group)
            return Volume(dest, read_only=True)
        if "downwardAPI" in v:
            items = self._downward(v["downwardAPI"].get("items") or [])
            _write(dest, items, v["downwardAPI"].get("defaultMode", 0o644), self.fs_group)
            return Volume(dest, read_only=True)
        if "image" in v:
            cache = self.dir.parents[2] / "images"
            return Volume(image_volume(v["image"]["reference"], cache), read_only=True)
        kinds = sorted(set(v) - {"name"})
        raise ConfigError(f"volume {name!r}: type {kinds} is not supported on host-0")

    def _projected(self, source: Obj) -> dict[str, bytes]:
        if "serviceAccountToken" in source:
            src = source["serviceAccountToken"]
            sa = self.pod["spec"].get("serviceAccountName") or "default"
            return {src["path"]: self.objects.token(self.ns, sa, self.pod, src).encode()}
        for kind in ("configMap", "secret"):
            if kind in source:
                src = source[kind]
                optional = bool(src.get("optional"))
                data = self.objects.data(kind, self.ns, src["name"], optional)
                return _select(data, src.get("items"), f'{kind} "{src["name"]}"', optional)
        if "downwardAPI" in source:
            return self._downward(source["downwardAPI"].get("items") or [])
        raise ConfigError(f"projected source {sorted(source)} is not supported on host-0")

    def _downward(self, items: list[Obj]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for item in items:
            if "fieldRef" in item:
                value = field(self.pod, item["fieldRef"]["fieldPath"])
            else:
                ref = item["resourceFieldRef"]
                value = resource(self.pod, ref.get("containerName", ""), ref, self.allocatable)
            out[item["path"]] = value.encode()
        return out
