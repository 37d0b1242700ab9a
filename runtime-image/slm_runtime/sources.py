"""Model sources: one type per scheme, with the grammar, the credentials it takes and whether it
is fetched, shared by the operator and the puller.

    hf://ORG/REPO[@REVISION]/PATH            file or folder in a Hugging Face repo
    ollama://[HOST/]NAMESPACE/MODEL[:TAG]    Ollama registry; ollama://MODEL[:TAG] uses library/
    oci://HOST[:PORT]/REPO(:TAG|@sha256:HEX) OCI artifact whose model layer is the model
    https://HOST[:PORT]/PATH[?QUERY]         a single file (http:// only when insecure is allowed)
    pvc://CLAIM/PATH                         already on a claim in the namespace: verify only
    file:///PATH                             already inside the runtime image: verify only

``SOURCE_TYPES`` lists them; the CRD's pattern (``SOURCE_PATTERN``), the forms error messages
and help texts show (``FORMS``), the CRD's admission rules (``ADMISSION_FORMS``) and the reference
docs derive from it. How each type is fetched lives in ``pull/core.py``, which imports the HTTP
clients this module must not.

Pure: no I/O. Every rejection is a ``ValueError`` whose message names the part that is wrong
and the form that is expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Final

from slm_runtime.config import MODELS_DIR, ModelFormat

MAX_SOURCE_LENGTH: Final = 2048

HF_DEFAULT_REVISION: Final = "main"
OLLAMA_DEFAULT_HOST: Final = "registry.ollama.ai"
OLLAMA_DEFAULT_NAMESPACE: Final = "library"
OLLAMA_DEFAULT_TAG: Final = "latest"

_HF_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_HF_REVISION = re.compile(r"[A-Za-z0-9._-]{1,255}")
_OLLAMA_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,126}[a-z0-9])?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# A repository path component, as the OCI distribution spec defines it.
_OCI_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]{2,45}\]")
_K8S_NAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")
# RFC 3986 characters allowed in a path and query, plus percent-escapes.
_URL_REST = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


# The structure of each source form as a regex the API server checks at admission (the CRD's CEL
# rules on spec.model.source). Looser than the parser below, never stricter: names, hosts, ports
# and percent-escapes are left to it, and the operator reports what it refuses as Failed.
# Character classes ([.], [?]) instead of backslashes keep the rules readable in YAML.
_CEL_NAME = "[A-Za-z0-9._-]+"
_CEL_LOWER_NAME = "[a-z0-9]([a-z0-9._-]*[a-z0-9])?"
_CEL_PATH_PART = "([^/.][^/]*|[.][^/.][^/]*|[.][.][^/]+)"
"""One path component that is not empty, '.' or '..'."""
_CEL_TAG = "[A-Za-z0-9_][A-Za-z0-9._-]*"
_CEL_DIGEST = "@sha256:[0-9a-f]{64}"


class Credentials(StrEnum):
    """What a source's credentials Secret may hold."""

    NONE = "none"
    """Nothing is fetched, so nothing is sent."""
    TOKEN = "token"
    """A bearer token (the Secret's ``token`` key, required)."""
    REGISTRY = "registry"
    """A registry login: a token, or ``username`` and ``password`` (each key optional); the
    registry's token service may be on another host (``tokenRealmHosts``)."""


