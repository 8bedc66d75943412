"""Render a NIM deployment: config + identity + settings -> the Kubernetes objects to create.

Purely computational, no I/O: every function here returns plain dicts in the API's own camelCase
form (`None` values are dropped, never emitted as nulls), so the output can be sent to the API
server as is, dumped as YAML by `nim-agent render`, and compared with golden files. Creating the
objects is the connector's job (`nim_agent.kube`).

Public API::

    deployment_name_for(project, domain, execution, node, retry) -> "nim-<execution>-...-<hash>"
    local_deployment_name_for(task_name, nonce=None)             -> "nim-<task>-<hash>"
    DeploymentIdentity.for_execution(...), DeploymentIdentity.for_local(...)
    namespace_for(nim, execution_namespace, settings)            -> namespace (or ConfigError)
    render(nim, identity, settings, pod_uid=None, adapter_uris=None)  -> [pod, service]
    render_pod(nim, identity, settings, adapter_uris=None, shared=None),
    render_service(nim, identity, pod_uid), service_for_pod(pod), service_for_holder(pod, ...)
    adapter_problems(nim, adapter_uris) -> [Problem]  (adapters given as task inputs)
    to_yaml(objects) -> multi-document YAML (what `nim-agent render` prints)

A shared server (`SharedServer`: `NIMTask(reuse=...)`, see `nim_agent.sharing`) is the same Pod
with its share key and generation as labels, no execution identity, its lifetime cap as
``activeDeadlineSeconds`` and, when it serves adapters, a native sidecar ``adapter-sync``
(`nim_agent/adapter_sync.py`) that follows the pod's annotations through a downward API volume
and downloads the adapters later holders ask for while the server runs. Each holder reaches it
through a Service of its own (`service_for_holder`).

Adapters come from two places, each downloaded by an init container into
``$NIM_PEFT_SOURCE/<name>`` before the server starts: `hf_repo_ids` (container `lora-downloader`,
running `nim_agent/hf_download.py`, standard library only, in the NIM image unless another is
configured) and task inputs, `adapter_uris` = {name: object-store URI of a FlyteDirectory}
(container `lora-inputs`, running `nim_agent/flyte_download.py` with flytekit). Both programs are
shipped as their own source (`python3 -c`), so no image needs nim-agent installed. With a cache
PVC, both keep what they download on it (`contract.ADAPTER_CACHE_PATH`) and link it into place.

The building blocks the sidecar form shares (`nim_agent.sidecar`) are `pod_spec_parts`,
`guaranteed_resources`, `container_security_context` and `drop_none`. A `NIM` is only read here
(never built), so `nim_agent.config` is imported for its type only: the config's own
`NIM.pod_template` is what calls down into this layer, through `nim_agent.sidecar`.

The Service is owned by the Pod (garbage-collected with it). The owner reference needs the Pod's
uid, known only once the Pod exists: the connector creates the Pod, then calls
`render_service(..., pod_uid=pod["metadata"]["uid"])`. Without a uid (e.g. `nim-agent render`)
the Service has no ownerReferences.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import math
import re
import secrets as _secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from nim_agent.checks import ConfigError, Problem, check_adapter_name, show
from nim_agent.contract import (
    ADAPTER_CACHE_PATH,
    ADAPTER_INPUTS_CONTAINER,
    ADAPTER_SYNC_CONTAINER,
    ANNOTATION_ADAPTERS,
    ANNOTATION_ENDPOINT,
    ANNOTATION_EXECUTION_ID,
    ANNOTATION_EXPIRES_AT,
    ANNOTATION_REUSE,
    ANNOTATIONS_PATH,
    APP_NAME,
    CACHE_PATH,
    IDENTITY_PARTS,
    LABEL_DEPLOYMENT,
    LABEL_GENERATION,
    LABEL_HOLDER,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PREFIX,
    LABEL_SHARE_KEY,
    LORA_CONTAINER,
    MANAGED_BY,
    NIM_CONTAINER,
    PEFT_SOURCE_ENV,
    SHM_PATH,
    adapter_name,
    adapters_value,
    endpoint_for,
    format_time,
    is_reserved_key,
)
from nim_agent.settings import SECURITY_PROFILES, ConnectorSettings, flytekit_image

if TYPE_CHECKING:
    from nim_agent.config import NIM

__all__ = [
    "DeploymentIdentity",
    "ExecutionIdentity",
    "SharedServer",
    "adapter_problems",
    "deployment_name_for",
    "local_deployment_name_for",
    "namespace_for",
    "render",
    "render_pod",
    "render_service",
    "service_for_holder",
    "service_for_pod",
    "shared_deployment_name",
    "to_yaml",
]

PORT_NAME = "nim-http"
LIVENESS_PATH = "/v1/health/live"
METRICS_PATH = "/v1/metrics"
NIM_UID = 1000  # the NIM images run as uid 1000
NVIDIA_GID = 2000  # the group NVIDIA's NIM Operator runs them with (security profile "nvidia")
GPU_RESOURCE = "nvidia.com/gpu"
DOWNLOADER_TMP = "/tmp"


def _program(module_file: str) -> str:
    """The source of a self-contained program of this package, as the pod runs it."""
    return importlib.resources.files("nim_agent").joinpath(module_file).read_text("utf-8")


# The adapter download programs, each run as `python3 -c <source>` and configured by environment
# (their docstrings list it). Nothing secret is on a command line: the HF token arrives as
# HF_TOKEN from a secretKeyRef, object-store credentials from the pod's identity or a Secret.
HF_DOWNLOAD_PROGRAM = _program("hf_download.py")
INPUTS_DOWNLOAD_PROGRAM = _program("flyte_download.py")
ADAPTER_SYNC_PROGRAM = _program("adapter_sync.py")
# A shared server picks up the adapters its sidecar adds on NIM's dynamic LoRA scan; without
# the user's own NIM_PEFT_REFRESH_INTERVAL NIM never rescans, so shared servers get this one.
SHARED_PEFT_REFRESH_SECONDS = "5"
ADAPTER_SYNC_CPU = "250m"  # downloads are I/O; the sidecar's request adds to the pod's

_NAME_MAX = 63
_HASH_LEN = 10


# --------------------------------------------------------------------------- names


def _dns_name(readable: str, identity: str, keep_tail: bool = False) -> str:
    """ "nim-" + a DNS-1035 form of `readable` + "-" + a short hash of `identity`, <= 63 chars."""
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:_HASH_LEN]
    body = re.sub(r"[^a-z0-9]+", "-", readable.lower()).strip("-")
    room = _NAME_MAX - len("nim-") - 1 - _HASH_LEN
    body = (body[-room:] if keep_tail else body[:room]).strip("-")
    return f"nim-{body}-{digest}" if body else f"nim-{digest}"


def deployment_name_for(
    project: str, domain: str, execution: str, node: str, retry: int = 0
) -> str:
    """The Pod (and Service) name for one Flyte task execution; deterministic.

    A retried CreateTask for the same attempt gets the same name, so it finds the pod it already
    made instead of starting a second GPU server. DNS-1035, at most 63 characters:
    a readable prefix plus a hash of the full identity::

        >>> deployment_name_for("flytesnacks", "development", "f3a9b2c1d", "n0", 0)
        'nim-f3a9b2c1d-n0-0-...'
    """
    identity = json.dumps([project, domain, execution, node, retry])
    return _dns_name(f"{execution}-{node}-{retry}", identity)


def local_deployment_name_for(task_name: str, nonce: str | None = None) -> str:
    """A name for a run without execution metadata: the task name (any form) plus a hash.

    `nonce` None draws a random one, so two local runs never collide; `nim-agent render` passes
    a fixed nonce so its output is stable.
    """
    nonce = _secrets.token_hex(4) if nonce is None else nonce
    return _dns_name(task_name, json.dumps([task_name, nonce]), keep_tail=True)


def shared_deployment_name(key: str, generation: int, image: str) -> str:
    """The Pod name of a shared server: deterministic from its share key and generation, so
    that executions creating it at once race on one name and exactly one server is made::

        >>> shared_deployment_name("3f9a...", 0, "nvcr.io/nim/meta/llama3-8b-instruct:1.0.0")
        'nim-llama3-8b-instruct-shared-...'
    """
    model = image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
    return _dns_name(f"{model}-shared", json.dumps([key, generation]))


def label_value(text: str) -> str:
    """`text` squeezed into a valid label value (<= 63 chars, [A-Za-z0-9._-], alnum at the ends)."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:_NAME_MAX]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


