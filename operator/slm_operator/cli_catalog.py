"""slmctl catalog: the operator's model aliases, their variants, and the tiers the cluster can
serve now.

The catalogs come from the ConfigMap the chart renders (``catalog.yaml``, ``models.yaml``), else
the built-in ones; the nodes from the API server. Reading them (``read_catalogs``,
``read_nodes``) is apart from what is shown (``tier_misfits``, ``catalog_report``,
``catalog_table``), which is pure.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import yaml
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ValidationError
from slm_runtime.config import Device, ModelFormat

from slm_operator.aliases import CatalogModel, ModelCatalog, default_models
from slm_operator.api import format_validation_error
from slm_operator.catalog import AcceleratorCatalog, AcceleratorOption, default_catalog
from slm_operator.cli_cluster import CliError, Cluster, Object, connect
from slm_operator.cli_output import dump, table
from slm_operator.names import LABEL_COMPONENT, MANAGER_NAME
from slm_operator.place import NOT_IN_CATALOG, option_misfit
from slm_operator.summary import NodeInfo, node_info
from slm_operator.variants import ModelVariant

CATALOG_SELECTOR: Final = f"app.kubernetes.io/part-of={MANAGER_NAME},{LABEL_COMPONENT}=catalog"
"""The labels of the ConfigMap the chart renders both catalogs into (part-of stays slm-operator
under a nameOverride)."""
ACCELERATORS_KEY: Final = "catalog.yaml"
MODELS_KEY: Final = "models.yaml"
BUILT_IN: Final = "built-in"

_Catalog = TypeVar("_Catalog", bound=BaseModel)

Misfits = dict[Device, list[tuple[AcceleratorOption, str | None]]]
"""Per tier of the accelerator catalog, each option and why no node can take one of its pods
(None: some node can)."""


@dataclass(frozen=True)
class Catalogs:
    """The model and accelerator catalogs slmctl shows and checks aliases against."""

    models: ModelCatalog
    accelerators: AcceleratorCatalog
    configmap: str | None = None
    """``namespace/name`` of the operator's ConfigMap; None for the built-in catalogs."""
    note: str | None = None
    """Why the built-in catalogs are used, if they are."""

    @property
    def origin(self) -> str:
        """Where the catalogs come from, as the output says it."""
        return f"ConfigMap {self.configmap}" if self.configmap else BUILT_IN


def built_in(note: str | None = None) -> Catalogs:
    """The catalogs the operator uses when its chart sets none."""
    return Catalogs(default_models(), default_catalog(), None, note)


def _parse(
    where: str,
    data: Mapping[str, str],
    key: str,
    kind: type[_Catalog],
    default: Callable[[], _Catalog],
) -> _Catalog:
    """One catalog of the ConfigMap; the built-in one when the key is absent, as for the
    operator."""
    if key not in data:
        return default()
    try:
        return kind.model_validate(yaml.safe_load(data[key] or "") or {})
    except yaml.YAMLError as exc:
        problem = f"is not YAML: {exc}"
    except ValidationError as exc:
        problem = f"is not a valid catalog: {format_validation_error(exc)}"
    raise CliError(" ".join(f"ConfigMap {where}: {key} {problem}".split()))


def from_configmap(configmap: Mapping[str, Any]) -> Catalogs:
    """The catalogs of one ConfigMap."""
    meta = configmap.get("metadata") or {}
    where = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    data = configmap.get("data") or {}
    return Catalogs(
        _parse(where, data, MODELS_KEY, ModelCatalog, default_models),
        _parse(where, data, ACCELERATORS_KEY, AcceleratorCatalog, default_catalog),
        where,
    )


def from_configmaps(items: Sequence[Mapping[str, Any]], where: str) -> Catalogs:
    """The catalogs of the one ConfigMap found. Several is an error naming them: anyone who may
    create a ConfigMap somewhere could otherwise choose the catalog slmctl shows and checks."""
    if not items:
        return built_in(f"no operator catalog ConfigMap (labels {CATALOG_SELECTOR}) {where}")

    def key(cm: Mapping[str, Any]) -> tuple[str, str]:
        meta = cm.get("metadata") or {}
        return str(meta.get("namespace", "")), str(meta.get("name", ""))

    ordered = sorted(items, key=key)
    if len(ordered) > 1:
        names = ", ".join("/".join(key(cm)) for cm in ordered)
        raise CliError(
            f"{len(ordered)} operator catalogs found ({names}); name the operator's namespace "
            "with --operator-namespace"
        )
    return from_configmap(ordered[0])