@dataclass(frozen=True)
class HfSource:
    """A file or folder ``path`` in Hugging Face repo ``repo_id`` at ``revision``."""

    scheme: ClassVar[str] = "hf"
    schemes: ClassVar[tuple[str, ...]] = ("hf",)
    form: ClassVar[str] = "hf://ORG/REPO[@REVISION]/PATH"
    admission: ClassVar[tuple[str, str, str]] = (
        "hf://",
        f"^hf://{_CEL_NAME}/{_CEL_NAME}(@{_CEL_NAME})?(/{_CEL_PATH_PART})+$",
        "hf://ORG/REPO[@REVISION]/PATH, the path naming a file or folder in the repo",
    )
    fetched: ClassVar[bool] = True
    credentials: ClassVar[Credentials] = Credentials.TOKEN
    repo_id: str
    path: str
    revision: str = HF_DEFAULT_REVISION

    def __str__(self) -> str:
        return f"hf://{self.repo_id}@{self.revision}/{self.path}"

    @property
    def file_name(self) -> str:
        """The last component of ``path``: the file (or folder) name placed in the destination."""
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class OllamaSource:
    """A model in an Ollama registry: ``host/namespace/model:tag``."""

    scheme: ClassVar[str] = "ollama"
    schemes: ClassVar[tuple[str, ...]] = ("ollama",)
    form: ClassVar[str] = "ollama://[HOST/]NAMESPACE/MODEL[:TAG]"
    admission: ClassVar[tuple[str, str, str]] = (
        "ollama://",
        f"^ollama://(([^/]+/)?{_CEL_LOWER_NAME}/)?{_CEL_LOWER_NAME}(:{_CEL_TAG})?$",
        "ollama://[[HOST[:PORT]/]NAMESPACE/]MODEL[:TAG]; a host needs a namespace after it",
    )
    fetched: ClassVar[bool] = True
    credentials: ClassVar[Credentials] = Credentials.REGISTRY
    model: str
    tag: str = OLLAMA_DEFAULT_TAG
    namespace: str = OLLAMA_DEFAULT_NAMESPACE
    host: str = OLLAMA_DEFAULT_HOST

    def __str__(self) -> str:
        return f"ollama://{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def repository(self) -> str:
        """The registry repository: ``namespace/model``."""
        return f"{self.namespace}/{self.model}"