@dataclass(frozen=True)
class ExecutionIdentity:
    """The Flyte task execution a deployment belongs to."""

    project: str
    domain: str
    execution: str
    node: str
    retry: int = 0


@dataclass(frozen=True, kw_only=True)
class DeploymentIdentity:
    """Who a deployment is: its name (Pod = Service), namespace, Flyte identity and expiry."""

    name: str
    namespace: str
    execution: ExecutionIdentity | None = None
    task_name: str | None = None
    expires_at: datetime | None = None

    @classmethod
    def for_execution(
        cls,
        execution: ExecutionIdentity,
        namespace: str,
        *,
        task_name: str | None = None,
        expires_at: datetime | None = None,
    ) -> DeploymentIdentity:
        """The identity of a deployment made for a Flyte execution (deterministic name)."""
        e = execution
        return cls(
            name=deployment_name_for(e.project, e.domain, e.execution, e.node, e.retry),
            namespace=namespace,
            execution=execution,
            task_name=task_name,
            expires_at=expires_at,
        )

    @classmethod
    def for_local(
        cls,
        task_name: str,
        namespace: str,
        *,
        expires_at: datetime | None = None,
        nonce: str | None = None,
    ) -> DeploymentIdentity:
        """The identity of a deployment made by a local run (random name unless `nonce`)."""
        return cls(
            name=local_deployment_name_for(task_name, nonce),
            namespace=namespace,
            task_name=task_name,
            expires_at=expires_at,
        )

    def endpoint(self, port: int) -> str:
        """The in-cluster URL of this deployment's Service."""
        return endpoint_for(self.name, self.namespace, port)


