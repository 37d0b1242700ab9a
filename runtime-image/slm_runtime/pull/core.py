"""Pull one model source into a destination directory: fetch, verify, place atomically, record."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final, cast

from pydantic import ValidationError

from slm_runtime.config import ModelDefaults, ModelFormat, ModelMetadata, ModelParameters
from slm_runtime.pull.digest import (
    DigestMismatchError,
    check_pin,
    folder_files,
    folder_sha256,
    model_sha256,
    unchanged_since_recorded,
)
from slm_runtime.pull.progress import Progress
from slm_runtime.pull.registry import Credentials, Descriptor, Registry, RegistryError
from slm_runtime.pull.store import WORK_DIR_NAME, Destination, model_name, now_rfc3339
from slm_runtime.pull.transfer import DEFAULT_RETRIES, USER_AGENT, Fetched, fetch
from slm_runtime.sources import (
    FileSource,
    HfSource,
    HttpsSource,
    OciSource,
    OllamaSource,
    PvcSource,
    Source,
    infer_format,
)

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

GGUF_MAGIC: Final = b"GGUF"
OLLAMA_MODEL: Final = "application/vnd.ollama.image.model"
OLLAMA_TEMPLATE: Final = "application/vnd.ollama.image.template"
OLLAMA_SYSTEM: Final = "application/vnd.ollama.image.system"
OLLAMA_PARAMS: Final = "application/vnd.ollama.image.params"
OLLAMA_ADAPTER: Final = "application/vnd.ollama.image.adapter"
# Ollama parameter names that differ from ModelParameters' field names.
_OLLAMA_PARAM_ALIASES: Final = {"num_ctx": "context_length"}
_TAR_MEDIA_SUFFIXES: Final = (".tar", ".tar+gzip", ".tar+zstd", "tar.gzip")
_TAR_TITLE_SUFFIXES: Final = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst")
_COMPRESSED_MEDIA_SUFFIXES: Final = ("+gzip", "+zstd", ".gzip", ".zstd")


class PullError(Exception):
    """A pull that cannot complete; the message says what is wrong and what to change."""


@dataclass(frozen=True)
class PullRequest:
    """Everything one pull needs; credentials never appear in logs or messages."""

    source: Source
    dest: Path
    sha256: str | None = None
    model_format: ModelFormat | None = None
    credentials: Credentials = field(default_factory=Credentials)
    allow_insecure: bool = False
    hf_endpoint: str | None = None
    retries: int = DEFAULT_RETRIES
    token_realm_hosts: frozenset[str] = frozenset()
    """Hosts besides a registry's own whose token service may receive the credentials."""


def pull(request: PullRequest, progress: Progress) -> ModelMetadata:
    """Make ``request.dest`` hold the verified model, transferring only what is missing."""
    source = request.source
    if isinstance(source, FileSource | PvcSource):  # not ``fetched``
        return _verify_only(request, source)
    dest = Destination(request.dest)
    # A file or Hub model already in place is kept without a request, so without importing
    # the HTTP clients either; registry sources always fetch their manifest first.
    if isinstance(source, HttpsSource | HfSource) and (
        present := _present(request, dest, request.sha256)
    ):
        dest.cleanup()
        return present
    dest.prepare()
    try:
        if isinstance(source, HttpsSource):
            result = _pull_https(request, source, dest, progress)
        else:
            with _client(str(source)) as client:
                if isinstance(source, HfSource):
                    result = _pull_hf(request, source, dest, client, progress)
                else:
                    result = _pull_registry(request, source, dest, client, progress)
    except DigestMismatchError:
        dest.cleanup()  # never resume from bytes that failed verification
        raise
    dest.cleanup()
    return result


@contextmanager
def _client(what: str) -> Iterator[httpx.Client]:
    """An HTTP client for API calls (manifests, tokens, listings); its errors become PullError."""
    import httpx  # only registry and Hub pulls need it

    try:
        with httpx.Client(
            follow_redirects=True,
            timeout=httpx.Timeout(30.0, read=120.0),
            headers={"User-Agent": USER_AGENT},
        ) as client:
            yield client
    except httpx.HTTPError as err:
        raise PullError(f"{what}: {type(err).__name__}: {err}") from err


