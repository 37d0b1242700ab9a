"""Hypothesis strategies for LocalModel bodies, node inventories and accelerator catalogs.

Valid values come from targeted generators (every source scheme, Kubernetes sub-objects from
their own JSON schemas) and are mixed with near-misses and junk, so the same strategies reach
both the accepting and the rejecting paths of the parser.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import kubernetes_validate
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from slm_operator.catalog import AcceleratorCatalog, AcceleratorOption, Tier, default_catalog
from slm_operator.summary import NodeInfo
from slm_runtime.config import Device, ModelFormat

KUBERNETES_VERSION = "1.36.0"
_SCHEMAS = (
    Path(kubernetes_validate.__file__).parent
    / "kubernetes-json-schema"
    / f"v{KUBERNETES_VERSION}-local-strict"
)

Body = dict[str, Any]


def _k8s_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((_SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))
    schema.pop("$schema", None)
    schema.pop("$id", None)
    return schema


def junk() -> st.SearchStrategy[Any]:
    """Values of the wrong type or shape for any field."""
    return st.one_of(
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True),
        st.text(max_size=8),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    )


def obj(valid: bool = True, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Body]:
    """A mapping with each field present or absent; unless ``valid``, sometimes an unknown one."""
    optional = st.fixed_dictionaries({}, optional=fields)
    if valid:
        return optional
    unknown = st.fixed_dictionaries({"unexpectedField": st.integers()})
    with_unknown = st.tuples(optional, unknown).map(lambda pair: {**pair[0], **pair[1]})
    return st.one_of(optional, optional, optional, with_unknown)


# --- names and labels -------------------------------------------------------------------------

dns_label = st.from_regex(r"\A[a-z]([-a-z0-9]{0,10}[a-z0-9])?\Z")
long_dns_label = st.integers(40, 52).map(lambda n: ("m" + "-x" * 40)[:n].rstrip("-") or "m")
object_name = dns_label | st.from_regex(r"\A[a-z0-9]([-a-z0-9.]{0,20}[a-z0-9])?\Z")
label_key = st.from_regex(
    r"\A([a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?(\.[a-z]{2,4})?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?\Z"
)
label_value = st.from_regex(r"\A(([A-Za-z0-9][-A-Za-z0-9_.]{0,12})?[A-Za-z0-9])?\Z")
any_text = st.text(max_size=24)


def labels(valid_only: bool = False) -> st.SearchStrategy[dict[str, str]]:
    """Label maps: valid keys and values, or anything."""
    valid = st.dictionaries(label_key, label_value, max_size=3)
    if valid_only:
        return valid
    return st.one_of(valid, valid, st.dictionaries(any_text, any_text, max_size=2))


# --- model sources ----------------------------------------------------------------------------

hf_name = st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9._-]{0,10}[A-Za-z0-9])?\Z")
path_part = st.from_regex(r"\A[A-Za-z0-9_-][A-Za-z0-9._-]{0,10}\Z")
suffix = st.sampled_from(["", ".gguf", ".onnx", ".GGUF", ".bin", "/"])
rel_path = st.tuples(st.lists(path_part, min_size=1, max_size=3), suffix).map(
    lambda t: "/".join(t[0]) + t[1]
)
host = st.one_of(
    st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z]{2,5}){0,2}\Z"),
    st.sampled_from(["127.0.0.1", "[::1]", "localhost"]),
)
port = st.integers(0, 70000).map(lambda p: f":{p}")
host_port = st.tuples(host, st.one_of(st.just(""), port)).map(lambda t: "".join(t))
tag = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9._-]{0,12}\Z")
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
oci_repo = st.lists(st.from_regex(r"\A[a-z0-9]+([._-][a-z0-9]+)?\Z"), min_size=1, max_size=3).map(
    "/".join
)

hf_source = st.builds(
    lambda org, repo, rev, path: f"hf://{org}/{repo}{rev}/{path}",
    hf_name,
    hf_name,
    st.one_of(st.just(""), tag.map(lambda r: f"@{r}")),
    rel_path,
)
ollama_source = st.builds(
    lambda h, ns, model, t: f"ollama://{h}{ns}{model}{t}",
    st.one_of(st.just(""), host_port.map(lambda h: f"{h}/")),
    st.one_of(st.just(""), dns_label.map(lambda n: f"{n}/")),
    st.from_regex(r"\A[a-z0-9]([a-z0-9._-]{0,8}[a-z0-9])?\Z"),
    st.one_of(st.just(""), tag.map(lambda t: f":{t}")),
)
oci_source = st.builds(
    lambda h, repo, ref: f"oci://{h}/{repo}{ref}",
    host_port,
    oci_repo,
    st.one_of(tag.map(lambda t: f":{t}"), hex64.map(lambda d: f"@sha256:{d}"), st.just("")),
)
url_source = st.builds(
    lambda scheme, h, path, query: f"{scheme}://{h}/{path}{query}",
    st.sampled_from(["https", "http"]),
    host_port,
    rel_path,
    st.one_of(st.just(""), st.just("?download=true"), st.just("#frag")),
)
pvc_source = st.builds(lambda c, p: f"pvc://{c}/{p}", object_name, rel_path)
file_source = st.builds(lambda p: f"file:///{p}", rel_path)
garbled_source = st.builds(
    lambda scheme, rest: f"{scheme}://{rest}",
    st.sampled_from(["hf", "ollama", "oci", "https", "http", "pvc", "file", "s3", ""]),
    st.text(string.printable + "é@:/[]%", max_size=40),
)
source = st.one_of(
    hf_source, ollama_source, oci_source, url_source, pvc_source, file_source, garbled_source
)
digest_source = st.builds(
    lambda h, repo, d: f"oci://{h}/{repo}@sha256:{d}", host_port, oci_repo, hex64
)

# --- the spec ---------------------------------------------------------------------------------

quantity = st.one_of(
    st.from_regex(r"\A[1-9][0-9]{0,3}(m|Ki|Mi|Gi|k|M|G)?\Z"),
    st.integers(1, 10**6),
    st.floats(0.001, 64, allow_nan=False).map(lambda f: round(f, 3)),
)
odd_quantity = st.one_of(
    st.from_regex(
        r"\A(\+|-)?([0-9]{1,3}(\.[0-9]{0,2})?|\.[0-9]{1,2})([KMGTPE]i|[numkMGTPE]|[eE](\+|-)?[0-9]{1,3})?\Z"
    ),
    st.integers(-10, 0),
    st.sampled_from(["1e999", "-1Gi", "0", "0.5Ki", "1.5", "+1", "Gi", "1gb", ""]),
)
duration = st.from_regex(r"\A([0-9]{1,4}(ms|s|m|h)){1,2}\Z")
odd_duration = st.sampled_from(["", "5", "1d", "-1s", "1.s", "9" * 40 + "h"])
device = st.sampled_from([d.value for d in Device])
tolerations = st.lists(from_schema(_k8s_schema("toleration-v1")), max_size=2)
match_labels = st.fixed_dictionaries({"matchLabels": labels(valid_only=True)})
peer = st.one_of(
    st.fixed_dictionaries({"podSelector": match_labels}),
    st.fixed_dictionaries({"namespaceSelector": match_labels}),
    st.fixed_dictionaries({"ipBlock": st.fixed_dictionaries({"cidr": st.just("10.0.0.0/8")})}),
)
node_selector_term = st.fixed_dictionaries(
    {
        "matchExpressions": st.lists(
            st.fixed_dictionaries(
                {"key": label_key, "operator": st.sampled_from(["Exists", "DoesNotExist"])}
            ),
            max_size=2,
        )
    }
)
affinity: st.SearchStrategy[Body] = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {
            "nodeAffinity": st.fixed_dictionaries(
                {
                    "requiredDuringSchedulingIgnoredDuringExecution": st.fixed_dictionaries(
                        {"nodeSelectorTerms": st.lists(node_selector_term, min_size=1, max_size=2)}
                    )
                }
            )
        }
    ),
)
spread = st.fixed_dictionaries(
    {
        "maxSkew": st.integers(1, 3),
        "topologyKey": st.sampled_from(["kubernetes.io/hostname", "topology.kubernetes.io/zone"]),
        "whenUnsatisfiable": st.sampled_from(["DoNotSchedule", "ScheduleAnyway"]),
        "labelSelector": match_labels,
    }
)
modelfile_text = st.one_of(
    st.text(max_size=64),
    st.sampled_from(
        [
            "{{ .Prompt }}",
            "{{- range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}",
            "{{ if .System }}{{ .System }}{{ end }}{{ .Prompt",
            "{{ .Unknown.Field }}",
            "---\nkey: value\n",
            "'\"\\\x00",
        ]
    ),
)


def spec(valid: bool = True) -> st.SearchStrategy[Body]:
    """A LocalModel spec.

    ``valid`` keeps every field inside its documented bounds (sources and Kubernetes values may
    still be refused by the parser); otherwise out-of-range values, wrong types and unknown keys
    are mixed in everywhere.
    """

    def pick(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        if valid:
            return good
        return st.one_of(good, good, good, bad, junk())

    def fields(**kwargs: st.SearchStrategy[Any]) -> st.SearchStrategy[Body]:
        return pick(obj(valid, **kwargs), junk())

    parameters = fields(
        temperature=pick(st.floats(0, 2), st.floats(allow_nan=True)),
        topP=pick(st.floats(0.01, 1), st.floats(-1, 0)),
        topK=pick(st.integers(0, 1000), st.integers(-5, -1)),
        minP=pick(st.floats(0, 1), st.floats(1.01, 5)),
        contextLength=pick(st.integers(128, 1_048_576), st.integers(0, 127)),
        numPredict=pick(st.integers(-1, 1_048_576), st.integers(-9, -2)),
        repeatPenalty=pick(st.floats(0, 10), st.floats(-1, -0.01)),
        repeatLastN=pick(st.integers(-1, 100), st.integers(-9, -2)),
        presencePenalty=pick(st.floats(-2, 2), st.floats(2.01, 9)),
        frequencyPenalty=pick(st.floats(-2, 2), st.floats(-9, -2.01)),
        seed=pick(st.integers(0, 2**32 - 1), st.integers(2**32, 2**64)),
        stop=pick(
            st.lists(st.text(min_size=1, max_size=8), max_size=16),
            st.lists(st.text(max_size=300), max_size=18),
        ),
        numThread=pick(st.integers(1, 1024), st.integers(-1, 0)),
    )
    whole = obj(
        valid,
        model=pick(
            st.fixed_dictionaries(
                {"source": pick(source, st.text(max_size=12))},
                optional={
                    "format": pick(st.sampled_from(["gguf", "onnx"]), st.just("safetensors")),
                    "sha256": pick(hex64, st.text("0123456789abcdefABCDEF", max_size=66)),
                    "credentialsSecret": pick(object_name, any_text),
                    "allowInsecure": st.booleans(),
                },
            ),
            st.fixed_dictionaries({}),
        ),
        cache=fields(
            mode=pick(st.sampled_from(["Volume", "PerPod", "Image"]), st.just("volume")),
            size=pick(quantity, odd_quantity),
            storageClassName=st.one_of(st.just(""), object_name),
            accessMode=pick(
                st.sampled_from(
                    ["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod"]
                ),
                st.just("RWO"),
            ),
            reclaimPolicy=pick(st.sampled_from(["Delete", "Retain"]), st.just("Recycle")),
        ),
        hardware=fields(
            preferred=pick(device, st.just("tpu")),
            fallback=pick(
                st.lists(device, max_size=2, unique=True),
                st.lists(st.one_of(device, st.just("tpu")), max_size=3),
            ),
            fallbackAfter=pick(duration, odd_duration),
        ),
        parameters=parameters,
        system=modelfile_text,
        template=modelfile_text,
        serving=fields(
            replicas=pick(st.integers(0, 1000), st.integers(-1, -1)),
            port=pick(st.integers(1024, 65535), st.integers(0, 70000)),
            parallel=pick(st.integers(1, 64), st.integers(0, 0)),
            apis=pick(
                st.lists(
                    st.sampled_from(["ollama", "openai"]), min_size=1, max_size=2, unique=True
                ),
                st.lists(st.sampled_from(["ollama", "openai", "grpc"]), max_size=3),
            ),
            authSecret=pick(object_name, any_text),
            networkPolicy=fields(enabled=st.booleans(), allowFrom=st.lists(peer, max_size=2)),
        ),
        resources=fields(
            requests=fields(
                cpu=pick(quantity, odd_quantity),
                memory=pick(quantity, odd_quantity),
                **{"ephemeral-storage": pick(quantity, odd_quantity)},
            ),
            limits=fields(
                cpu=pick(quantity, odd_quantity),
                memory=pick(quantity, odd_quantity),
                **{"ephemeral-storage": pick(quantity, odd_quantity)},
            ),
        ),
        scheduling=fields(
            nodeSelector=labels(valid_only=valid),
            tolerations=tolerations,
            affinity=affinity,
            topologySpreadConstraints=st.lists(spread, max_size=2),
            priorityClassName=pick(object_name, any_text),
            podLabels=labels(valid_only=valid),
            podAnnotations=st.dictionaries(
                label_key if valid else st.one_of(label_key, any_text), any_text, max_size=3
            ),
        ),
        monitoring=fields(
            serviceMonitor=st.booleans(),
            interval=pick(duration, odd_duration),
            labels=labels(valid_only=valid),
        ),
        autoscaling=fields(
            enabled=st.booleans(),
            minReplicas=pick(st.integers(1, 6), st.integers(-1, 0)),
            maxReplicas=pick(st.integers(1, 6), st.integers(1001, 1002)),
            targetCpuUtilization=pick(st.none() | st.integers(1, 100), st.integers(101, 200)),
            targetInflightRequests=pick(st.none() | st.integers(1, 1024), st.integers(-1, 0)),
        ),
        runtime=fields(
            image=st.one_of(st.just(""), st.just("registry.example.com/slm-runtime:1.0"), any_text),
            imagePullPolicy=pick(
                st.sampled_from(["Always", "IfNotPresent", "Never"]), st.just("Sometimes")
            ),
            imagePullSecrets=st.lists(
                st.fixed_dictionaries({"name": pick(object_name, any_text)}), max_size=2
            ),
        ),
    )
    if not valid:
        return whole
    return st.tuples(whole, source).map(lambda pair: _tidy(*pair))


def _tidy(spec: Body, fallback_source: str) -> Body:
    """Satisfy the cross-field rules the valid strategy would otherwise break half the time."""
    spec.setdefault("model", {"source": fallback_source})
    hardware = spec.get("hardware", {})
    if "preferred" in hardware and "fallback" in hardware:
        hardware["fallback"] = [d for d in hardware["fallback"] if d != hardware["preferred"]]
    autoscaling = spec.get("autoscaling", {})
    if "minReplicas" in autoscaling and "maxReplicas" in autoscaling:
        low, high = sorted((autoscaling["minReplicas"], autoscaling["maxReplicas"]))
        autoscaling.update(minReplicas=low, maxReplicas=high)
    elif "minReplicas" in autoscaling or "maxReplicas" in autoscaling:
        autoscaling.pop("minReplicas", None)
        autoscaling.pop("maxReplicas", None)
    return spec


def localmodel(
    spec_strategy: st.SearchStrategy[Any] | None = None, *, valid: bool = True
) -> st.SearchStrategy[Body]:
    """A whole LocalModel body as the API server hands it to the operator."""
    names = st.one_of(dns_label, long_dns_label)
    return st.fixed_dictionaries(
        {
            "apiVersion": st.just("slm.dev/v1alpha1"),
            "kind": st.just("LocalModel"),
            "metadata": st.fixed_dictionaries(
                {
                    "name": names if valid else st.one_of(names, any_text),
                    "namespace": dns_label,
                    "uid": st.uuids().map(str),
                    "generation": st.integers(1, 10),
                }
            ),
            "spec": spec(valid) if spec_strategy is None else spec_strategy,
        }
    )


# --- nodes and catalogs -----------------------------------------------------------------------

DEVICE_RESOURCES = ("intel.com/npu", "amd.com/xdna", "nvidia.com/gpu", "amd.com/gpu", "x.io/tpu")
GIB = 1024**3

taint = st.fixed_dictionaries(
    {
        "key": st.sampled_from(["nvidia.com/gpu", "amd.com/gpu", "dedicated", "intel.com/npu"]),
        "effect": st.sampled_from(["NoSchedule", "NoExecute", "PreferNoSchedule"]),
    },
    optional={"value": st.sampled_from(["present", "true", "ai"])},
)
node_labels = st.dictionaries(
    st.sampled_from(["nvidia.com/gpu.present", "pool", "kubernetes.io/arch"]),
    st.sampled_from(["true", "ai", "amd64"]),
    max_size=2,
)


@st.composite
def node(draw: st.DrawFn, index: int) -> NodeInfo:
    """One node with cores, memory, maybe devices, some of it already requested."""
    allocatable = {
        "cpu": float(draw(st.integers(0, 64))),
        "memory": float(draw(st.integers(0, 256))) * GIB,
        "pods": 110.0,
    }
    for resource in draw(st.lists(st.sampled_from(DEVICE_RESOURCES), max_size=2, unique=True)):
        allocatable[resource] = float(draw(st.integers(0, 8)))
    requested = {
        name: float(draw(st.integers(0, int(value)))) if value else 0.0
        for name, value in allocatable.items()
        if draw(st.booleans())
    }
    return NodeInfo(
        name=f"node-{index}",
        ready=draw(st.booleans().map(lambda b: b or draw(st.booleans()))),
        unschedulable=draw(st.integers(0, 9)) == 0,
        labels=draw(node_labels),
        taints=draw(st.lists(taint, max_size=2)),
        allocatable=allocatable,
        requested=requested,
    )


@st.composite
def nodes(draw: st.DrawFn) -> list[NodeInfo]:
    """A node inventory of up to six nodes (possibly none)."""
    count = draw(st.integers(0, 6))
    return [draw(node(i)) for i in range(count)]


option = st.builds(
    AcceleratorOption,
    name=dns_label,
    resource=st.one_of(st.none(), st.sampled_from(DEVICE_RESOURCES)),
    count=st.integers(1, 4),
    formats=st.lists(st.sampled_from(list(ModelFormat)), min_size=1, max_size=2, unique=True),
    image=st.just("registry.example.com/runtime:1"),
    runtime_class_name=st.one_of(st.none(), dns_label),
    node_selector=st.dictionaries(label_key, label_value, max_size=2),
    tolerations=tolerations,
    env=st.dictionaries(
        st.from_regex(r"\A[A-Z][A-Z0-9_]{0,10}\Z"), st.text(max_size=8), max_size=2
    ),
)


@st.composite
def catalogs(draw: st.DrawFn) -> AcceleratorCatalog:
    """The default catalog, or a random one (tiers in any order, some absent)."""
    if draw(st.booleans()):
        return default_catalog()
    devices = draw(st.lists(st.sampled_from(list(Device)), max_size=3, unique=True))
    tiers = []
    for tier_device in devices:
        options = draw(st.lists(option, min_size=1, max_size=2))
        if tier_device is Device.CPU:
            options = [o.model_copy(update={"resource": None}) for o in options]
        tiers.append(Tier(device=tier_device, options=options))
    return AcceleratorCatalog(tiers=tiers)