@dataclass(frozen=True, kw_only=True)
class SharedServer:
    """What makes a Pod a shared server (`NIMTask(reuse=...)`; the keys: `nim_agent.sharing`).

    ``key``: the share key (hash of the serving configuration, namespace and scope);
    ``generation``: which of the key's deterministic names this is; ``scope``: the reuse scope;
    ``lifetime``: its hard cap (``activeDeadlineSeconds``), whatever its holders;
    ``inputs``: its adapter-sync sidecar may fetch adapters given as task inputs (it then runs
    in the flytekit image of `_inputs_container`, else in the Hugging Face downloader's image).
    """

    key: str
    generation: int = 0
    scope: str = "namespace"
    lifetime: timedelta = timedelta(hours=24)
    inputs: bool = False


def namespace_for(nim: NIM, execution_namespace: str | None, settings: ConnectorSettings) -> str:
    """Where the deployment goes: `nim.namespace` where the settings allow it, else the
    execution's namespace (or the settings' default for local runs)."""
    default = execution_namespace or settings.default_namespace
    if nim.namespace is None or nim.namespace == default:
        return default
    if settings.namespace_allowed(nim.namespace):
        return nim.namespace
    allowed = ", ".join(settings.allowed_namespaces) or "none"
    raise ConfigError(
        [
            Problem(
                "namespace",
                f"{show(nim.namespace)} is not allowed by the connector (allowed besides the "
                f"execution's own, {show(default)}: {allowed}); leave namespace unset",
            )
        ]
    )


def _check_service_account(nim: NIM, settings: ConnectorSettings) -> None:
    """A server runs under the namespace's default ServiceAccount unless the operator allows
    the one a task names: the connector creates the pod, so a task must not borrow another
    workload's identity (and its API or cloud permissions) through it."""
    account = nim.service_account or "default"
    if settings.service_account_allowed(account):
        return
    allowed = ", ".join(settings.service_accounts) or "none"
    raise ConfigError(
        [
            Problem(
                "service_account",
                f"{show(account)} is not allowed by the connector (allowed: {allowed}; the "
                "operator's setting service_accounts); leave service_account unset",
            )
        ]
    )


# --------------------------------------------------------------------------- building blocks


def drop_none(value: Any) -> Any:
    """`value` without the None entries of its dicts, at any depth (manifests carry no nulls)."""
    if isinstance(value, dict):
        return {k: drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_none(v) for v in value]
    return value


def _cpu(value: int | float | str) -> str:
    if isinstance(value, str):
        return value
    text = format(Decimal(str(value)).normalize(), "f")
    return text


