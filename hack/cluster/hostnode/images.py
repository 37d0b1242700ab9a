"""Image volumes (`volumes[].image`) from an OCI registry, as CRI-O mounts them.

The reference must be pinned by digest (host/repository@sha256:HEX). Image layers (tar,
optionally gzip) are unpacked; an artifact's layers land as files named by their
`org.opencontainers.image.title` annotation. Every blob is checked against its digest, and the
result is kept per manifest digest, so a second pod mounts the same folder (IfNotPresent).
Plain HTTP is used for loopback registries only, as they are in the test cluster.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
import threading
from pathlib import Path
from typing import Any

import httpx

from .objects import ConfigError, NotReadyError

log = logging.getLogger(__name__)

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
TITLE = "org.opencontainers.image.title"
_lock = threading.Lock()


def image_volume(reference: str, cache: Path) -> Path:
    """The folder holding the image's content; fetched and verified on first use."""
    name, sep, digest = reference.partition("@")
    if not sep or not digest.startswith("sha256:"):
        raise ConfigError(f'image volume "{reference}": host-0 needs a reference by digest')
    host, _, repository = name.partition("/")
    dest = cache / digest.removeprefix("sha256:")
    with _lock:
        if dest.is_dir():
            return dest
        scheme = "http" if host.split(":")[0] in {"127.0.0.1", "localhost"} else "https"
        base = f"{scheme}://{host}/v2/{repository}"
        staging = cache / f".{dest.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            with httpx.Client(timeout=60) as client:
                manifest = _manifest(client, base, digest)
                for layer in manifest.get("layers") or []:
                    _layer(client, base, layer, staging)
        except httpx.HTTPError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise NotReadyError(f'image volume "{reference}": {exc}') from exc
        except ValueError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise ConfigError(f'image volume "{reference}": {exc}') from exc
        staging.rename(dest)
        log.info("image volume %s ready at %s", reference, dest)
        return dest


def _manifest(client: httpx.Client, base: str, digest: str) -> dict[str, Any]:
    reply = client.get(f"{base}/manifests/{digest}", headers={"Accept": ",".join(MANIFEST_TYPES)})
    reply.raise_for_status()
    actual = "sha256:" + hashlib.sha256(reply.content).hexdigest()
    if actual != digest:
        raise ValueError(f"manifest arrived as {actual}")
    manifest: dict[str, Any] = reply.json()
    return manifest


def _layer(client: httpx.Client, base: str, layer: dict[str, Any], dest: Path) -> None:
    digest = layer["digest"]
    media_type = str(layer.get("mediaType", ""))
    hasher = hashlib.sha256()
    target = dest / ".blob"
    with client.stream("GET", f"{base}/blobs/{digest}", follow_redirects=True) as reply:
        reply.raise_for_status()
        with target.open("wb") as out:
            for chunk in reply.iter_bytes(1 << 20):
                hasher.update(chunk)
                out.write(chunk)
    if f"sha256:{hasher.hexdigest()}" != digest:
        raise ValueError(f"layer {digest} arrived as sha256:{hasher.hexdigest()}")
    if ".tar" in media_type or media_type.endswith("tar"):
        mode = "r:gz" if "gzip" in media_type else "r:"
        with tarfile.open(target, mode=mode) as tar:
            tar.extractall(dest, filter="data")
        target.unlink()
        return
    title = (layer.get("annotations") or {}).get(TITLE) or digest.replace(":", "-")
    if "/" in title or title.startswith("."):
        raise ValueError(f"layer title {title!r} is not a plain file name")
    target.rename(dest / title)
