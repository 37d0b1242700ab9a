"""OCI distribution API client: manifests by tag or digest, blobs by digest, bearer/basic auth."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
_ACCEPT: Final = ", ".join((OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST))
_MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024
TITLE_ANNOTATION: Final = "org.opencontainers.image.title"
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
ENV_TOKEN_REALM_HOSTS: Final = "SLM_TOKEN_REALM_HOSTS"
"""Hosts, besides a registry's own, whose token service may receive the source credentials."""


class RegistryError(Exception):
    """The registry refused or answered something that is not a usable manifest."""


@dataclass(frozen=True)
class Credentials:
    """Source credentials: a token (bearer) or a username and password (basic)."""

    token: str | None = None
    username: str | None = None
    password: str | None = None

    def basic_header(self) -> str | None:
        """The ``Authorization: Basic`` value, when a username and password are set."""
        if self.username and self.password is not None:
            pair = f"{self.username}:{self.password}".encode()
            return "Basic " + base64.b64encode(pair).decode("ascii")
        return None

    def __repr__(self) -> str:
        return f"Credentials(token={'***' if self.token else None}, username={self.username!r})"


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor from a manifest."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str]

    @property
    def title(self) -> str | None:
        """The file name an artifact pusher recorded for this layer."""
        return self.annotations.get(TITLE_ANNOTATION)


@dataclass(frozen=True)
class Manifest:
    """An image or artifact manifest and the digest it was served under."""

    digest: str
    media_type: str
    layers: tuple[Descriptor, ...]
    artifact_type: str | None