@dataclass(frozen=True)
class OciSource:
    """An OCI artifact ``host/repository`` by ``tag`` or by ``digest`` (the digest wins)."""

    scheme: ClassVar[str] = "oci"
    schemes: ClassVar[tuple[str, ...]] = ("oci",)
    form: ClassVar[str] = "oci://HOST[:PORT]/REPO(:TAG|@sha256:HEX)"
    admission: ClassVar[tuple[str, str, str]] = (
        "oci://",
        f"^oci://[^/@]+/([^/@]+/)*[^/:@]+(:{_CEL_TAG}({_CEL_DIGEST})?|{_CEL_DIGEST})$",
        "oci://HOST[:PORT]/REPO with a :TAG or an @sha256:HEX digest",
    )
    fetched: ClassVar[bool] = True
    credentials: ClassVar[Credentials] = Credentials.REGISTRY
    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        if self.tag is None and self.digest is None:
            raise ValueError("an OCI source needs a tag or a digest")

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"oci://{self.host}/{self.repository}{tag}{digest}"

    @property
    def reference(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest if pinned, else the tag."""
        return self.digest or self.tag or ""


@dataclass(frozen=True)
class HttpsSource:
    """A single file at ``url``; ``insecure`` when the scheme is plain ``http``."""

    scheme: ClassVar[str] = "https"
    schemes: ClassVar[tuple[str, ...]] = ("https", "http")
    form: ClassVar[str] = "https://HOST/PATH"
    admission: ClassVar[tuple[str, str, str]] = (
        "http",
        "^https?://[^/@#]+/[^?#]*[^/?#]([?][^#]*)?$",
        "https://HOST[:PORT]/PATH naming a file, with no user:password@ (use "
        "credentialsSecret) and no #fragment",
    )
    fetched: ClassVar[bool] = True
    credentials: ClassVar[Credentials] = Credentials.TOKEN
    url: str

    def __str__(self) -> str:
        return self.url

    @property
    def insecure(self) -> bool:
        """True for ``http://`` URLs, which only parse when insecure sources are allowed."""
        return self.url.startswith("http://")

    @property
    def file_name(self) -> str:
        """The URL path's last component, the name the file gets in the destination."""
        path = self.url.split("://", 1)[1].split("?", 1)[0]
        return path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class PvcSource:
    """A file or folder ``path`` already on claim ``claim``: verified, never fetched."""

    scheme: ClassVar[str] = "pvc"
    schemes: ClassVar[tuple[str, ...]] = ("pvc",)
    form: ClassVar[str] = "pvc://CLAIM/PATH"
    admission: ClassVar[tuple[str, str, str]] = (
        "pvc://",
        f"^pvc://[a-z0-9]([a-z0-9.-]*[a-z0-9])?(/{_CEL_PATH_PART})+$",
        "pvc://CLAIM/PATH, the path relative to the claim's root",
    )
    fetched: ClassVar[bool] = False
    credentials: ClassVar[Credentials] = Credentials.NONE
    claim: str
    path: str

    def __str__(self) -> str:
        return f"pvc://{self.claim}/{self.path}"


@dataclass(frozen=True)
class FileSource:
    """An absolute ``path`` already inside the runtime image: verified, never fetched."""

    scheme: ClassVar[str] = "file"
    schemes: ClassVar[tuple[str, ...]] = ("file",)
    form: ClassVar[str] = "file:///PATH"
    admission: ClassVar[tuple[str, str, str]] = (
        "file://",
        f"^file://(/{_CEL_PATH_PART})+$",
        "file:///PATH, an absolute path with an empty host",
    )
    fetched: ClassVar[bool] = False
    credentials: ClassVar[Credentials] = Credentials.NONE
    path: str

    def __str__(self) -> str:
        return f"file://{self.path}"


Source = HfSource | OllamaSource | OciSource | HttpsSource | PvcSource | FileSource
SOURCE_TYPES: Final[tuple[type[Source], ...]] = (
    HfSource,
    OllamaSource,
    OciSource,
    HttpsSource,
    PvcSource,
    FileSource,
)
SOURCE_SCHEMES: Final = tuple(scheme for t in SOURCE_TYPES for scheme in t.schemes)
SOURCE_PATTERN: Final = rf"^({'|'.join(SOURCE_SCHEMES)})://.+$"
"""The CRD's pattern for ``spec.model.source``: a scheme of ``SOURCE_TYPES``."""
FORMS: Final = ", ".join(t.form for t in SOURCE_TYPES[:-1]) + f" or {SOURCE_TYPES[-1].form}"
"""Every source form, for messages and help texts."""
ADMISSION_FORMS: Final = tuple(t.admission for t in SOURCE_TYPES)
"""(prefix, regex, form): a source that starts with prefix must match regex (a CRD CEL rule)."""


def parse_source(text: str, *, allow_insecure: bool = False) -> Source:
    """Parse a model source; ``allow_insecure`` admits ``http://`` URLs."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"model source is empty; expected one of {FORMS}")
    if len(text) > MAX_SOURCE_LENGTH:
        raise ValueError(f"model source is {len(text)} characters; at most {MAX_SOURCE_LENGTH}")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError(f"model source {text!r} contains whitespace or control characters")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ValueError(f"model source {text!r} has no scheme; expected one of {FORMS}")
    match scheme:
        case "hf":
            return _parse_hf(rest)
        case "ollama":
            return _parse_ollama(rest)
        case "oci":
            return _parse_oci(rest)
        case "https":
            return _parse_url(text, rest)
        case "http":
            if not allow_insecure:
                raise ValueError(
                    f"model source {text!r} uses plain http://, which is neither encrypted nor "
                    "authenticated; use https:// or set allowInsecure: true"
                )
            return _parse_url(text, rest)
        case "pvc":
            return _parse_pvc(rest)
        case "file":
            return _parse_file(rest)
    raise ValueError(f"model source scheme {scheme!r} is not supported; expected one of {FORMS}")


def infer_format(source: Source) -> ModelFormat | None:
    """The model format a source implies (``.gguf``/``.onnx`` suffix, Ollama is GGUF), or None."""
    if isinstance(source, OllamaSource):
        return ModelFormat.GGUF
    if isinstance(source, OciSource):
        return None
    path = source.url.split("?", 1)[0] if isinstance(source, HttpsSource) else source.path
    lowered = path.lower()
    if lowered.endswith(".gguf"):
        return ModelFormat.GGUF
    if lowered.endswith(".onnx"):
        return ModelFormat.ONNX
    return None


MODEL_NAMES: Final = {ModelFormat.GGUF: "model.gguf", ModelFormat.ONNX: "model"}
"""Where the puller places a fetched model in its destination: a GGUF file, an ONNX folder."""


def model_path(source: Source, model_format: ModelFormat, models_dir: str = MODELS_DIR) -> str:
    """The model's path in the runtime pod: the puller's fixed name, or a verify-only path.

    A ``pvc://`` claim is mounted at ``models_dir``; a ``file://`` path is used as it is.
    """
    if isinstance(source, FileSource):
        return source.path
    if isinstance(source, PvcSource):
        return f"{models_dir}/{source.path}"
    return f"{models_dir}/{MODEL_NAMES[model_format]}"


def _check_relative_path(path: str, what: str) -> str:
    """Reject absolute, empty-component and ``..`` paths: a source never escapes its root."""
    if not path:
        raise ValueError(f"{what} is empty")
    if path.startswith("/"):
        raise ValueError(f"{what} {path!r} must be relative (no leading '/')")
    if "\\" in path:
        raise ValueError(f"{what} {path!r} must use '/' separators, not '\\'")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(
                f"{what} {path!r} has an empty, '.' or '..' component; give a plain relative path"
            )
    return path


def _parse_hf(rest: str) -> HfSource:
    form = "hf://ORG/REPO[@REVISION]/PATH"
    parts = rest.split("/", 2)
    if len(parts) < 3 or not parts[2]:
        raise ValueError(f"hf source 'hf://{rest}' needs an org, a repo and a file path: {form}")
    org, repo_rev, path = parts
    repo, at, revision = repo_rev.partition("@")
    if at and not revision:
        raise ValueError(f"hf source 'hf://{rest}' has '@' but no revision after it: {form}")
    for what, name in (("org", org), ("repo", repo)):
        if not _HF_NAME.fullmatch(name) or ".." in name or "--" in name:
            raise ValueError(
                f"hf {what} {name!r} is not a valid Hugging Face name "
                "(letters, digits, '.', '_', '-'; at most 96 characters)"
            )
    if at and not _HF_REVISION.fullmatch(revision):
        raise ValueError(
            f"hf revision {revision!r} is not a branch, tag or commit name "
            "(letters, digits, '.', '_', '-')"
        )
    _check_relative_path(path, "hf file path")
    return HfSource(repo_id=f"{org}/{repo}", path=path, revision=revision or HF_DEFAULT_REVISION)


def _check_host(host: str, source: str) -> str:
    """Validate ``HOST[:PORT]`` (hostname, IPv4 or bracketed IPv6)."""
    if _IPV6.fullmatch(host):
        return host
    if host.startswith("["):
        name, close, port = host.partition("]")
        name += close
        if not close or not _IPV6.fullmatch(name) or not port.startswith(":"):
            raise ValueError(f"host {host!r} in {source!r} is not a valid [IPv6]:PORT")
        port = port[1:]
    else:
        name, _, port = host.partition(":")
        if not _HOSTNAME.fullmatch(name) or len(name) > 253:
            raise ValueError(f"host {name!r} in {source!r} is not a valid host name or address")
    if ":" in host.rsplit("]", 1)[-1] and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"port {port!r} in {source!r} is not a number from 1 to 65535")
    return host


def _parse_ollama(rest: str) -> OllamaSource:
    form = "ollama://[HOST/]NAMESPACE/MODEL[:TAG] or ollama://MODEL[:TAG]"
    source = f"ollama://{rest}"
    parts = rest.split("/")
    if len(parts) > 3 or any(not p for p in parts):
        raise ValueError(f"ollama source {source!r} does not match {form}")
    host = OLLAMA_DEFAULT_HOST
    namespace = OLLAMA_DEFAULT_NAMESPACE
    if len(parts) == 3:
        host = _check_host(parts[0], source)
    if len(parts) >= 2:
        namespace = parts[-2]
        if not _OLLAMA_NAME.fullmatch(namespace):
            raise ValueError(
                f"ollama namespace {namespace!r} in {source!r} must be lowercase letters, "
                "digits, '.', '_' or '-'"
            )
    model, colon, tag = parts[-1].partition(":")
    if not _OLLAMA_NAME.fullmatch(model):
        raise ValueError(
            f"ollama model {model!r} in {source!r} must be lowercase letters, digits, "
            "'.', '_' or '-'"
        )
    if colon and not _TAG.fullmatch(tag):
        raise ValueError(
            f"ollama tag {tag!r} in {source!r} is not a valid tag "
            "(letters, digits, '.', '_', '-'; at most 128 characters)"
        )
    return OllamaSource(model=model, tag=tag or OLLAMA_DEFAULT_TAG, namespace=namespace, host=host)


def _parse_oci(rest: str) -> OciSource:
    form = "oci://HOST[:PORT]/REPO(:TAG|@sha256:HEX)"
    source = f"oci://{rest}"
    host, slash, name = rest.partition("/")
    if not slash or not host or not name:
        raise ValueError(f"oci source {source!r} needs a registry host and a repository: {form}")
    _check_host(host, source)
    name, at, digest = name.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        raise ValueError(
            f"oci digest {digest!r} in {source!r} must be sha256: followed by 64 lowercase hex"
        )
    head, _, last = name.rpartition("/")
    last, colon, tag = last.partition(":")
    repository = f"{head}/{last}" if head else last
    if colon and not _TAG.fullmatch(tag):
        raise ValueError(
            f"oci tag {tag!r} in {source!r} is not a valid tag "
            "(letters, digits, '.', '_', '-'; at most 128 characters)"
        )
    for component in repository.split("/"):
        if not _OCI_COMPONENT.fullmatch(component):
            raise ValueError(
                f"oci repository {repository!r} in {source!r}: component {component!r} must be "
                "lowercase letters and digits, separated by '.', '_', '__' or '-'"
            )
    if not colon and not at:
        raise ValueError(f"oci source {source!r} needs a :TAG or an @sha256:HEX digest: {form}")
    return OciSource(host=host, repository=repository, tag=tag or None, digest=digest or None)


def _parse_url(text: str, rest: str) -> HttpsSource:
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        raise ValueError(
            f"URL {text.split('@', 1)[-1]!r} carries credentials; put them in the "
            "credentialsSecret instead"
        )
    if not authority:
        raise ValueError(f"URL {text!r} has no host")
    _check_host(authority, text)
    if "#" in path:
        raise ValueError(f"URL {text!r} has a fragment ('#...'); remove it")
    if not _URL_REST.fullmatch(path) or _PERCENT.search(path):
        raise ValueError(
            f"URL {text!r} has characters that must be percent-encoded, or a bad '%' escape"
        )
    file_path = path.split("?", 1)[0]
    if not slash or not file_path or file_path.endswith("/"):
        raise ValueError(f"URL {text!r} must name a file, not a directory or the server root")
    return HttpsSource(url=text)


def _parse_pvc(rest: str) -> PvcSource:
    claim, slash, path = rest.partition("/")
    if not slash or not path:
        raise ValueError(f"pvc source 'pvc://{rest}' needs a claim and a path: pvc://CLAIM/PATH")
    if not _K8S_NAME.fullmatch(claim):
        raise ValueError(
            f"claim name {claim!r} is not a valid Kubernetes name "
            "(lowercase letters, digits, '-', '.'; at most 253 characters)"
        )
    return PvcSource(claim=claim, path=_check_relative_path(path, "pvc path"))


def _parse_file(rest: str) -> FileSource:
    if not rest.startswith("/"):
        raise ValueError(
            f"file source 'file://{rest}' must be an absolute path with an empty host: file:///PATH"
        )
    _check_relative_path(rest[1:], "file path")
    return FileSource(path=rest)
