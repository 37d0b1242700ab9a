"""The server loads only the model the puller verified: checked at every start.

The puller records the digest, size and files in ``.slm-model.json`` after the verified model is
renamed into place. Any later write, truncation or rename moves a file's ctime (which no user can
set) past the record's, so an unchanged model costs a few stat calls; a changed one is hashed
again and refused unless it still matches.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from slm_runtime.config import MODEL_CORRUPT_MARKER, MODEL_METADATA_FILE, ModelMetadata
from slm_runtime.pull.digest import model_sha256, unchanged_since_recorded


def model_problem(model_path: str) -> str | None:
    """Why the model must not be served, or None (also when no puller record exists)."""
    model = Path(model_path)
    record = next(
        (
            folder / MODEL_METADATA_FILE
            for folder in (model.parent, model)
            if (folder / MODEL_METADATA_FILE).is_file()
        ),
        None,
    )
    if record is None:
        return None
    try:
        meta = ModelMetadata.model_validate_json(record.read_bytes())
    except (OSError, ValidationError) as exc:
        return f"the puller's record {record} is unreadable: {exc}"
    if not model.exists():
        return f"{model} is missing, though {record} records a verified pull"
    if unchanged_since_recorded(record, model, meta.size_bytes):
        return None
    actual = f"sha256:{model_sha256(model)}"
    if actual == meta.digest:
        return None
    return (
        f"{model} {MODEL_CORRUPT_MARKER}: its digest is {actual}, the verified pull recorded "
        f"{meta.digest} in {record}; the copy on the volume is damaged: delete it (in PerPod "
        "mode, the pod) so that the model is pulled again"
    )
