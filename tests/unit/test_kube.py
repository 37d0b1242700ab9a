"""Reading the API server's refusals."""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException
from slm_operator.controller.kube import rejection
from slm_operator.kinds import OPTIONAL_KINDS

pytestmark = pytest.mark.unit


def test_an_invalid_object_gives_the_api_servers_message() -> None:
    message = 'Deployment.apps "m" is invalid: spec.template.spec.tolerations[0].operator: ...'
    body = json.dumps({"kind": "Status", "code": 422, "reason": "Invalid", "message": message})
    assert rejection(ApiException(status=422, reason="Unprocessable Entity", body=body)) == message


def test_other_failures_are_not_refusals() -> None:
    assert rejection(ApiException(status=409, reason="Conflict", body="{}")) is None
    assert rejection(ApiException(status=500, reason="Internal Server Error")) is None


def test_a_refusal_without_a_json_body_keeps_the_reason() -> None:
    refused = ApiException(status=422, reason="Unprocessable Entity", body="not json")
    assert rejection(refused) == "Unprocessable Entity"


def test_optional_kinds_name_the_crds_that_define_them() -> None:
    """The CRD names the operator watches for (kopf filters CustomResourceDefinitions by them)."""
    assert {kind.crd for kind in OPTIONAL_KINDS} == {
        "servicemonitors.monitoring.coreos.com",
        "inferencepools.inference.networking.k8s.io",
    }
