"""The test cluster's volume provisioner: a hostPath folder per claim, writable by any pod user.

The StorageClass ``standard`` names this provisioner. For each pending claim of that class it
creates ``ROOT/<namespace>-<claim>-<uid>`` (mode 0777, as kind's local-path provisioner does:
hostPath volumes get no fsGroup ownership from the kubelet, so pods running as non-root must
be able to write there) and a PersistentVolume bound to the claim. A released volume of its own
with reclaim policy Delete loses its folder (only a folder directly under ROOT), then its
PersistentVolume. ROOT lies in the cluster's state folder, which only root may enter.

    python provisioner.py --kubeconfig PATH --root STATE/volumes
"""

from __future__ import annotations

import argparse
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

NAME = "slm.dev/test-hostpath"
STORAGE_CLASS = "standard"

log = logging.getLogger("provisioner")


class Provisioner:
    """Claims in, volumes out; released volumes removed."""

    def __init__(self, api: client.CoreV1Api, root: Path) -> None:
        self.api = api
        self.root = root

    def claim(self, pvc: Any) -> None:
        """Provision a volume for a pending claim of our class."""
        spec, meta = pvc.spec, pvc.metadata
        if pvc.status.phase != "Pending" or spec.volume_name or meta.deletion_timestamp:
            return
        annotations = meta.annotations or {}
        wanted = annotations.get("volume.kubernetes.io/storage-provisioner") or annotations.get(
            "volume.beta.kubernetes.io/storage-provisioner"
        )
        if wanted != NAME:
            return
        name = f"pvc-{meta.uid}"
        path = self.root / f"{meta.namespace}-{meta.name}-{meta.uid}"
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        volume = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": NAME}},
            "spec": {
                "capacity": {"storage": spec.resources.requests["storage"]},
                "accessModes": spec.access_modes,
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": spec.storage_class_name,
                "volumeMode": spec.volume_mode or "Filesystem",
                "hostPath": {"path": str(path), "type": "Directory"},
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": meta.namespace,
                    "name": meta.name,
                    "uid": meta.uid,
                },
            },
        }
        try:
            self.api.create_persistent_volume(volume)
        except ApiException as e:
            if e.status != 409:  # already provisioned
                raise
            return
        log.info("provisioned %s for %s/%s at %s", name, meta.namespace, meta.name, path)

    def volume(self, pv: Any) -> None:
        """Delete a released volume of ours: its folder, then the object."""
        meta, spec = pv.metadata, pv.spec
        if (meta.annotations or {}).get("pv.kubernetes.io/provisioned-by") != NAME:
            return
        if pv.status.phase not in ("Released", "Failed"):
            return
        if spec.persistent_volume_reclaim_policy != "Delete":
            return
        path = Path(spec.host_path.path if spec.host_path else "")
        if path.resolve().parent == self.root.resolve() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        try:
            self.api.delete_persistent_volume(meta.name)
        except ApiException as e:
            if e.status != 404:
                raise
        log.info("deleted %s and %s", meta.name, path)

    @staticmethod
    def each(handle: Any, item: Any) -> None:
        """One claim or volume; its failure is logged and does not stop the others."""
        try:
            handle(item)
        except Exception:
            log.exception("could not handle %s", item.metadata.name)

    def follow(self, list_call: Any, handle: Any) -> None:
        """List, then watch from the list's resourceVersion; again when the watch ends."""
        while True:
            try:
                listed = list_call()
                for item in listed.items:
                    self.each(handle, item)
                stream = watch.Watch().stream(
                    list_call,
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=300,
                )
                for event in stream:
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.each(handle, event["object"])
            except Exception:  # an expired watch, a restarting API server: list again
                log.exception("watch failed; listing again")
                threading.Event().wait(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--root", required=True, type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config.load_kube_config(config_file=args.kubeconfig)
    args.root.mkdir(mode=0o755, parents=True, exist_ok=True)
    provisioner = Provisioner(client.CoreV1Api(), args.root)
    api = provisioner.api
    threading.Thread(
        target=provisioner.follow,
        args=(api.list_persistent_volume_claim_for_all_namespaces, provisioner.claim),
        daemon=True,
    ).start()
    provisioner.follow(api.list_persistent_volume, provisioner.volume)


if __name__ == "__main__":
    main()
