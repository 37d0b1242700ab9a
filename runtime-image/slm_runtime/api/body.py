"""What every API family's request bodies share: strict types, and text that is valid Unicode."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

# JSON can spell a lone UTF-16 surrogate ("\ud800"); Python decodes it into a str that no
# encoder (the tokenizer's UTF-8, the response's JSON) accepts.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any, path: str) -> tuple[str, str] | None:
    """The path of the first string (key or value) holding a lone surrogate, and the surrogate."""
    if isinstance(value, str):
        found = None if value.isascii() else _SURROGATE.search(value)
        return (path, found.group()) if found else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            hit = _lone_surrogate(key, where) or _lone_surrogate(item, where)
            if hit:
                return hit
    elif isinstance(value, list):
        for index, item in enumerate(value):
            hit = _lone_surrogate(item, f"{path}.{index}" if path else str(index))
            if hit:
                return hit
    return None


class RequestBody(BaseModel):
    """A request body or a part of one: unknown fields ignored, JSON types taken strictly."""

    # strict: a JSON 0 is not a boolean and "1" is not a number, as for Ollama and OpenAI.
    model_config = ConfigDict(extra="ignore", strict=True)


class TopLevelBody(RequestBody):
    """A whole request body: refused when any text in it is not valid Unicode."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        hit = _lone_surrogate(data, "")
        if hit:
            path, char = hit
            raise PydanticCustomError(
                "invalid_unicode",
                "{path} holds a lone UTF-16 surrogate ({char}), which is not valid Unicode",
                {"path": path or "body", "char": f"\\u{ord(char):04x}"},
            )
        return data
