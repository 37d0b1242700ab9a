"""Fuzzing the operator's pure pipeline: parse -> place -> render, on generated LocalModels.

Specs come from targeted strategies (every source scheme, hardware lists, resources, cache modes,
replicas and autoscaling, Modelfile fields, Kubernetes sub-objects from their JSON schemas) and
from the committed CRD's own OpenAPI schema. The properties: parsing raises nothing but
InvalidSpecError; every spec the API server admits (schema, defaults and CEL, as crdcheck applies
them) is served or refused with InvalidSpecError; placement is consistent with the inventory;
every rendered object passes the Kubernetes 1.36 schema, the API server's name, label and
resource checks, and Pod Security "restricted"; the ConfigMap round-trips to the runtime.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import kubernetes_validate
import pytest
from hypothesis import assume, event, given, note, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from slm_operator.aliases import default_models, with_alias
from slm_operator.api import InvalidSpecError, LocalModel, parse_localmodel
from slm_operator.catalog import AcceleratorCatalog, default_catalog
from slm_operator.children import RenderOptions, runtime_config
from slm_operator.conditions import Reason
from slm_operator.place import NoServableTier, Placement, place, tolerates
from slm_operator.render import pod_templates, pull_job_name, render
from slm_operator.sizing import parse_quantity, pod_resources
from slm_operator.summary import NodeInfo
from slm_runtime.config import CONFIGMAP_KEY, Device, RuntimeConfig

from tests.unit.crdcheck import apply_defaults, crd_errors, open_api_schema, to_json_schema
from tests.unit.test_render import UNVALIDATED_KINDS, restricted_violations

from . import kubecheck
from . import strategies as s
from .conftest import EXAMPLES

pytestmark = [pytest.mark.unit, pytest.mark.fuzz]

render_options = st.builds(
    RenderOptions,
    service_monitor_supported=st.booleans(),
    cluster_domain=st.sampled_from(["cluster.local", "corp.example"]),
    model_size_bytes=st.one_of(st.none(), st.integers(0, 64 * 1024**3)),
    pull_image=st.one_of(st.none(), st.just("registry.example.com/puller:1")),
    metrics_from=st.lists(s.peer, max_size=2).map(tuple),
    hold_replicas=st.booleans(),
)


def parse_or_none(body: Mapping[str, Any]) -> LocalModel | None:
    """The parsed LocalModel, or None when the parser refuses it (its only allowed failure)."""
    try:
        return parse_localmodel(body)
    except InvalidSpecError as exc:
        refusal = str(exc)
    assert refusal, "an InvalidSpecError must say what to change"
    note(f"refused: {refusal}")
    event("refused", refusal[:70])
    return None


def pod_requests(lm: LocalModel, device: Device) -> dict[str, float]:
    """The server's requests on ``device`` as numbers (its variant's pods), as the reconciler
    passes them to place()."""
    served = lm.serving(lm.spec.model.variant_for(device))
    requests = pod_resources(served.spec, lm.status.model.size_bytes)["requests"]
    return {name: parse_quantity(value) for name, value in requests.items()}


def fits(
    node: NodeInfo,
    resource: str | None,
    count: int,
    selector: Mapping[str, str],
    tolerations: Sequence[Mapping[str, Any]],
    requests: Mapping[str, float],
) -> bool:
    """Whether one pod fits on the node: an oracle written apart from place()."""
    if not node.ready or node.unschedulable:
        return False
    if any(node.labels.get(k) != v for k, v in selector.items()):
        return False
    for taint in node.taints:
        blocking = taint.get("effect") in ("NoSchedule", "NoExecute")
        if blocking and not any(tolerates(t, taint) for t in tolerations):
            return False
    if resource is not None and (
        node.allocatable.get(resource, 0) <= 0 or node.free(resource) < count
    ):
        return False
    return all(node.free(name) >= amount for name, amount in requests.items() if amount > 0)


def tier_fits(
    lm: LocalModel,
    device: Device,
    nodes: Sequence[NodeInfo],
    catalog: AcceleratorCatalog,
) -> bool:
    """Whether any option of the tier that serves its variant's format fits on any node."""
    tier = catalog.tier(device)
    variant = lm.spec.model.variant_for(device)
    if variant is None:
        return False
    model_format = variant.resolved_format()
    scheduling = lm.spec.scheduling
    requests = pod_requests(lm, device)
    return tier is not None and any(
        fits(
            n,
            option.resource,
            option.count,
            {**option.node_selector, **scheduling.node_selector},
            [*option.tolerations, *scheduling.tolerations],
            requests,
        )
        for option in tier.options
        if model_format in option.formats
        for n in nodes
    )


