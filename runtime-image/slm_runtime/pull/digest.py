"""Model digests: sha256 of a file, and of a folder's manifest for folder models."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Final

CHUNK_SIZE: Final = 4 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


class DigestMismatchError(Exception):
    """What was fetched or found does not have the pinned digest."""


def normalize_sha256(value: str) -> str:
    """``sha256:HEX`` or ``HEX`` (any case) -> 64 lowercase hex; ValueError names the input."""
    hex_part = value.strip().lower().removeprefix("sha256:")
    if not _HEX64.fullmatch(hex_part):
        raise ValueError(f"sha256 {value!r} is not 64 hex characters (optionally after 'sha256:')")
    return hex_part


def file_sha256(path: Path) -> str:
    """The sha256 of a file's content, as 64 lowercase hex."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def folder_files(folder: Path) -> list[str]:
    """Every regular file under ``folder``, as sorted '/'-separated relative paths."""
    files: list[str] = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in names:
            full = Path(root, name)
            if full.is_symlink() or not full.is_file():
                raise ValueError(f"{full} is not a regular file; a model folder holds only files")
            files.append(full.relative_to(folder).as_posix())
    return sorted(files)


def folder_manifest(folder: Path) -> str:
    """The folder's manifest: the sorted lines ``<sha256>  <relative path>`` of every file.

    The same text as ``find . -type f -printf '%P\\0' | xargs -0 sha256sum | LC_ALL=C sort``
    run inside the folder.
    """
    lines = [f"{file_sha256(folder / rel)}  {rel}\n" for rel in folder_files(folder)]
    return "".join(sorted(lines))


def folder_sha256(folder: Path) -> str:
    """The folder model digest: sha256 of :func:`folder_manifest`, as 64 lowercase hex."""
    return hashlib.sha256(folder_manifest(folder).encode()).hexdigest()


def model_sha256(path: Path) -> str:
    """The model digest of a file or a folder."""
    return folder_sha256(path) if path.is_dir() else file_sha256(path)


def check_pin(actual: str, pinned: str | None, what: str) -> None:
    """Raise DigestMismatchError naming both digests when ``actual`` is not the pin."""
    if pinned is not None and actual != pinned:
        raise DigestMismatchError(
            f"sha256 mismatch for {what}: expected sha256:{pinned}, got sha256:{actual}"
        )


def unchanged_since_recorded(record: Path, model: Path, size: int) -> bool:
    """No byte of ``model`` (a file or folder) can have changed since ``record`` was written.

    The record is written after the verified model is in place, and any write, truncation or
    rename of a file moves its ctime (which no user can set) past the record's. Strictly older:
    a write in the same clock tick as the record cannot be ruled out.
    """
    recorded = record.stat().st_ctime_ns
    files = [model] if model.is_file() else [model / rel for rel in folder_files(model)]
    stats = [f.stat() for f in files]
    return sum(st.st_size for st in stats) == size and all(
        st.st_ctime_ns < recorded for st in stats
    )
