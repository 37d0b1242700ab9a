"""Write the Helm chart's accelerator catalog and model catalog from the operator's own.

``python -m slm_operator.chartgen`` rewrites the ``catalog:`` block of the chart's
``values.yaml`` from the operator's built-in catalog (``catalog.default_catalog``, one option
per row of ``slm_runtime.config.DEVICE_TIERS``), its ``models:`` block from the built-in model
catalog (``aliases.default_models``), and the tier names and variant fields its
``values.schema.json`` accepts; the rest of both files is left as written. ``--check`` exits
non-zero with a diff when a committed file is stale.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from slm_runtime.config import DEVICE_TIERS, ModelFormat

from slm_operator.aliases import default_models
from slm_operator.catalog import default_catalog
from slm_operator.crdgen import report_stale
from slm_operator.names import SHA256_PATTERN
from slm_operator.variants import ALIAS_PATTERN, VARIANT_NAME_PATTERN

logger = logging.getLogger(__name__)

DEFAULT_CHART: Final = Path(__file__).resolve().parents[2] / "charts" / "slm-operator"
_KEY: Final = "catalog:"
_MODELS_KEY: Final = "models:"
_VARIANT_ORDER: Final = (
    "name", "tiers", "source", "format", "sha256", "credentialsSecret", "allowInsecure",
    "parameters",
)  # fmt: skip
_INDENT: Final = "  "
# The depth of an option's fields: catalog > tiers > - tier > options > - option.
_OPTION: Final = 5


_PLAIN: Final = re.compile(r"[A-Za-z_/][A-Za-z0-9._/:@-]*")
# Words YAML 1.1 (Helm's parser) reads as booleans or null when they stand unquoted.
_RESERVED: Final = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"})


def _flow(value: Any, nested: bool = False) -> str:
    """A value on one line, in YAML's flow style: ``[a, b]``, ``{key: value}``, a scalar; a
    string that YAML would read as another type, or that holds anything but name characters,
    is quoted (as JSON, which YAML reads as the same string)."""
    if isinstance(value, dict):
        items = (f"{_flow(k, True)}: {_flow(v, True)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(item, True) for item in value) + "]"
    if isinstance(value, str):
        plain = _PLAIN.fullmatch(value) and value.lower() not in _RESERVED
        # Inside brackets or braces a colon may end a key: such a string is quoted too.
        return value if plain and not (nested and ":" in value) else json.dumps(value)
    return json.dumps(value)


def _mappings(items: list[Any]) -> bool:
    return all(isinstance(entry, dict) for entry in items)


def _block(value: dict[str, Any], depth: int) -> list[str]:
    """A mapping in block style at ``depth``: the catalog's tiers and their options as ``- ``
    items; what an option holds (depth 5) in flow style, a line per field (a line per entry
    for a list of mappings, as tolerations)."""
    pad = _INDENT * depth
    lines: list[str] = []
    for key, item in value.items():
        if depth < _OPTION and isinstance(item, dict) and item:
            lines.append(f"{pad}{_flow(key)}:")
            lines.extend(_block(item, depth + 1))
        elif depth < _OPTION and isinstance(item, list) and item and _mappings(item):
            lines.append(f"{pad}{key}:")
            for entry in item:
                first, *rest = _block(entry, depth + 2)
                lines.append(f"{pad}{_INDENT}- {first.lstrip()}")
                lines.extend(rest)
        elif isinstance(item, list) and item and _mappings(item):
            lines.append(f"{pad}{key}:")
            lines.extend(f"{pad}{_INDENT}- {_flow(entry)}" for entry in item)
        else:
            lines.append(f"{pad}{key}: {_flow(item)}")
    return lines


def catalog_block() -> list[str]:
    """The ``catalog:`` key and its value, as values.yaml holds it."""
    catalog = default_catalog().model_dump(mode="json", by_alias=True, exclude_none=True)
    return [_KEY, *_block(catalog, 1)]


def models_block() -> list[str]:
    """The ``models:`` key and its value, as values.yaml holds it."""
    models = default_models().model_dump(mode="json", by_alias=True, exclude_defaults=True)
    for entry in models.values():
        entry["variants"] = [
            {key: variant[key] for key in _VARIANT_ORDER if key in variant}
            for variant in entry["variants"]
        ]
    return [_MODELS_KEY, *_block(models, 1)]


def _replace_block(lines: list[str], key: str, block: list[str]) -> list[str]:
    """``lines`` with the block of top-level ``key`` (up to the next line that starts a
    top-level key or comment) replaced by ``block``."""
    if key not in lines:
        raise ValueError(f"values.yaml has no line {key!r} (a top-level key, nothing after it)")
    start = lines.index(key)
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith(" ")):
        end += 1
    # The blank lines that separate the block from what follows stay where they are.
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    return [*lines[:start], *block, *lines[end:]]


def render_values(current: str) -> str:
    """``values.yaml`` with its ``catalog:`` and ``models:`` blocks written from the built-in
    catalogs."""
    lines = _replace_block(current.splitlines(), _KEY, catalog_block())
    return "\n".join(_replace_block(lines, _MODELS_KEY, models_block())) + "\n"


def _models_schema() -> dict[str, Any]:
    """What a ``models`` entry may hold: the fields of a variant, tiers from the device table."""
    variant = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "tiers", "source"],
        "properties": {
            "name": {"type": "string", "pattern": VARIANT_NAME_PATTERN, "maxLength": 63},
            "tiers": {
                "type": "array",
                "minItems": 1,
                "uniqueItems": True,
                "items": {"enum": [tier.device.value for tier in DEVICE_TIERS]},
            },
            "source": {"type": "string", "minLength": 1, "maxLength": 2048},
            "format": {"enum": [f.value for f in ModelFormat]},
            "sha256": {"type": "string", "pattern": SHA256_PATTERN},
            "credentialsSecret": {"type": "string"},
            "allowInsecure": {"type": "boolean"},
            "parameters": {"type": "object"},
        },
    }
    return {
        "type": ["object", "null"],
        "propertyNames": {"pattern": ALIAS_PATTERN, "maxLength": 63},
        "additionalProperties": {
            "type": "object",
            "additionalProperties": False,
            "required": ["description", "variants"],
            "properties": {
                "description": {"type": "string", "minLength": 1},
                "variants": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": len(DEVICE_TIERS),
                    "items": variant,
                },
            },
        },
    }


def render_schema(current: str) -> str:
    """``values.schema.json`` with the tiers a catalog may name (the device table's, in order)
    and what a model catalog entry holds."""
    schema = json.loads(current)
    tiers = schema["properties"]["catalog"]["properties"]["tiers"]["items"]
    tiers["properties"]["device"]["enum"] = [tier.device.value for tier in DEVICE_TIERS]
    schema["properties"]["models"] = _models_schema()
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


FILES: Final[tuple[tuple[str, Callable[[str], str]], ...]] = (
    ("values.yaml", render_values),
    ("values.schema.json", render_schema),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the chart's catalog, or with ``--check`` report whether a committed file is stale."""
    parser = argparse.ArgumentParser(prog="python -m slm_operator.chartgen", description=__doc__)
    parser.add_argument("--chart", type=Path, default=DEFAULT_CHART, help="the chart's folder")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 with a diff when a file is stale"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stale = 0
    for name, render in FILES:
        path: Path = args.chart / name
        current = path.read_text(encoding="utf-8")
        wanted = render(current)
        if current == wanted:
            continue
        if args.check:
            report_stale(path, current, wanted, "crds")
            stale = 1
        else:
            path.write_text(wanted, encoding="utf-8")
            logger.info("wrote %s", path)
    return stale


if __name__ == "__main__":
    sys.exit(main())