def check_placement(
    lm: LocalModel, placement: Placement, nodes: Sequence[NodeInfo], catalog: AcceleratorCatalog
) -> None:
    """Placement agrees with the oracle: the first tier that fits wins, else the last servable."""
    tiers = lm.spec.hardware.tiers()
    fitting = [d for d in tiers if tier_fits(lm, d, nodes, catalog)]
    assert placement.device in tiers
    assert placement.devices[0] is placement.device
    assert len(set(placement.devices)) == len(placement.devices)
    if fitting:
        assert placement.placed
        assert placement.device is fitting[0]
        expected = Reason.PLACED if placement.device is tiers[0] else Reason.FELL_BACK
        assert placement.reason is expected
    else:
        assert not placement.placed
        assert placement.reason is Reason.NO_CAPACITY
    skipped = [skipped.device for skipped in placement.skipped]
    assert skipped == (tiers[: tiers.index(placement.device)] if placement.placed else tiers)
    assert (placement.fallback_reason is None) == (not placement.skipped)


def check_objects(lm: LocalModel, placement: Placement, objects: list[dict[str, Any]]) -> None:
    """Every rendered object is one the API server and Pod Security "restricted" admit."""
    idents = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(idents) == len(set(idents)), f"an object is rendered twice: {idents}"
    problems: list[str] = []
    for obj in objects:
        assert obj["metadata"]["namespace"] == lm.metadata.namespace
        if obj["kind"] not in UNVALIDATED_KINDS:
            try:
                kubernetes_validate.validate(obj, s.KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as err:
                problems.append(f"{obj['kind']}: {err.message} at {list(err.path)}")
        problems += kubecheck.object_problems(obj)
    for template in pod_templates(objects):
        problems += restricted_violations(template)
    assert problems == [], "\n".join(problems)

    config_map = next(o for o in objects if o["kind"] == "ConfigMap")
    served = RuntimeConfig.from_yaml(config_map["data"][CONFIGMAP_KEY])
    assert served == runtime_config(lm, placement)


def pipeline(
    body: Mapping[str, Any],
    nodes: Sequence[NodeInfo],
    catalog: AcceleratorCatalog,
    options: RenderOptions,
) -> None:
    """parse -> place -> render as the reconciler runs it, with every property checked."""
    lm = parse_or_none(body)
    if lm is None:
        return
    try:
        lm = with_alias(lm, default_models())
    except InvalidSpecError as exc:
        refusal = str(exc)
    else:
        refusal = None
    if refusal is not None:
        assert refusal.startswith(("spec.model.alias: ", "spec.cache.mode: ")), refusal
        return
    try:
        placement = place(lm.spec, nodes, catalog, pod_requests=functools.partial(pod_requests, lm))
    except NoServableTier as exc:
        refusal = str(exc)
        assert refusal.startswith("no tier in"), refusal
        return
    check_placement(lm, placement, nodes, catalog)
    event("placed", f"{placement.device.value} {placement.reason.value}")
    if placement.variant is not None:
        assert placement.variant == lm.spec.model.variant_for(placement.device)
        assert set(placement.devices) <= set(placement.variant.tiers)
        event("variant", placement.variant.resolved_format().value)
    objects = render(lm, placement, options)
    check_objects(lm.serving(placement.variant), placement, objects)
    assert render(lm, placement, options) == objects, "rendering is not deterministic"
    jobs = [o["metadata"]["name"] for o in objects if o["kind"] == "Job"]
    # The reconcile names the pull Job before it decides the size and the hold: those must not
    # change the Job.
    before = replace(options, model_size_bytes=None, hold_replicas=False, wake_replicas=False)
    assert [pull_job_name(lm, placement, before)] == (jobs or [None])


# --- the properties ---------------------------------------------------------------------------


@given(
    body=st.one_of(
        s.localmodel(valid=False), s.junk(), st.dictionaries(st.text(max_size=8), s.junk())
    )
)
def test_parsing_anything_raises_only_invalid_spec_errors(body: Any) -> None:
    if isinstance(body, Mapping):
        parse_or_none(body)
    else:
        with pytest.raises(InvalidSpecError):
            parse_localmodel({"metadata": {"name": "m"}, "spec": body})


@given(body=s.localmodel(), nodes=s.nodes(), catalog=s.catalogs(), options=render_options)
def test_generated_specs_place_and_render_valid_restricted_objects(
    body: dict[str, Any],
    nodes: list[NodeInfo],
    catalog: AcceleratorCatalog,
    options: RenderOptions,
) -> None:
    pipeline(body, nodes, catalog, options)


@settings(max_examples=max(10, EXAMPLES // 3))
@given(
    body=s.localmodel(
        st.fixed_dictionaries(
            {
                "model": st.fixed_dictionaries(
                    {"source": s.digest_source, "format": st.just("gguf")}
                ),
                "cache": st.fixed_dictionaries({"mode": st.just("Image")}),
            }
        )
    ),
    nodes=s.nodes(),
    options=render_options,
)
def test_image_cache_mode_renders_an_image_volume_by_digest(
    body: dict[str, Any], nodes: list[NodeInfo], options: RenderOptions
) -> None:
    pipeline(body, nodes, default_catalog(), options)


def _crd_spec_schema() -> dict[str, Any]:
    """The CRD's spec schema as JSON Schema, with free-form Kubernetes sub-objects left empty.

    Tolerations, affinity and network peers are passed through to the API server, which
    validates them there; the targeted strategies fill them with valid values instead.
    """

    def prune(schema: Any) -> Any:
        if isinstance(schema, dict):
            if schema.get("x-kubernetes-preserve-unknown-fields"):
                return {"type": "object", "maxProperties": 0}
            return {k: prune(v) for k, v in schema.items()}
        if isinstance(schema, list):
            return [prune(v) for v in schema]
        return schema

    spec = open_api_schema()["properties"]["spec"]
    return to_json_schema(prune(spec), strict=True)


@settings(max_examples=max(10, EXAMPLES // 3))
@given(
    spec=from_schema(_crd_spec_schema()),
    source=st.one_of(st.none(), s.source),
    name=st.one_of(s.dns_label, s.long_dns_label),
    nodes=s.nodes(),
    options=render_options,
)
def test_every_spec_the_crd_admits_is_served_or_refused_clearly(
    spec: dict[str, Any],
    source: str | None,
    name: str,
    nodes: list[NodeInfo],
    options: RenderOptions,
) -> None:
    if source is not None:
        # The schema only knows the scheme; most generated sources would stop at the parser.
        spec = {**spec, "model": {**spec["model"], "source": source}}
    body = {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "LocalModel",
        "metadata": {"name": name, "namespace": "ai", "uid": "uid-1"},
        "spec": spec,
    }
    try:
        admitted = not crd_errors(body)
    except ValueError:
        admitted = False  # an integer beyond int64, which the API server cannot decode
    assume(admitted)
    pipeline(apply_defaults(open_api_schema(), body), nodes, default_catalog(), options)
