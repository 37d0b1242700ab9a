"""The model's pods, pure: the Deployment that serves it and the Job that pulls it, with their
containers, volumes, probes, security contexts and resources."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from slm_runtime.config import (
    CONFIG_DIR,
    ENV_API_TOKEN,
    ENV_HOME,
    ENV_SOURCE_PASSWORD,
    ENV_SOURCE_TOKEN,
    ENV_SOURCE_USERNAME,
    HEALTHZ_PATH,
    MODELS_DIR,
    PORT_NAME,
    READYZ_PATH,
    RUNTIME_GID,
    RUNTIME_UID,
    SECRET_KEY_PASSWORD,
    SECRET_KEY_TOKEN,
    SECRET_KEY_USERNAME,
    TERMINATION_LOG_PATH,
    TMP_DIR,
    pull_command,
    serve_command,
)
from slm_runtime.cpus import CPU_REQUEST_DIVISOR, ENV_CPU_REQUEST
from slm_runtime.sources import (
    Credentials,
    FileSource,
    OciSource,
    PvcSource,
    Source,
)

from slm_operator.api import LocalModel
from slm_operator.children import (
    _PULL_INFIX,
    CONFIG_HASH_ANNOTATION,
    CONFIG_VOLUME,
    DEFAULT_CONTAINER_ANNOTATION,
    ENV_ALLOW_INSECURE,
    ENV_TOKEN_REALM_HOSTS,
    JOB_NAME_MAX_LENGTH,
    MODEL_VOLUME,
    PRESTOP_SLEEP_SECONDS,
    PROGRESS_DEADLINE_SECONDS,
    PULL_BACKOFF_LIMIT,
    PULL_BAD_INPUT_EXIT_CODE,
    PULL_CONTAINER,
    PULL_RESOURCES,
    PULLER_APP_NAME,
    READINESS_FAILURE_THRESHOLD,
    READINESS_PERIOD_SECONDS,
    REVISION_HISTORY_LIMIT,
    SERVER_CONTAINER,
    STARTUP_FAILURE_THRESHOLD,
    STARTUP_PERIOD_SECONDS,
    TMP_SIZE_LIMIT,
    TMP_VOLUME,
    Object,
    RenderOptions,
    _digest,
    _metadata,
    _source,
    image,
    labels,
    model_hash,
    pvc_name,
    runtime_config,
    selector_labels,
)
from slm_operator.kinds import (
    DEPLOYMENT,
    JOB,
)
from slm_operator.names import (
    COMPONENT_PULLER,
    LABEL_NAME,
)
from slm_operator.place import Placement
from slm_operator.sizing import pod_resources
from slm_operator.spec import CacheMode


def _pod_security_context() -> Object:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_GID,
        "fsGroup": RUNTIME_GID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security_context() -> Object:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _tmp_volume() -> Object:
    return {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}}


def _tmp_mount() -> Object:
    return {"name": TMP_VOLUME, "mountPath": TMP_DIR}


def _model_mount(*, read_only: bool) -> Object:
    # The API server drops a false readOnly, so only true is written (else every compare drifts).
    mount: Object = {"name": MODEL_VOLUME, "mountPath": MODELS_DIR}
    if read_only:
        mount["readOnly"] = True
    return mount


def _secret_env(name: str, secret: str, key: str, *, optional: bool) -> Object:
    ref: Object = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def _pull_env(lm: LocalModel, source: Source, realm_hosts: Sequence[str]) -> list[Object]:
    """HOME, the insecure opt-in, the trusted token services and the source credentials: only
    the pull container gets these."""
    env: list[Object] = [{"name": ENV_HOME, "value": TMP_DIR}]
    if lm.spec.model.allow_insecure:
        env.append({"name": ENV_ALLOW_INSECURE, "value": "true"})
    if realm_hosts and source.credentials is Credentials.REGISTRY:
        env.append({"name": ENV_TOKEN_REALM_HOSTS, "value": ",".join(realm_hosts)})
    secret = lm.spec.model.credentials_secret
    if secret and source.credentials is not Credentials.NONE:
        # hf and https take a bearer token, so a missing Secret or key is reported by the
        # kubelet; registries accept a token or a username/password pair, so each key is optional.
        token_only = source.credentials is Credentials.TOKEN
        env.append(_secret_env(ENV_SOURCE_TOKEN, secret, SECRET_KEY_TOKEN, optional=not token_only))
        if not token_only:
            env.append(_secret_env(ENV_SOURCE_USERNAME, secret, SECRET_KEY_USERNAME, optional=True))
            env.append(_secret_env(ENV_SOURCE_PASSWORD, secret, SECRET_KEY_PASSWORD, optional=True))
    return env


def _pull_container(
    lm: LocalModel,
    source: Source,
    pull_image: str,
    *,
    model_writable: bool,
    with_model: bool,
    realm_hosts: Sequence[str] = (),
) -> Object:
    spec = lm.spec
    mounts = [_tmp_mount()]
    if with_model:
        mounts.insert(0, _model_mount(read_only=not model_writable))
    return {
        "name": PULL_CONTAINER,
        "image": pull_image,
        "imagePullPolicy": spec.runtime.image_pull_policy.value,
        "command": pull_command(
            spec.model.served_source,
            MODELS_DIR,
            spec.model.sha256,
            spec.model.resolved_format().value,
        ),
        "env": _pull_env(lm, source, realm_hosts),
        "resources": PULL_RESOURCES,
        "securityContext": _container_security_context(),
        "terminationMessagePath": TERMINATION_LOG_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }


def _node_selector(lm: LocalModel, placement: Placement) -> dict[str, str]:
    # The tier's labels win over the user's: they are what the accelerator needs.
    return dict(sorted({**lm.spec.scheduling.node_selector, **placement.node_selector}.items()))


def _tolerations(lm: LocalModel, placement: Placement) -> list[Object]:
    merged: list[Object] = []
    for toleration in [*placement.tolerations, *lm.spec.scheduling.tolerations]:
        if toleration not in merged:
            merged.append(dict(toleration))
    return merged


def _cpu_request_env() -> Object:
    """The server's cpu request, in millicores, for its default generation thread count.

    Without a cpu limit the container has no quota, and its affinity is every core of the node.
    """
    return {
        "name": ENV_CPU_REQUEST,
        "valueFrom": {
            "resourceFieldRef": {
                "containerName": SERVER_CONTAINER,
                "resource": "requests.cpu",
                "divisor": CPU_REQUEST_DIVISOR,
            }
        },
    }


def _image_pull_secrets(lm: LocalModel) -> list[Object]:
    return [{"name": ref.name} for ref in lm.spec.runtime.image_pull_secrets]


def _set_if(target: Object, key: str, value: Any) -> None:
    if value:
        target[key] = value


# --- objects ----------------------------------------------------------------------------------


def _pull_job_name(lm: LocalModel, job_hash: str) -> str:
    # The longest LocalModel names are cut short; the hash covers the pod labels, which carry
    # the whole name, so two models sharing a prefix still get distinct Jobs.
    room = JOB_NAME_MAX_LENGTH - len(_PULL_INFIX) - len(job_hash)
    return f"{lm.metadata.name[:room]}{_PULL_INFIX}{job_hash}"


def pull_job(lm: LocalModel, placement: Placement, options: RenderOptions) -> Object:
    """``<lm>-pull-<hash8>``: fills the model PVC once; no TTL, so status can read its result.

    ``<lm>`` is cut to its first 49 characters, as the Job's name is limited to 63.
    """
    source = _source(lm)
    scheduling = lm.spec.scheduling
    pod_labels = {**labels(lm, COMPONENT_PULLER), LABEL_NAME: PULLER_APP_NAME}
    pod_spec: Object = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security_context(),
        "containers": [
            _pull_container(
                lm,
                source,
                options.pull_image or image(lm, placement),
                model_writable=True,
                with_model=True,
                realm_hosts=options.token_realm_hosts,
            )
        ],
        "volumes": [
            {"name": MODEL_VOLUME, "persistentVolumeClaim": {"claimName": pvc_name(lm)}},
            _tmp_volume(),
        ],
    }
    # Scheduled like the servers (without their accelerator), so a zonal volume is provisioned
    # where they can mount it.
    _set_if(pod_spec, "nodeSelector", _node_selector(lm, placement))
    _set_if(pod_spec, "tolerations", _tolerations(lm, placement))
    _set_if(pod_spec, "affinity", scheduling.affinity)
    _set_if(pod_spec, "imagePullSecrets", _image_pull_secrets(lm))
    template = {"metadata": {"labels": pod_labels}, "spec": pod_spec}
    job_hash = _digest({"model": model_hash(lm), "template": template})[:8]
    return {
        "apiVersion": JOB.api_version,
        "kind": JOB.kind,
        "metadata": _metadata(lm, _pull_job_name(lm, job_hash), COMPONENT_PULLER),
        "spec": {
            "backoffLimit": PULL_BACKOFF_LIMIT,
            "podFailurePolicy": {
                "rules": [
                    # A pull pod evicted or preempted does not count against backoffLimit.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": PULL_CONTAINER,
                            "operator": "In",
                            "values": [PULL_BAD_INPUT_EXIT_CODE],
                        },
                    },
                ]
            },
            "template": template,
        },
    }


def _model_storage(
    lm: LocalModel,
    source: Source,
    server_image: str,
    pull_image: str,
    realm_hosts: Sequence[str],
) -> tuple[list[Object], list[Object], bool]:
    """(init containers, model volumes, whether the server mounts /models) for the pod."""
    cache = lm.spec.cache
    if isinstance(source, FileSource):
        # The file is inside the server's image, so that image verifies it.
        verify = _pull_container(lm, source, server_image, model_writable=False, with_model=False)
        return [verify], [], False
    if isinstance(source, PvcSource):
        volume = {
            "name": MODEL_VOLUME,
            "persistentVolumeClaim": {"claimName": source.claim, "readOnly": True},
        }
        verify = _pull_container(lm, source, pull_image, model_writable=False, with_model=True)
        return [verify], [volume], True
    if cache.mode is CacheMode.VOLUME:
        volume = {
            "name": MODEL_VOLUME,
            "persistentVolumeClaim": {"claimName": pvc_name(lm), "readOnly": True},
        }
        return [], [volume], True
    if cache.mode is CacheMode.PER_POD:
        volume = {"name": MODEL_VOLUME, "emptyDir": {"sizeLimit": cache.size}}
        pull = _pull_container(
            lm,
            source,
            pull_image,
            model_writable=True,
            with_model=True,
            realm_hosts=realm_hosts,
        )
        # The emptyDir lives on the node's disk: request it so the scheduler accounts for it.
        pull["resources"] = {
            "requests": {**PULL_RESOURCES["requests"], "ephemeral-storage": cache.size},
            "limits": PULL_RESOURCES["limits"],
        }
        return [pull], [volume], True
    if not isinstance(source, OciSource) or source.digest is None:
        raise ValueError(
            "spec.cache.mode: Image needs an oci:// source pinned by digest "
            "(oci://HOST/REPO@sha256:HEX)"
        )
    reference = f"{source.host}/{source.repository}@{source.digest}"
    volume = {"name": MODEL_VOLUME, "image": {"reference": reference, "pullPolicy": "IfNotPresent"}}
    return [], [volume], True


def _server_resources(lm: LocalModel, placement: Placement, options: RenderOptions) -> Object:
    base = pod_resources(lm.spec, options.model_size_bytes)
    requests = {**base.get("requests", {}), **placement.resources}
    limits = {**base.get("limits", {}), **placement.resources}
    resources: Object = {}
    _set_if(resources, "requests", dict(sorted(requests.items())))
    _set_if(resources, "limits", dict(sorted(limits.items())))
    return resources


def _probe(path: str, period: int, failure_threshold: int) -> Object:
    return {
        "httpGet": {"path": path, "port": PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failure_threshold,
    }


def config_hash(config: Mapping[str, Any]) -> str:
    """Digest of the ConfigMap's data; on the pod template so a config change rolls the pods."""
    return _digest(config["data"])[:16]