def guaranteed_resources(quantities: Mapping[str, str]) -> dict[str, Any]:
    """requests = limits: the Guaranteed QoS class, no overcommit of a GPU node's memory."""
    return {"requests": dict(quantities), "limits": dict(quantities)}


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def restricted_security_context() -> dict[str, Any]:
    """Pod Security "restricted" on the container itself, so it holds in the sidecar form too."""
    return {
        "runAsNonRoot": True,
        "runAsUser": NIM_UID,
        "runAsGroup": NIM_UID,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context(profile: str, *, sidecar: bool = False) -> dict[str, Any] | None:
    """A container's securityContext under a security profile (`settings.SECURITY_PROFILES`).

    "restricted": `restricted_security_context`. "nvidia": none in the connector's Pod (the
    pod-level context carries uid 1000 / gid 2000, as NVIDIA's NIM Operator does); in the
    sidecar form, where pod-level settings would bind the task's own container too, the same
    uid and gid on the container.
    """
    if profile == "nvidia":
        return {"runAsUser": NIM_UID, "runAsGroup": NVIDIA_GID} if sidecar else None
    return restricted_security_context()


def pod_security_context(profile: str) -> dict[str, Any]:
    """The Pod's securityContext under a security profile (the connector's Pod only)."""
    if profile == "nvidia":
        return {"runAsUser": NIM_UID, "runAsGroup": NVIDIA_GID, "fsGroup": NVIDIA_GID}
    return {
        "runAsNonRoot": True,
        "runAsUser": NIM_UID,
        "runAsGroup": NIM_UID,
        "fsGroup": NIM_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def security_profile_for(nim: NIM, settings: ConnectorSettings) -> str:
    """The security profile of the connector's Pod: the task's, where the settings allow it,
    else the connector's default (ConfigError naming security_profile otherwise)."""
    wanted = nim.security_profile
    if wanted is None or wanted == settings.security_profile:
        return settings.security_profile
    if settings.security_profile_allowed(wanted):
        return wanted
    allowed = ", ".join([settings.security_profile, *settings.allowed_security_profiles])
    raise ConfigError(
        [
            Problem(
                "security_profile",
                f"{show(wanted)} is not allowed by the connector (allowed: {allowed}); leave "
                "security_profile unset",
            )
        ]
    )


def _http_probe(path: str, port: int, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 5,
    }


def peft_source(
    nim: NIM, adapter_uris: Mapping[str, str] | None = None, *, shared: bool = False
) -> str | None:
    """$NIM_PEFT_SOURCE when adapters are downloaded (from the Hub or task inputs; on a shared
    server, whenever it is set and the download memory too: later holders bring adapters),
    else None."""
    if shared and nim.lora_adapter_mem is not None:
        return (nim.env or {}).get(PEFT_SOURCE_ENV)
    if not (nim.hf_repo_ids or adapter_uris):
        return None
    return (nim.env or {}).get(PEFT_SOURCE_ENV)


def adapter_names(nim: NIM, adapter_uris: Mapping[str, str] | None = None) -> list[str]:
    """Every adapter the server is to serve, by name: Hugging Face ones first, then inputs."""
    return [adapter_name(r) for r in nim.hf_repo_ids or []] + list(adapter_uris or {})


def adapter_problems(nim: NIM, adapter_uris: Mapping[str, str] | None) -> list[Problem]:
    """What is wrong with adapters given as task inputs ({name: URI}), each problem naming
    `adapters.<name>` (or the NIM field they need)."""
    if not adapter_uris:
        return []
    found = []
    hf = {adapter_name(r): r for r in nim.hf_repo_ids or []}
    for name, uri in adapter_uris.items():
        where = f"adapters.{name}"
        if message := check_adapter_name(name):
            found.append(Problem(where, message))
        elif name in hf:
            found.append(
                Problem(
                    where,
                    f"has the name of the adapter of hf_repo_ids {show(hf[name])}; give it "
                    "another name",
                )
            )
        scheme = uri.split("://", 1)[0] if "://" in uri else ""
        if not scheme or scheme == "file":
            found.append(
                Problem(
                    where,
                    f"{show(uri)} is a path on the machine that ran the workflow; the NIM pod "
                    "can only download from an object store (s3://, gs://, abfs://, ...)",
                )
            )
    if PEFT_SOURCE_ENV not in (nim.env or {}):
        found.append(
            Problem(
                f"env.{PEFT_SOURCE_ENV}",
                "is required with adapters as task inputs: the directory the NIM loads adapters "
                f'from; add env={{"{PEFT_SOURCE_ENV}": "/opt/nim/loras"}}',
            )
        )
    if nim.lora_adapter_mem is None:
        found.append(
            Problem(
                "lora_adapter_mem",
                "is required with adapters as task inputs: memory of the adapter download "
                'container, e.g. "2Gi"',
            )
        )
    return found


def _nim_container(
    nim: NIM,
    settings: ConnectorSettings,
    peft: str | None,
    security: dict[str, Any] | None,
    shared: SharedServer | None = None,
) -> dict[str, Any]:
    s = nim.secrets
    quantities = {"cpu": _cpu(nim.cpu), "memory": nim.mem}
    if nim.gpu > 0:
        quantities[GPU_RESOURCE] = str(nim.gpu)
    if nim.ephemeral_storage is not None:
        quantities["ephemeral-storage"] = nim.ephemeral_storage
    env = [
        _secret_env(
            "NGC_API_KEY", s.ngc_secret_group or settings.default_secret_name, s.ngc_secret_key
        ),
        {"name": "NIM_CACHE_PATH", "value": CACHE_PATH},
        *({"name": k, "value": v} for k, v in (nim.env or {}).items()),
    ]
    if shared is not None and peft and "NIM_PEFT_REFRESH_INTERVAL" not in (nim.env or {}):
        env.append({"name": "NIM_PEFT_REFRESH_INTERVAL", "value": SHARED_PEFT_REFRESH_SECONDS})
    mounts = [
        {"name": "dshm", "mountPath": SHM_PATH},
        {"name": "nim-cache", "mountPath": CACHE_PATH},
    ]
    if peft:
        mounts.append({"name": "lora", "mountPath": peft})
    return {
        "name": NIM_CONTAINER,
        "image": nim.image,
        "imagePullPolicy": nim.image_pull_policy,
        "ports": [{"name": PORT_NAME, "containerPort": nim.port, "protocol": "TCP"}],
        "env": env,
        "resources": guaranteed_resources(quantities),
        "volumeMounts": mounts,
        "startupProbe": _http_probe(
            nim.health_path, nim.port, nim.startup_period_seconds, nim.startup_failure_threshold
        ),
        "readinessProbe": _http_probe(
            nim.health_path, nim.port, nim.readiness_period_seconds, nim.readiness_failure_threshold
        ),
        "livenessProbe": _http_probe(
            LIVENESS_PATH, nim.port, nim.liveness_period_seconds, nim.liveness_failure_threshold
        ),
        "securityContext": security,
    }


def _downloader_mounts(nim: NIM, peft: str) -> list[dict[str, Any]]:
    mounts = [{"name": "lora", "mountPath": peft}]
    if nim.cache_pvc:  # adapters are kept on the claim and linked into place
        mounts.append({"name": "nim-cache", "mountPath": CACHE_PATH})
    return mounts


def _lora_container(
    nim: NIM, settings: ConnectorSettings, peft: str, security: dict[str, Any] | None
) -> dict[str, Any]:
    """The Hugging Face adapter download (`nim_agent/hf_download.py`, standard library only)."""
    s = nim.secrets
    assert nim.lora_adapter_mem is not None  # by validation
    env: list[dict[str, Any]] = [
        {"name": PEFT_SOURCE_ENV, "value": peft},
        {"name": "NIM_AGENT_HF_REPO_IDS", "value": json.dumps(list(nim.hf_repo_ids or []))},
    ]
    endpoint = nim.hf_endpoint or settings.hf_endpoint
    if endpoint:
        env.append({"name": "HF_ENDPOINT", "value": endpoint})
    if nim.cache_pvc:
        env.append({"name": "NIM_AGENT_HF_CACHE", "value": ADAPTER_CACHE_PATH})
    if s.hf_token_key:
        env.append(
            _secret_env(
                "HF_TOKEN", s.hf_token_group or settings.default_secret_name, s.hf_token_key
            )
        )
    # The same cpu as the NIM (an init container's request does not add to the pod's) keeps the
    # pod in the Guaranteed QoS class.
    quantities = {"cpu": _cpu(nim.cpu), "memory": nim.lora_adapter_mem}
    return {
        "name": LORA_CONTAINER,
        "image": nim.lora_downloader_image or settings.lora_downloader_image or nim.image,
        "imagePullPolicy": nim.image_pull_policy,
        "command": ["python3", "-c", HF_DOWNLOAD_PROGRAM],
        "env": env,
        "resources": guaranteed_resources(quantities),
        "volumeMounts": _downloader_mounts(nim, peft),
        "securityContext": security,
    }


def _inputs_container(
    nim: NIM,
    settings: ConnectorSettings,
    peft: str,
    adapter_uris: Mapping[str, str],
    security: dict[str, Any] | None,
) -> dict[str, Any]:
    """The download of adapters given as task inputs (`nim_agent/flyte_download.py`, flytekit),
    with the object-store settings the operator configured (env, a Secret as env)."""
    assert nim.lora_adapter_mem is not None  # by adapter_problems
    env: list[dict[str, Any]] = [
        {"name": PEFT_SOURCE_ENV, "value": peft},
        {"name": "NIM_AGENT_ADAPTER_URIS", "value": json.dumps(dict(adapter_uris))},
        {"name": "HOME", "value": DOWNLOADER_TMP},
    ]
    if nim.cache_pvc:
        env.append({"name": "NIM_AGENT_ADAPTER_CACHE", "value": ADAPTER_CACHE_PATH})
    env.extend({"name": k, "value": v} for k, v in settings.adapter_inputs_env)
    env_from = None
    if settings.adapter_inputs_secret:
        env_from = [{"secretRef": {"name": settings.adapter_inputs_secret}}]
    quantities = {"cpu": _cpu(nim.cpu), "memory": nim.lora_adapter_mem}
    return {
        "name": ADAPTER_INPUTS_CONTAINER,
        "image": settings.adapter_inputs_image or flytekit_image(),
        "imagePullPolicy": nim.image_pull_policy,
        "command": ["python3", "-c", INPUTS_DOWNLOAD_PROGRAM],
        "env": env,
        "envFrom": env_from,
        "resources": guaranteed_resources(quantities),
        "volumeMounts": [
            *_downloader_mounts(nim, peft),
            {"name": "downloader-tmp", "mountPath": DOWNLOADER_TMP},
        ],
        "securityContext": security,
    }


def _adapter_sync_container(
    nim: NIM,
    settings: ConnectorSettings,
    peft: str,
    shared: SharedServer,
    security: dict[str, Any] | None,
) -> dict[str, Any]:
    """The native sidecar of a shared server that adds the adapters later holders ask for
    (`nim_agent/adapter_sync.py`, given both downloaders' sources as its arguments). It runs in
    the input download's image (flytekit) when the server takes adapters from task inputs, else
    in the Hugging Face downloader's; with that container's environment and secrets."""
    assert nim.lora_adapter_mem is not None  # by peft_source
    hf = _lora_container(nim, settings, peft, security)
    env = [e for e in hf["env"] if e["name"] != "NIM_AGENT_HF_REPO_IDS"]
    env.append({"name": "NIM_AGENT_ANNOTATIONS", "value": f"{ANNOTATIONS_PATH}/annotations"})
    env_from = None
    image = hf["image"]
    mounts = [*_downloader_mounts(nim, peft)]
    if shared.inputs:
        inputs = _inputs_container(nim, settings, peft, {}, security)
        image = inputs["image"]
        known = {e["name"] for e in env}
        env.extend(e for e in inputs["env"] if e["name"] not in known)
        env_from = inputs["envFrom"]
        mounts.append({"name": "downloader-tmp", "mountPath": DOWNLOADER_TMP})
    mounts.append(
        {"name": "nim-agent-annotations", "mountPath": ANNOTATIONS_PATH, "readOnly": True}
    )
    quantities = {"cpu": ADAPTER_SYNC_CPU, "memory": nim.lora_adapter_mem}
    return {
        "name": ADAPTER_SYNC_CONTAINER,
        "image": image,
        "imagePullPolicy": nim.image_pull_policy,
        "restartPolicy": "Always",  # a native sidecar: runs beside the server, for its life
        "command": [
            "python3",
            "-c",
            ADAPTER_SYNC_PROGRAM,
            HF_DOWNLOAD_PROGRAM,
            INPUTS_DOWNLOAD_PROGRAM,
        ],
        "env": env,
        "envFrom": env_from,
        "resources": guaranteed_resources(quantities),
        "volumeMounts": mounts,
        "securityContext": security,
    }


def _volumes(
    nim: NIM,
    peft: str | None,
    adapter_uris: Mapping[str, str] | None,
    shared: SharedServer | None = None,
) -> list[Any]:
    cache: dict[str, Any]
    if nim.cache_pvc:
        cache = {"name": "nim-cache", "persistentVolumeClaim": {"claimName": nim.cache_pvc}}
    else:
        cache = {"name": "nim-cache", "emptyDir": {}}
    volumes = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": nim.shm_size}},
        cache,
    ]
    if peft:
        volumes.append({"name": "lora", "emptyDir": {}})
    if adapter_uris or (peft and shared is not None and shared.inputs):
        volumes.append({"name": "downloader-tmp", "emptyDir": {}})
    if peft and shared is not None:
        annotations = {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}
        volumes.append({"name": "nim-agent-annotations", "downwardAPI": {"items": [annotations]}})
    return volumes


def _tolerations(nim: NIM) -> list[dict[str, Any]] | None:
    tolerations = [dict(t) for t in nim.tolerations or []]
    gpu = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
    if nim.gpu > 0 and nim.gpu_toleration and gpu not in tolerations:
        tolerations.insert(0, gpu)
    return tolerations or None


def pod_spec_parts(
    nim: NIM,
    settings: ConnectorSettings,
    adapter_uris: Mapping[str, str] | None = None,
    security: dict[str, Any] | None = None,
    shared: SharedServer | None = None,
) -> dict[str, Any]:
    """The parts of the pod spec shared by the connector's Pod and the sidecar form: the NIM
    container (after the adapter downloads; on a shared server, the adapter-sync sidecar
    too), volumes, pull secret and placement.

    `security` is every container's securityContext (`container_security_context`).
    """
    if nim.cache_pvc and not settings.allow_cache_pvc:
        raise ConfigError(
            [
                Problem(
                    "cache_pvc", f"{show(nim.cache_pvc)}: this connector does not allow a cache PVC"
                )
            ]
        )
    problems = adapter_problems(nim, adapter_uris)
    if problems:
        raise ConfigError(problems)
    peft = peft_source(nim, adapter_uris, shared=shared is not None)
    init = []
    if peft and nim.hf_repo_ids:
        init.append(_lora_container(nim, settings, peft, security))
    if peft and adapter_uris:
        init.append(_inputs_container(nim, settings, peft, adapter_uris, security))
    if peft and shared is not None:
        init.append(_adapter_sync_container(nim, settings, peft, shared, security))
    return {
        "serviceAccountName": nim.service_account,
        "runtimeClassName": nim.runtime_class_name,
        "priorityClassName": nim.priority_class_name,
        "nodeSelector": dict(sorted((nim.node_selector or {}).items())) or None,
        "affinity": nim.affinity,
        "tolerations": _tolerations(nim),
        "imagePullSecrets": [{"name": nim.secrets.ngc_image_secret}],
        "initContainers": init or None,
        "containers": [_nim_container(nim, settings, peft, security, shared)],
        "volumes": _volumes(nim, peft, adapter_uris, shared),
    }


# --------------------------------------------------------------------------- objects


def _labels(
    nim: NIM, identity: DeploymentIdentity, shared: SharedServer | None = None
) -> dict[str, str]:
    ours = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: identity.name,
        LABEL_DEPLOYMENT: identity.name,
    }
    if shared is not None:
        ours[LABEL_SHARE_KEY] = shared.key
        ours[LABEL_GENERATION] = str(shared.generation)
    if identity.execution is not None:
        e = identity.execution
        for part in IDENTITY_PARTS:
            ours[LABEL_PREFIX + part] = label_value(str(getattr(e, part)))
    return dict(sorted({**_users(nim.labels), **ours}.items()))


