"""The destination directory: a work area for partial files, atomic placement, and the metadata."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from pydantic import ValidationError

from slm_runtime.config import MODEL_METADATA_FILE, ModelFormat, ModelMetadata
from slm_runtime.sources import MODEL_NAMES

log = logging.getLogger(__name__)

WORK_DIR_NAME: Final = ".slm-partial"


def model_name(model_format: ModelFormat) -> str:
    """The model's name inside the destination directory."""
    return MODEL_NAMES[model_format]


class Destination:
    """A model directory such as ``/models`` that the puller fills."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.work = root / WORK_DIR_NAME
        self.metadata_path = root / MODEL_METADATA_FILE

    def prepare(self) -> None:
        """Create the directory and its work area (same filesystem, so renames are atomic).

        A link or file where the work area belongs is removed: partial files never land
        outside the destination.
        """
        if self.work.is_symlink() or self.work.is_file():
            self.work.unlink()
        self.work.mkdir(parents=True, exist_ok=True)

    def read_metadata(self) -> ModelMetadata | None:
        """The metadata of the model in place, or None when there is none or it is unreadable."""
        try:
            return ModelMetadata.model_validate_json(self.metadata_path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as err:
            log.warning("ignoring unreadable model metadata", extra={"error": str(err)})
            return None

    def place(self, staged: Path, name: str) -> Path:
        """fsync ``staged`` and rename it to ``<root>/<name>``, replacing what was there."""
        final = self.root / name
        _fsync_tree(staged)
        self.clear_metadata()
        if final.is_dir() and not final.is_symlink():
            old = self.work / f"old-{uuid.uuid4().hex}"
            final.rename(old)
            staged.rename(final)
            shutil.rmtree(old)
        else:
            os.replace(staged, final)
        _fsync_dir(self.root)
        return final

    def clear_metadata(self) -> None:
        """Remove the metadata first, so a half-replaced model is never described as complete."""
        if self.metadata_path.exists():
            self.metadata_path.unlink()
            _fsync_dir(self.root)

    def write_metadata(self, metadata: ModelMetadata) -> None:
        """Write the metadata atomically (temporary file, fsync, rename)."""
        tmp = self.work / f"{MODEL_METADATA_FILE}.{uuid.uuid4().hex}"
        data = metadata.model_dump_json(by_alias=True, exclude_none=True, indent=2) + "\n"
        with tmp.open("w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.metadata_path)
        _fsync_dir(self.root)

    def cleanup(self) -> None:
        """Remove the work area after a successful pull."""
        shutil.rmtree(self.work, ignore_errors=True)


def now_rfc3339() -> str:
    """The current UTC time in RFC 3339 form."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for root, _, names in os.walk(path):
            for name in names:
                with Path(root, name).open("rb") as f:
                    os.fsync(f.fileno())
            _fsync_dir(Path(root))
    else:
        with path.open("rb") as f:
            os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