def deployment(
    lm: LocalModel, placement: Placement, options: RenderOptions, config: Mapping[str, Any]
) -> Object:
    """``<lm>``: the model server pods."""
    spec = lm.spec
    scheduling = spec.scheduling
    source = _source(lm)
    server_image = image(lm, placement)
    init_containers, model_volumes, mounts_model = _model_storage(
        lm, source, server_image, options.pull_image or server_image, options.token_realm_hosts
    )

    env: list[Object] = [{"name": ENV_HOME, "value": TMP_DIR}, _cpu_request_env()]
    if spec.serving.auth_secret:
        env.append(
            _secret_env(ENV_API_TOKEN, spec.serving.auth_secret, SECRET_KEY_TOKEN, optional=False)
        )
    env.extend({"name": k, "value": v} for k, v in sorted(placement.env.items()))

    mounts: list[Object] = [
        {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
        _tmp_mount(),
    ]
    if mounts_model:
        mounts.insert(1, _model_mount(read_only=True))

    drain = runtime_config(lm, placement).limits.drain_timeout_seconds
    grace = PRESTOP_SLEEP_SECONDS + math.ceil(drain) + 10

    server: Object = {
        "name": SERVER_CONTAINER,
        "image": server_image,
        "imagePullPolicy": spec.runtime.image_pull_policy.value,
        "command": serve_command(),
        "ports": [{"name": PORT_NAME, "containerPort": spec.serving.port, "protocol": "TCP"}],
        "env": env,
        "resources": _server_resources(lm, placement, options),
        "startupProbe": _probe(READYZ_PATH, STARTUP_PERIOD_SECONDS, STARTUP_FAILURE_THRESHOLD),
        "readinessProbe": _probe(
            READYZ_PATH, READINESS_PERIOD_SECONDS, READINESS_FAILURE_THRESHOLD
        ),
        "livenessProbe": _probe(HEALTHZ_PATH, 20, 3),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        "securityContext": _container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }

    pod_spec: Object = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security_context(),
        "terminationGracePeriodSeconds": grace,
    }
    _set_if(pod_spec, "initContainers", init_containers)
    pod_spec["containers"] = [server]
    pod_spec["volumes"] = [
        {"name": CONFIG_VOLUME, "configMap": {"name": config["metadata"]["name"]}},
        *model_volumes,
        _tmp_volume(),
    ]
    _set_if(pod_spec, "nodeSelector", _node_selector(lm, placement))
    _set_if(pod_spec, "tolerations", _tolerations(lm, placement))
    _set_if(pod_spec, "affinity", scheduling.affinity)
    _set_if(pod_spec, "topologySpreadConstraints", scheduling.topology_spread_constraints)
    _set_if(pod_spec, "priorityClassName", scheduling.priority_class_name)
    _set_if(pod_spec, "runtimeClassName", placement.runtime_class_name)
    _set_if(pod_spec, "imagePullSecrets", _image_pull_secrets(lm))

    pod_labels = {**scheduling.pod_labels, **labels(lm)}
    annotations = {
        **scheduling.pod_annotations,
        CONFIG_HASH_ANNOTATION: config_hash(config),
        DEFAULT_CONTAINER_ANNOTATION: SERVER_CONTAINER,
    }
    rolling: Object
    if placement.accelerated:
        # A surge pod on a full accelerator node would sit Pending and look like a fallback.
        rolling = {"maxSurge": 0, "maxUnavailable": 1}
    else:
        rolling = {"maxSurge": "25%", "maxUnavailable": 0}

    deployment_spec: Object = {}
    if options.hold_replicas:
        deployment_spec["replicas"] = 0
    elif not spec.autoscaling.enabled:
        deployment_spec["replicas"] = spec.serving.replicas
    elif options.wake_replicas:
        deployment_spec["replicas"] = 1
    deployment_spec.update(
        {
            "revisionHistoryLimit": REVISION_HISTORY_LIMIT,
            "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
            "selector": {"matchLabels": selector_labels(lm)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": rolling},
            "template": {
                "metadata": {
                    "labels": dict(sorted(pod_labels.items())),
                    "annotations": dict(sorted(annotations.items())),
                },
                "spec": pod_spec,
            },
        }
    )
    return {
        "apiVersion": DEPLOYMENT.api_version,
        "kind": DEPLOYMENT.kind,
        "metadata": _metadata(lm, lm.metadata.name),
        "spec": deployment_spec,
    }