def _users(keys: Mapping[str, str] | None) -> dict[str, str]:
    """A user's labels or annotations without nim-agent's own keys (`contract.is_reserved_key`:
    the `nim-agent.dev/` prefix and its subdomains, bar the local control plane's
    `nim-agent.dev/simulate*`): nim-agent reads them back (e.g. the deletion cause, the Flyte
    identity of a local run, a shared server's holders), so a user must not be able to set them.
    """
    return {k: v for k, v in (keys or {}).items() if not is_reserved_key(k)}


def _our_annotations(
    nim: NIM, identity: DeploymentIdentity, adapters: Sequence[str]
) -> dict[str, str]:
    execution_id: dict[str, Any] = {}
    if identity.execution is not None:
        e = identity.execution
        execution_id = {part: getattr(e, part) for part in IDENTITY_PARTS}
    if identity.task_name is not None:
        execution_id["task"] = identity.task_name
    ours = {
        ANNOTATION_EXECUTION_ID: json.dumps(execution_id, sort_keys=True, separators=(",", ":")),
        ANNOTATION_ENDPOINT: identity.endpoint(nim.port),
    }
    if adapters:
        ours[ANNOTATION_ADAPTERS] = adapters_value(adapters)
    if identity.expires_at is not None:
        ours[ANNOTATION_EXPIRES_AT] = format_time(identity.expires_at)
    return ours