def api_error(exc: ApiException) -> str:
    """An API error in a few words: ``403 Forbidden: configmaps is forbidden: ...``."""
    try:
        message = json.loads(exc.body or b"{}").get("message")
    except (ValueError, TypeError, AttributeError):
        message = None
    return f"{exc.status} {exc.reason}" + (f": {message}" if message else "")


def read_catalogs(cluster: Cluster, operator_namespace: str | None) -> Catalogs:
    """The operator's catalogs from its ConfigMap (in ``operator_namespace``, else in any);
    the built-in ones, with a note saying why, when none can be read."""
    path, where = "/api/v1/configmaps", "in any namespace"
    if operator_namespace:
        path = f"/api/v1/namespaces/{operator_namespace}/configmaps"
        where = f"in namespace {operator_namespace}"
    try:
        listed = cluster.request("GET", path, query=[("labelSelector", CATALOG_SELECTOR)])
    except ApiException as exc:
        return built_in(f"cannot list ConfigMaps {where} ({api_error(exc)})")
    return from_configmaps(listed.get("items") or [], where)


def read_nodes(cluster: Cluster) -> list[NodeInfo] | str:
    """Every node as placement sees it, or why they cannot be listed."""
    try:
        listed = cluster.request("GET", "/api/v1/nodes")
    except ApiException as exc:
        return f"cannot list nodes: {api_error(exc)}"
    return [node_info(obj) for obj in listed.get("items") or []]


# --- what is shown: pure ----------------------------------------------------------------------


def tier_misfits(accelerators: AcceleratorCatalog, nodes: Sequence[NodeInfo]) -> Misfits:
    """Whether some node has room for one pod of each option, as placement judges it for a
    LocalModel without spec.scheduling: the option's own nodeSelector and tolerations, no pod
    requests beyond the accelerator."""
    return {
        tier.device: [
            (
                option,
                option_misfit(
                    option,
                    nodes,
                    node_selector=option.node_selector,
                    tolerations=option.tolerations,
                    pod_requests={},
                ),
            )
            for option in tier.options
        ]
        for tier in accelerators.tiers
    }


def _format(variant: ModelVariant) -> ModelFormat | None:
    try:
        return variant.resolved_format()
    except ValueError:
        return None


def servable_now(entry: CatalogModel, misfits: Misfits) -> list[Device]:
    """The tiers where a variant of the model could run now: some option of the tier serves
    the variant's format and has room."""
    found = []
    for device in entry.tiers():
        variant = next(v for v in entry.variants if device in v.tiers)
        fmt = _format(variant)
        if any(
            miss is None and (fmt is None or fmt in option.formats)
            for option, miss in misfits.get(device, [])
        ):
            found.append(device)
    return found


def _tier_state(device: Device, misfits: Misfits | None, unknown: str | None) -> Object:
    state: Object = {"tier": device.value}
    if misfits is None:
        return {**state, "servableNow": None, "reason": unknown}
    options = misfits.get(device)
    if not options:
        return {**state, "servableNow": False, "reason": NOT_IN_CATALOG}
    if any(miss is None for _, miss in options):
        return {**state, "servableNow": True}
    reasons = list(dict.fromkeys(str(miss) for _, miss in options))
    return {**state, "servableNow": False, "reason": "; ".join(reasons)}