# --- verify only ------------------------------------------------------------------------------


def _verify_only(request: PullRequest, source: FileSource | PvcSource) -> ModelMetadata:
    path = Path(source.path) if isinstance(source, FileSource) else request.dest / source.path
    if not path.exists():
        raise PullError(f"{source}: {path} does not exist")
    digest = model_sha256(path)
    check_pin(digest, request.sha256, str(source))
    files = [path.name] if path.is_file() else folder_files(path)
    size = path.stat().st_size if path.is_file() else _folder_size(path)
    return ModelMetadata(
        digest=f"sha256:{digest}",
        size_bytes=size,
        files=files,
        source=str(source),
        format=request.model_format or infer_format(source),
        time=now_rfc3339(),
    )


# --- what is already there --------------------------------------------------------------------


def _present(request: PullRequest, dest: Destination, expected: str | None) -> ModelMetadata | None:
    """The metadata of the model in place when it is this source's verified model, else None.

    ``expected`` is the digest the source is known to have (the pin, or a registry layer's
    digest); without one, the model in place counts when it came from the same source.
    """
    meta = dest.read_metadata()
    if meta is None or meta.source != str(request.source):
        return None
    wanted = expected or meta.digest.removeprefix("sha256:")
    if meta.digest != f"sha256:{wanted}" or not meta.files:
        return None
    top = {f.split("/", 1)[0] for f in meta.files}
    if len(top) != 1:
        return None
    path = dest.root / top.pop()
    if not path.exists():
        return None
    if unchanged_since_recorded(dest.metadata_path, path, meta.size_bytes):
        log.info("model already present, unchanged since verified", extra={"digest": meta.digest})
        return meta
    if model_sha256(path) != wanted:
        log.warning("model in place does not match its metadata; pulling again")
        return None
    log.info("model already present and verified", extra={"digest": meta.digest})
    return meta


def _record(
    request: PullRequest,
    dest: Destination,
    final: Path,
    digest: str,
    model_format: ModelFormat,
    defaults: ModelDefaults | None = None,
) -> ModelMetadata:
    if final.is_dir():
        files = [f"{final.name}/{rel}" for rel in folder_files(final)]
        size = _folder_size(final)
    else:
        files, size = [final.name], final.stat().st_size
    meta = ModelMetadata(
        digest=f"sha256:{digest}",
        size_bytes=size,
        files=files,
        source=str(request.source),
        format=model_format,
        time=now_rfc3339(),
        defaults=defaults,
    )
    dest.write_metadata(meta)
    return meta


def _folder_size(path: Path) -> int:
    return sum((path / rel).stat().st_size for rel in folder_files(path))


def _sniff_format(path: Path, declared: ModelFormat | None, what: str) -> ModelFormat:
    """The declared format, checked against the file's magic for GGUF."""
    with path.open("rb") as f:
        magic = f.read(len(GGUF_MAGIC))
    if declared is None and magic == GGUF_MAGIC:
        return ModelFormat.GGUF
    if declared is ModelFormat.GGUF and magic != GGUF_MAGIC:
        raise PullError(f"{what} is not a GGUF file (it does not start with 'GGUF')")
    if declared is None:
        raise PullError(f"cannot tell the model format of {what}; set format: gguf or onnx")
    return declared


def _place_file(
    request: PullRequest,
    dest: Destination,
    part: Path,
    fetched: Fetched,
    what: str,
    defaults: ModelDefaults | None = None,
) -> ModelMetadata:
    check_pin(fetched.sha256, request.sha256, what)
    try:
        declared = request.model_format or infer_format(request.source)
        model_format = _sniff_format(part, declared, what)
        if model_format is not ModelFormat.GGUF:
            raise PullError(f"{what} is a single file; an {model_format} model is a folder")
    except PullError:
        part.unlink()  # complete and verified, but not a model this runtime can serve
        raise
    final = dest.place(part, model_name(model_format))
    return _record(request, dest, final, fetched.sha256, model_format, defaults)