class Registry:
    """One repository on an OCI distribution registry."""

    def __init__(
        self,
        client: httpx.Client,
        host: str,
        repository: str,
        credentials: Credentials,
        *,
        plain_http: bool = False,
        realm_hosts: frozenset[str] = frozenset(),
    ) -> None:
        self._client = client
        self._repository = repository
        self._host = host
        self._plain_http = plain_http
        self._realm_hosts = frozenset(h.lower() for h in realm_hosts)
        self._base = f"{'http' if plain_http else 'https'}://{host}/v2/{repository}"
        self._credentials = credentials
        # A token on its own is a registry bearer token, sent from the first request on.
        self._preissued = bool(credentials.token and not credentials.basic_header())
        self._auth_header = f"Bearer {credentials.token}" if self._preissued else None

    def blob_url(self, digest: str) -> str:
        """Where the blob with ``digest`` is served."""
        return f"{self._base}/blobs/{digest}"

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header the last challenge earned, for blob downloads."""
        return {"Authorization": self._auth_header} if self._auth_header else {}

    def manifest(self, reference: str) -> Manifest:
        """Fetch the manifest for a tag or digest; a digest reference is verified."""
        resp = self._get(f"{self._base}/manifests/{reference}", {"Accept": _ACCEPT})
        body = resp.content
        if len(body) > _MAX_MANIFEST_BYTES:
            raise RegistryError(f"manifest {reference} is larger than {_MAX_MANIFEST_BYTES} bytes")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"the registry served manifest {digest} when asked for {reference}")
        try:
            doc: dict[str, Any] = json.loads(body)
        except ValueError as err:
            raise RegistryError(f"manifest {reference} is not JSON: {err}") from err
        media_type = str(doc.get("mediaType") or resp.headers.get("content-type", ""))
        media_type = media_type.split(";", 1)[0].strip()
        if media_type in (OCI_INDEX, DOCKER_LIST) or "manifests" in doc:
            raise RegistryError(
                f"{self._repository}:{reference} is an index of several manifests; "
                "reference one manifest by its digest"
            )
        try:
            layers = tuple(
                Descriptor(
                    media_type=str(layer["mediaType"]),
                    digest=str(layer["digest"]),
                    size=int(layer["size"]),
                    annotations=dict(layer.get("annotations") or {}),
                )
                for layer in doc["layers"]
            )
        except (KeyError, TypeError, ValueError) as err:
            raise RegistryError(f"manifest {reference} has malformed layers: {err}") from err
        for layer in layers:
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", layer.digest) or layer.size < 0:
                raise RegistryError(
                    f"manifest {reference} has a layer with digest {layer.digest!r}"
                )
        artifact_type = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
        return Manifest(digest, media_type, layers, artifact_type)

    def blob_text(self, descriptor: Descriptor, limit: int = 1024 * 1024) -> str:
        """A small blob (template, system prompt, params) as verified text."""
        if descriptor.size > limit:
            raise RegistryError(
                f"blob {descriptor.digest} is {descriptor.size} bytes; at most {limit}"
            )
        resp = self._get(self.blob_url(descriptor.digest), {})
        if "sha256:" + hashlib.sha256(resp.content).hexdigest() != descriptor.digest:
            raise RegistryError(f"blob {descriptor.digest} does not match its digest")
        return resp.content.decode("utf-8")

    def _get(self, url: str, headers: dict[str, str]) -> httpx.Response:
        resp = self._client.get(url, headers={**headers, **self.auth_headers()})
        if resp.status_code == 401 and not self._preissued:
            self._authenticate(resp.headers.get("www-authenticate", ""))
            resp = self._client.get(url, headers={**headers, **self.auth_headers()})
        if resp.status_code == 401:
            raise RegistryError(
                f"{self._repository}: the registry refused the credentials (HTTP 401); "
                "check the credentialsSecret"
            )
        if resp.status_code == 403:
            raise RegistryError(f"{self._repository}: access denied (HTTP 403)")
        if resp.status_code == 404:
            raise RegistryError(f"{url.split('/v2/', 1)[1]}: not found in the registry (HTTP 404)")
        if resp.status_code >= 400:
            raise RegistryError(f"GET {url}: HTTP {resp.status_code} {resp.reason_phrase}")
        return resp

    def _authenticate(self, challenge: str) -> None:
        """Answer a WWW-Authenticate challenge: Basic directly, Bearer via the token service."""
        scheme, _, params_text = challenge.partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        if scheme.lower() == "basic":
            basic = self._credentials.basic_header()
            if basic is None:
                raise RegistryError(
                    f"{self._repository}: the registry asks for a username and password; "
                    "set them in the credentialsSecret"
                )
            if self._plain_http:
                raise RegistryError(
                    f"{self._repository}: the registry {self._host} asks for a username and "
                    "password over plain http, where they would travel unencrypted; serve the "
                    "registry over https and drop allowInsecure"
                )
            self._auth_header = basic
            return
        if scheme.lower() != "bearer" or "realm" not in params:
            raise RegistryError(
                f"{self._repository}: unsupported authentication challenge {scheme!r}"
            )
        basic = self._credentials.basic_header()
        # An anonymous token request carries nothing of ours (Docker Hub's realm is another
        # host): only one that sends the credentials must go where they may.
        if basic:
            self._check_realm(params["realm"])
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        query.setdefault("scope", f"repository:{self._repository}:pull")
        headers = {"Authorization": basic} if basic else {}
        resp = self._client.get(params["realm"], params=query, headers=headers)
        if resp.status_code >= 400:
            raise RegistryError(
                f"{self._repository}: the token service refused (HTTP {resp.status_code}); "
                "check the credentialsSecret"
            )
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token")
        except ValueError:
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{self._repository}: the token service returned no token")
        self._auth_header = f"Bearer {token}"

    def _check_realm(self, realm: str) -> None:
        """A token service may get the credentials only over https, on the registry's host or
        on a host the puller was told to trust."""
        parts = urlsplit(realm)
        realm_host = (parts.hostname or "").lower()
        registry_host = (urlsplit(self._base).hostname or "").lower()
        shown = f"{parts.scheme}://{parts.netloc}{parts.path}"
        if parts.scheme != "https":
            raise RegistryError(
                f"{self._repository}: the registry {self._host} sends token requests to "
                f"{shown}, which is not https; the token service must be served over https"
            )
        if realm_host != registry_host and realm_host not in self._realm_hosts:
            raise RegistryError(
                f"{self._repository}: the registry {self._host} sends token requests to "
                f"{shown}, another host; if you trust it, add {realm_host} to the puller's "
                f"--token-realm-hosts (env {ENV_TOKEN_REALM_HOSTS})"
            )