def catalog_report(catalogs: Catalogs, nodes: Sequence[NodeInfo] | str) -> Object:
    """What ``slmctl catalog`` shows, as data (``-o yaml|json``; the table is made from it).

    ``nodes`` is the cluster's nodes, or why they could not be listed.
    """
    misfits = None if isinstance(nodes, str) else tier_misfits(catalogs.accelerators, nodes)
    unknown = nodes if isinstance(nodes, str) else None
    report: Object = {"catalog": catalogs.origin}
    if catalogs.note:
        report["note"] = catalogs.note
    report["tiers"] = [_tier_state(device, misfits, unknown) for device in Device]
    report["models"] = [
        {
            "alias": alias,
            "description": entry.description,
            "servableNow": None
            if misfits is None
            else [d.value for d in servable_now(entry, misfits)],
            "variants": [
                {
                    "name": v.name,
                    "tiers": [d.value for d in Device if d in v.tiers],
                    "format": fmt.value if (fmt := _format(v)) else None,
                    "source": v.source,
                    "pinned": v.sha256 is not None,
                }
                for v in entry.variants
            ],
        }
        for alias, entry in sorted(catalogs.models.root.items())
    ]
    return report


def catalog_table(report: Mapping[str, Any]) -> str:
    """The ``slmctl catalog`` table: a row per variant, the alias and the tiers it can be served
    on now in its first row; then the cluster's tiers and where the catalog comes from."""
    rows = [["ALIAS", "VARIANT", "TIERS", "FORMAT", "PINNED", "SERVABLE NOW", "SOURCE"]]
    for model in report["models"]:
        servable = model["servableNow"]
        now = "unknown" if servable is None else ",".join(servable) or "none"
        for index, variant in enumerate(model["variants"]):
            first = index == 0
            rows.append(
                [
                    model["alias"] if first else "",
                    variant["name"],
                    ",".join(variant["tiers"]),
                    variant["format"] or "?",
                    "yes" if variant["pinned"] else "no",
                    now if first else "",
                    variant["source"],
                ]
            )
    text = table(rows) + "\n" + tiers_text(report["tiers"])
    note = f" ({report['note']})" if report["catalog"] == BUILT_IN and "note" in report else ""
    return text + f"Catalog: {report['catalog']}{note}\n"


def tiers_text(tiers: Sequence[Mapping[str, Any]]) -> str:
    """``Servable now: gpu,cpu``, then why each other tier is not (or why it is unknown)."""
    if any(t["servableNow"] is None for t in tiers):
        return f"Servable now: unknown ({tiers[0]['reason']})\n"
    servable = [t["tier"] for t in tiers if t["servableNow"]]
    text = (
        f"Servable now: {','.join(servable) or 'none'} (for a LocalModel without spec.scheduling)\n"
    )
    return text + "".join(f"  {t['tier']}: {t['reason']}\n" for t in tiers if not t["servableNow"])


def cmd_catalog(args: argparse.Namespace) -> int:
    """List the model aliases, their variants, and the tiers the cluster can serve them on."""
    cluster = connect(args)
    catalogs = read_catalogs(cluster, args.operator_namespace)
    if catalogs.configmap is None:
        print(f"warning: {catalogs.note}; showing the built-in catalog", file=sys.stderr)
    elif catalogs.note:
        print(f"note: {catalogs.note}", file=sys.stderr)
    report = catalog_report(catalogs, read_nodes(cluster))
    if args.output == "table":
        print(catalog_table(report), end="")
    else:
        print(dump(report, args.output), end="")
    return 0


# --- slmctl run --alias -----------------------------------------------------------------------


def alias_refusal(alias: str, catalogs: Catalogs) -> str | None:
    """Why ``alias`` cannot be run (not in the catalog), or None."""
    if catalogs.models.get(alias) is not None:
        return None
    known = ", ".join(catalogs.models.names()) or "none"
    where = (
        f"the operator's model catalog ({catalogs.origin})"
        if catalogs.configmap
        else f"the built-in model catalog ({catalogs.note})"
    )
    return (
        f"alias {alias!r} is not in {where}; it has: {known} (see: slmctl catalog), or give "
        "--source"
    )


def add_catalog_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """``slmctl catalog``'s arguments."""
    cat = sub.add_parser(
        "catalog",
        parents=[common],
        help="list the model aliases and the tiers the cluster can serve them on",
    )
    add_operator_namespace(cat)
    cat.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    cat.set_defaults(func=cmd_catalog)


def add_operator_namespace(parser: argparse.ArgumentParser) -> None:
    """``--operator-namespace``: where the operator's catalog ConfigMap is."""
    parser.add_argument(
        "--operator-namespace",
        metavar="NS",
        help="namespace of the operator's catalog ConfigMap (default: search every namespace)",
    )
