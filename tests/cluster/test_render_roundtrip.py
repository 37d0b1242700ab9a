"""Rendered children survive the API server unchanged: what it stores shows no drift.

The operator sends a child only when it is missing, changed or drifted (apply.py); a field the
API server drops or rewrites on the way in (a false ``readOnly``, an empty list, a normalised
quantity) would read as drift on every reconcile and cost a write each time. Server-side apply
with ``--dry-run=server`` returns the object as the server would store it, defaults and all.
"""

from __future__ import annotations

import json

import pytest
from slm_operator.controller.apply import apply_reason, with_hash

from tests.unit.test_render import VARIANTS, render_variant

from .conftest import Kubectl

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_rendered_children_read_back_without_drift(
    key: str, crds: list[str], namespace: str, kubectl: Kubectl
) -> None:
    for obj in render_variant(key):
        stamped = with_hash({**obj, "metadata": {**obj["metadata"], "namespace": namespace}})
        stored = json.loads(
            kubectl(
                "apply", "--server-side", "--dry-run=server", "--field-manager=slm-operator",
                "-o", "json", "-f", "-",
                input=json.dumps(stamped),
            ).stdout
        )  # fmt: skip
        assert stored["metadata"]["uid"]
        reason = apply_reason(stamped, stored)
        assert reason is None, f"{obj['kind']}/{obj['metadata']['name']}: {reason}"