def render_pod(
    nim: NIM,
    identity: DeploymentIdentity,
    settings: ConnectorSettings | None = None,
    adapter_uris: Mapping[str, str] | None = None,
    *,
    ttl: timedelta | None = None,
    shared: SharedServer | None = None,
) -> dict[str, Any]:
    """The NIM Pod: security profile, requests = limits, probes, secrets by ref, adapters.

    `adapter_uris` are the adapters given as task inputs ({name: object-store URI}).
    restartPolicy is Always: a crashing server restarts, and its growing restartCount is what
    status classification reads to fail a crash loop. ``activeDeadlineSeconds`` is the ttl
    (default: the settings' ``default_ttl``): the kubelet stops the server then even when no
    connector is running (a pod may lower it later, never raise it: nim-agent lowers it to stop
    a server). The ServiceAccount must be one the settings allow. With `shared` it is a shared
    server (see the module docstring): its deadline is the shared lifetime, ``ttl`` is unused.
    """
    settings = settings or ConnectorSettings()
    _check_service_account(nim, settings)
    profile = security_profile_for(nim, settings)
    deadline = ttl if ttl is not None else settings.default_ttl
    if shared is not None:
        deadline = shared.lifetime
    spec = {
        "activeDeadlineSeconds": max(1, math.ceil(deadline.total_seconds())),
        "restartPolicy": "Always",
        "enableServiceLinks": False,
        "automountServiceAccountToken": None if nim.service_account else False,
        "securityContext": pod_security_context(profile),
        **pod_spec_parts(nim, settings, adapter_uris, container_security_context(profile), shared),
    }
    # A shared server's adapters are its holders' (their records); none of the pod's own.
    adapters = adapter_names(nim, adapter_uris) if shared is None else []
    annotations = {**_users(nim.annotations), **_our_annotations(nim, identity, adapters)}
    if shared is not None:
        annotations[ANNOTATION_REUSE] = shared.scope
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": identity.name,
            "namespace": identity.namespace,
            "labels": _labels(nim, identity, shared),
            "annotations": dict(sorted(annotations.items())),
        },
        "spec": spec,
    }
    return drop_none(pod)  # type: ignore[no-any-return]


