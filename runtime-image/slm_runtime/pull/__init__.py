"""`slm-runtime pull`: fetch a model from its source, verify its sha256, and place it atomically.

Progress goes to stdout as JSON lines (a bar on a terminal); on success the digest, size and
files go to the termination log as JSON, and on failure the error message does, so the
operator can copy either into the LocalModel's status.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Final

from slm_runtime.config import (
    ENV_SOURCE_PASSWORD,
    ENV_SOURCE_TOKEN,
    ENV_SOURCE_USERNAME,
    ENV_TERMINATION_LOG,
    MODELS_DIR,
    TERMINATION_LOG_PATH,
    ModelFormat,
    PullResult,
)
from slm_runtime.pull.core import PullError, PullRequest, pull
from slm_runtime.pull.digest import DigestMismatchError, normalize_sha256
from slm_runtime.pull.progress import Progress
from slm_runtime.pull.registry import ENV_TOKEN_REALM_HOSTS, Credentials, RegistryError
from slm_runtime.pull.transfer import DEFAULT_RETRIES, TransferError
from slm_runtime.sources import parse_source

ENV_ALLOW_INSECURE: Final = "SLM_ALLOW_INSECURE"
ENV_HF_ENDPOINT: Final = "HF_ENDPOINT"
TERMINATION_MESSAGE_MAX: Final = 4096
"""Kubernetes keeps at most this many bytes of a termination message."""

log = logging.getLogger("slm_runtime.pull")

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the `pull` subcommand's flags."""
    parser.add_argument(
        "--source",
        required=True,
        help="hf://, ollama://, oci://, https://, "
        "pvc:// or file:// source (see the LocalModel docs for the grammar)",
    )
    parser.add_argument(
        "--dest", default=MODELS_DIR, type=Path, help=f"directory to fill (default {MODELS_DIR})"
    )
    parser.add_argument("--sha256", help="pinned digest: of the file, or of a folder's manifest")
    parser.add_argument(
        "--format",
        choices=[f.value for f in ModelFormat],
        dest="model_format",
        help="model format; inferred from the source or the file when omitted",
    )
    parser.add_argument(
        "--allow-insecure",
        action="store_true",
        default=os.environ.get(ENV_ALLOW_INSECURE, "") == "true",
        help=f"allow http:// sources and plain-HTTP registries (env {ENV_ALLOW_INSECURE}=true)",
    )
    parser.add_argument(
        "--hf-endpoint",
        default=os.environ.get(ENV_HF_ENDPOINT),
        help=f"Hugging Face endpoint for mirrors (env {ENV_HF_ENDPOINT})",
    )
    parser.add_argument(
        "--token-realm-hosts",
        default=os.environ.get(ENV_TOKEN_REALM_HOSTS, ""),
        help="comma-separated hosts, besides a registry's own, whose token service (the "
        f"WWW-Authenticate realm) may receive the credentials (env {ENV_TOKEN_REALM_HOSTS})",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        help="retries per file after a transient failure, with backoff",
    )
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=Path(os.environ.get(ENV_TERMINATION_LOG, TERMINATION_LOG_PATH)),
        help=f"where the result JSON goes (default {TERMINATION_LOG_PATH}, "
        f"env {ENV_TERMINATION_LOG})",
    )


def run(args: argparse.Namespace) -> int:
    """Run one pull; 0 on success, 1 when the pull fails, 2 on bad input or a digest mismatch."""
    _configure_logging()
    progress = Progress(sys.stdout)
    try:
        request = _request(args)
    except ValueError as err:
        return _fail(args.termination_log, progress, str(err), code=2)
    try:
        meta = pull(request, progress)
    except DigestMismatchError as err:
        # The source does not serve the pinned file: retrying cannot help.
        return _fail(args.termination_log, progress, str(err), code=2)
    except (PullError, TransferError, RegistryError, ValueError) as err:
        return _fail(args.termination_log, progress, str(err), code=1)
    except OSError as err:
        return _fail(args.termination_log, progress, f"{type(err).__name__}: {err}", code=1)
    result = PullResult(digest=meta.digest, size_bytes=meta.size_bytes, files=meta.files)
    progress.event("done", digest=meta.digest, sizeBytes=meta.size_bytes, files=meta.files)
    _write_termination_log(args.termination_log, _result_json(result))
    return 0


_RECORD_FIELDS: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _FieldsFormatter(logging.Formatter):
    """``time level logger message key=value...``, with the ``extra`` fields of the call."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS}
        return " ".join([text, *(f"{k}={v}" for k, v in fields.items())])


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_FieldsFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    # Their request lines would log signed URLs (e.g. a CDN redirect's query string).
    for name in ("httpx", "httpcore", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _request(args: argparse.Namespace) -> PullRequest:
    source = parse_source(args.source, allow_insecure=args.allow_insecure)
    if args.retries < 0:
        raise ValueError(f"--retries {args.retries} must be 0 or more")
    env = os.environ
    return PullRequest(
        source=source,
        dest=args.dest,
        sha256=normalize_sha256(args.sha256) if args.sha256 else None,
        model_format=ModelFormat(args.model_format) if args.model_format else None,
        credentials=Credentials(
            token=env.get(ENV_SOURCE_TOKEN) or None,
            username=env.get(ENV_SOURCE_USERNAME) or None,
            password=env.get(ENV_SOURCE_PASSWORD),
        ),
        allow_insecure=args.allow_insecure,
        hf_endpoint=args.hf_endpoint or None,
        retries=args.retries,
        token_realm_hosts=frozenset(
            host.strip().lower() for host in args.token_realm_hosts.split(",") if host.strip()
        ),
    )


def _fail(path: Path, progress: Progress, message: str, *, code: int) -> int:
    log.error("pull failed: %s", message)
    progress.event("error", message=message)
    _write_termination_log(path, message[:TERMINATION_MESSAGE_MAX])
    return code


def _result_json(result: PullResult) -> str:
    """The result as JSON, dropping trailing file names if the whole would not fit."""
    files = list(result.files)
    while True:
        text = json.dumps(
            result.model_copy(update={"files": files}).model_dump(mode="json", by_alias=True),
            separators=(",", ":"),
        )
        if len(text.encode()) <= TERMINATION_MESSAGE_MAX or not files:
            return text
        files.pop()


def _write_termination_log(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        log.warning("cannot write the termination log %s: %s", path, err)