# --- https ------------------------------------------------------------------------------------


def _pull_https(
    request: PullRequest,
    source: HttpsSource,
    dest: Destination,
    progress: Progress,
) -> ModelMetadata:
    headers = {}
    if request.credentials.token:
        headers["Authorization"] = f"Bearer {request.credentials.token}"
    part = dest.work / f"https-{hashlib.sha256(source.url.encode()).hexdigest()[:16]}"
    fetched = fetch(
        source.url,
        part,
        progress,
        label=source.file_name,
        headers=headers,
        retries=request.retries,
    )
    return _place_file(request, dest, part, fetched, source.file_name)


# --- Hugging Face -----------------------------------------------------------------------------


def _pull_hf(
    request: PullRequest,
    source: HfSource,
    dest: Destination,
    client: httpx.Client,
    progress: Progress,
) -> ModelMetadata:
    from huggingface_hub import HfApi, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    token = request.credentials.token
    api = HfApi(endpoint=request.hf_endpoint, token=token or False)
    try:
        commit = api.model_info(source.repo_id, revision=source.revision).sha or source.revision
        infos = api.get_paths_info(source.repo_id, [source.path], revision=commit)
        if not infos:
            raise PullError(f"{source}: {source.path!r} is not in the repository")
        entry = infos[0]
        if isinstance(entry, RepoFolder):
            files = [
                f
                for f in api.list_repo_tree(
                    source.repo_id, path_in_repo=source.path, revision=commit, recursive=True
                )
                if isinstance(f, RepoFile)
            ]
        else:
            files = [entry]
    except HfHubHTTPError as err:
        detail = f" ({err.server_message.strip()})" if err.server_message else ""
        first_line = str(err).splitlines()[0]
        raise PullError(f"{source}: {type(err).__name__}: {first_line}{detail}") from err
    log.info("resolved Hugging Face revision", extra={"source": str(source), "commit": commit})
    folder = dest.work / "hf-folder"
    targets: dict[str, Path] = {}
    if isinstance(entry, RepoFolder):
        _fresh_dir(folder)
        targets = {f.path: _inside(dest, folder, f.path, source) for f in files}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    fetched: dict[str, Fetched] = {}
    for f in files:
        url = hf_hub_url(source.repo_id, f.path, revision=commit, endpoint=request.hf_endpoint)
        part = dest.work / f"hf-{hashlib.sha256(f.path.encode()).hexdigest()[:16]}"
        got = fetch(
            url,
            part,
            progress,
            label=f.path,
            expected_size=f.size,
            headers=headers,
            retries=request.retries,
        )
        if f.lfs is not None:
            check_pin(got.sha256, f.lfs.sha256, f"{source.repo_id}/{f.path} (per the Hub)")
        fetched[f.path] = got
    if isinstance(entry, RepoFile):
        part = dest.work / f"hf-{hashlib.sha256(entry.path.encode()).hexdigest()[:16]}"
        return _place_file(request, dest, part, fetched[entry.path], str(source))
    for f in files:
        target = targets[f.path]
        target.parent.mkdir(parents=True, exist_ok=True)
        (dest.work / f"hf-{hashlib.sha256(f.path.encode()).hexdigest()[:16]}").rename(target)
    return _place_folder(request, dest, folder, str(source))