def render_service(
    nim: NIM,
    identity: DeploymentIdentity,
    pod_uid: str | None = None,
    settings: ConnectorSettings | None = None,
) -> dict[str, Any]:
    """The Service of the deployment `nim` + `identity` (see `service_for_pod`).

    With `pod_uid` it is owned by the Pod, so deleting the Pod deletes it.
    """
    # The Service takes the Pod's name, labels, annotations and port, none of which a policy
    # of the settings changes: render with settings that refuse nothing.
    lenient = ConnectorSettings(
        allowed_security_profiles=SECURITY_PROFILES, service_accounts=("*",)
    )
    pod = render_pod(nim, identity, lenient)
    if pod_uid is not None:
        pod["metadata"]["uid"] = pod_uid
    return service_for_pod(pod)


def service_for_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The headless Service in front of a NIM Pod rendered by `render_pod`, made from the Pod alone.

    Headless (`clusterIP: None`): one pod needs no virtual IP, the cluster DNS answers the
    Service name with the pod's own address once it is ready, and no ClusterIP is allocated
    (the API server's slowest write under bursts, and a range large fleets would exhaust).
    Without a virtual IP there is no port translation, so the Service port is the container
    port and the endpoint URL keeps its form. Annotated for Prometheus to scrape the NIM's own
    /v1/metrics. When the Pod has a uid (it exists), the Service is owned by it and goes with it.

    Everything comes from the Pod (name, labels, nim-agent's annotations, the NIM container's
    port), so the connector can make the Service later than the Pod, from any replica.
    """
    meta = pod.get("metadata") or {}
    name, uid = meta.get("name"), meta.get("uid")
    port = _nim_port(pod)
    ours = (ANNOTATION_EXECUTION_ID, ANNOTATION_ENDPOINT, ANNOTATION_EXPIRES_AT)
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k in ours}
    annotations.update(
        {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(port),
            "prometheus.io/path": METRICS_PATH,
        }
    )
    owner = None
    if uid:
        owner = [{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}]
    labels = meta.get("labels") or {}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": meta.get("namespace"),
            "labels": dict(labels),
            "annotations": dict(sorted(annotations.items())),
            "ownerReferences": owner,
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "None",
            "selector": {LABEL_DEPLOYMENT: labels.get(LABEL_DEPLOYMENT, name)},
            "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }
    return drop_none(service)  # type: ignore[no-any-return]


def service_for_holder(
    pod: Mapping[str, Any],
    holder: str,
    *,
    execution: ExecutionIdentity | None = None,
    task_name: str | None = None,
) -> dict[str, Any]:
    """The Service of one holder of a shared server: named after the holder (the name its own
    deployment would have had, so its endpoint URL is its own), selecting the shared pod, owned
    by it. Its labels carry the holder's name and Flyte identity (a teardown of this endpoint
    releases this holder only)."""
    base = service_for_pod(pod)
    meta = base["metadata"]
    namespace = str(meta.get("namespace") or "")
    identity = DeploymentIdentity(
        name=holder, namespace=namespace, execution=execution, task_name=task_name
    )
    labels = {k: v for k, v in meta["labels"].items() if k != LABEL_INSTANCE}
    labels[LABEL_INSTANCE] = holder
    labels[LABEL_HOLDER] = holder
    if execution is not None:
        for part in IDENTITY_PARTS:
            labels[LABEL_PREFIX + part] = label_value(str(getattr(execution, part)))
    port = base["spec"]["ports"][0]["port"]
    annotations = dict(meta["annotations"])
    annotations.pop(ANNOTATION_EXPIRES_AT, None)
    annotations[ANNOTATION_ENDPOINT] = identity.endpoint(port)
    execution_id: dict[str, Any] = {}
    if execution is not None:
        execution_id = {part: getattr(execution, part) for part in IDENTITY_PARTS}
    if task_name is not None:
        execution_id["task"] = task_name
    annotations[ANNOTATION_EXECUTION_ID] = json.dumps(
        execution_id, sort_keys=True, separators=(",", ":")
    )
    meta.update(
        name=holder,
        labels=dict(sorted(labels.items())),
        annotations=dict(sorted(annotations.items())),
    )
    return base


def _nim_port(pod: Mapping[str, Any]) -> int:
    """The NIM container's port (the one render named `PORT_NAME`)."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") == NIM_CONTAINER:
            for port in container.get("ports") or []:
                if port.get("name") == PORT_NAME:
                    return int(port["containerPort"])
    raise ValueError(f"pod {(pod.get('metadata') or {}).get('name')!r} has no NIM container port")


def render(
    nim: NIM,
    identity: DeploymentIdentity,
    settings: ConnectorSettings | None = None,
    pod_uid: str | None = None,
    adapter_uris: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Everything the connector creates for one deployment, in creation order: Pod, Service."""
    pod = render_pod(nim, identity, settings, adapter_uris)
    existing = {**pod, "metadata": {**pod["metadata"], "uid": pod_uid}} if pod_uid else pod
    return [pod, service_for_pod(existing)]


# --------------------------------------------------------------------------- YAML


def to_yaml(objects: list[dict[str, Any]], header: str = "") -> str:
    """Objects as multi-document YAML, keys in render order, multi-line strings as blocks."""
    import yaml  # only the CLI and tests print YAML

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    body = yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, explicit_start=True, width=100)
    return header + body