def _fresh_dir(path: Path) -> Path:
    """An empty real directory at ``path``: a link or file left there is removed, not followed."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


def _inside(dest: Destination, folder: Path, listed: str, source: HfSource) -> Path:
    """Where a listed file of the folder goes, refused unless it resolves inside ``folder``.

    The listing comes from the Hub (or a mirror): its paths are checked as resolved on disk,
    with symlinks followed, not as text.
    """
    prefix = source.path.rstrip("/") + "/"
    target = folder / listed.removeprefix(prefix)
    home = dest.root.resolve() / WORK_DIR_NAME / folder.name
    resolved = target.resolve()
    if not listed.startswith(prefix) or resolved == home or not resolved.is_relative_to(home):
        raise PullError(
            f"{source}: the repository listing names {listed!r}, which is not a file inside "
            f"{source.path!r} (it would be written to {resolved}); the Hub endpoint or mirror "
            "serves a bad listing: check --hf-endpoint"
        )
    return target


def _place_folder(
    request: PullRequest, dest: Destination, folder: Path, what: str
) -> ModelMetadata:
    model_format = request.model_format or ModelFormat.ONNX
    if model_format is not ModelFormat.ONNX:
        raise PullError(f"{what} is a folder; a {model_format} model is a single file")
    digest = folder_sha256(folder)
    check_pin(digest, request.sha256, what)
    final = dest.place(folder, model_name(model_format))
    return _record(request, dest, final, digest, model_format)


# --- OCI and Ollama registries ----------------------------------------------------------------


def _pull_registry(
    request: PullRequest,
    source: OciSource | OllamaSource,
    dest: Destination,
    client: httpx.Client,
    progress: Progress,
) -> ModelMetadata:
    registry = Registry(
        client,
        source.host,
        source.repository,
        request.credentials,
        plain_http=request.allow_insecure,
        realm_hosts=request.token_realm_hosts,
    )
    reference = source.tag if isinstance(source, OllamaSource) else source.reference
    try:
        manifest = registry.manifest(reference)
        log.info("resolved manifest", extra={"source": str(source), "manifest": manifest.digest})
        if isinstance(source, OllamaSource):
            layer = _ollama_model_layer(source, manifest.layers)
        else:
            layer = _oci_model_layer(source, manifest.layers)
        is_tar = _is_tar(layer, str(source))
        layer_hex = layer.digest.removeprefix("sha256:")
        if not is_tar:
            check_pin(layer_hex, request.sha256, f"{source} (model layer {layer.digest})")
        if present := _present(request, dest, request.sha256 if is_tar else layer_hex):
            return present
        defaults = (
            _ollama_defaults(registry, manifest.layers)
            if isinstance(source, OllamaSource)
            else None
        )
        part = dest.work / layer.digest.replace(":", "-")
        label = layer.title or str(source)
        fetched = fetch(
            registry.blob_url(layer.digest),
            part,
            progress,
            label=label,
            expected_size=layer.size,
            headers=registry.auth_headers(),
            retries=request.retries,
        )
    except RegistryError as err:
        raise PullError(f"{source}: {err}") from err
    if fetched.sha256 != layer_hex:
        raise DigestMismatchError(
            f"{source}: blob {layer.digest} arrived with sha256:{fetched.sha256}"
        )
    if is_tar:
        folder = _extract(part, dest.work / "oci-folder", str(source), zstd=_is_zstd(layer))
        return _place_folder(request, dest, folder, str(source))
    return _place_file(request, dest, part, fetched, str(source), defaults)


def _is_tar(layer: Descriptor, what: str) -> bool:
    """Whether the model layer is a tar of a folder; a compressed single file is refused."""
    title = (layer.title or "").lower()
    if layer.media_type.endswith(_TAR_MEDIA_SUFFIXES) or title.endswith(_TAR_TITLE_SUFFIXES):
        return True
    if layer.media_type.endswith(_COMPRESSED_MEDIA_SUFFIXES):
        raise PullError(
            f"{what}: the model layer {layer.digest} is compressed ({layer.media_type}) but not "
            "a tar; push a GGUF uncompressed, or a model folder as a tar (+gzip or +zstd)"
        )
    return False


def _is_zstd(layer: Descriptor) -> bool:
    title = (layer.title or "").lower()
    return layer.media_type.endswith("+zstd") or title.endswith((".tar.zst", ".tzst"))


def _oci_model_layer(source: OciSource, layers: tuple[Descriptor, ...]) -> Descriptor:
    if len(layers) == 1:
        return layers[0]
    candidates = [
        layer
        for layer in layers
        if "gguf" in layer.media_type.lower()
        or (layer.title or "").lower().endswith((".gguf", *_TAR_TITLE_SUFFIXES))
    ]
    if len(candidates) != 1:
        names = ", ".join(f"{layer.title or layer.media_type} ({layer.digest})" for layer in layers)
        raise PullError(
            f"{source}: cannot tell which of the {len(layers)} layers is the model: {names}; "
            "push the model as the artifact's only layer or name it *.gguf"
        )
    return candidates[0]


def _ollama_model_layer(source: OllamaSource, layers: tuple[Descriptor, ...]) -> Descriptor:
    if any(layer.media_type == OLLAMA_ADAPTER for layer in layers):
        raise PullError(f"{source}: models with LoRA adapter layers are not supported")
    models = [layer for layer in layers if layer.media_type == OLLAMA_MODEL]
    if len(models) != 1:
        raise PullError(
            f"{source}: expected one {OLLAMA_MODEL} layer in the manifest, found {len(models)}"
        )
    return models[0]


def _ollama_defaults(registry: Registry, layers: tuple[Descriptor, ...]) -> ModelDefaults:
    """Template, system and params layers, as runtime defaults a LocalModel can override."""
    values: dict[str, Any] = {}
    for layer in layers:
        if layer.media_type == OLLAMA_TEMPLATE:
            values["template"] = registry.blob_text(layer)
        elif layer.media_type == OLLAMA_SYSTEM:
            values["system"] = registry.blob_text(layer)
        elif layer.media_type == OLLAMA_PARAMS:
            values["parameters"] = _ollama_parameters(registry.blob_text(layer))
    return ModelDefaults.model_validate(values)


def _ollama_parameters(text: str) -> ModelParameters:
    """Ollama's params JSON as ModelParameters; parameters the runtime does not know are logged."""
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise RegistryError(f"the params layer is not JSON: {err}") from err
    if not isinstance(raw, dict):
        raise RegistryError("the params layer is not a JSON object")
    known = set(ModelParameters.model_fields)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = _OLLAMA_PARAM_ALIASES.get(key, key)
        if name not in known:
            log.warning("ignoring unsupported Ollama parameter", extra={"parameter": key})
            continue
        # Ollama stores every parameter as a list when a Modelfile repeats it (e.g. stop).
        if isinstance(value, list) and name != "stop":
            value = value[-1] if value else None
        values[name] = value
    try:
        return ModelParameters.model_validate(values)
    except ValidationError as err:
        raise RegistryError(f"the params layer has invalid values: {err}") from err


def _extract(archive: Path, folder: Path, what: str, *, zstd: bool = False) -> Path:
    """Unpack a model folder tar (plain, gzip, bzip2, xz or zstd) safely: regular files and
    directories only, none outside the folder."""
    _fresh_dir(folder)
    try:
        with (
            archive.open("rb") as raw,
            _decompressed(raw, zstd) as stream,
            tarfile.open(fileobj=stream, mode="r|*") as tar,
        ):
            regular = (m for m in tar if m.isfile() or m.isdir())
            tar.extractall(folder, members=regular, filter="data")
    except (tarfile.TarError, OSError) as err:
        kind = "zstd-compressed tar" if zstd else "tar"
        raise PullError(f"{what}: the model layer is not a readable {kind}: {err}") from err
    archive.unlink()
    entries = [p for p in folder.iterdir()]
    # A tar of one top-level folder holds the model in that folder.
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


@contextmanager
def _decompressed(raw: BinaryIO, zstd: bool) -> Iterator[BinaryIO]:
    """The layer's bytes as a stream: zstd is decoded here, tarfile detects the others."""
    if not zstd:
        yield raw
        return
    try:
        import zstandard  # only +zstd layers need it
    except ImportError as err:
        raise OSError("reading a +zstd layer needs the zstandard package") from err
    try:
        with zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True) as reader:
            yield cast(BinaryIO, reader)
    except zstandard.ZstdError as err:
        raise OSError(f"zstd: {err}") from err
