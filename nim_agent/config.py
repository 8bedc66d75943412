"""NIM and NIMSecrets: what a user writes to describe one NIM deployment.

Purely computational, stdlib only: construction validates every field and raises one
`ConfigError` listing every problem found, each naming the field, the value and what would be
valid::

    >>> NIM(secrets=NIMSecrets(ngc_image_secret="ngc", ngc_secret_key="k", secrets_prefix=""),
    ...     mem="20GB", port=0)
    Traceback (most recent call last):
    ConfigError: 2 problems in the NIM configuration:
      port: 0 is not a TCP port; use 1..65535
      mem: "20GB" is not a Kubernetes quantity; use e.g. "20Gi"

Exceptions::

    ValueError
     +-- ConfigError        .problems: tuple[Problem(field, message), ...]

The Kubernetes objects made from a `NIM` are built by `nim_agent.render`; `NIM.pod_template`
(the seed's sidecar form) is a thin wrapper over `nim_agent.sidecar`, the one place this module
calls into (on use): the renderer reads a `NIM` but never imports this module at run time.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from nim_agent.checks import (
    ConfigError,
    Problem,
    Problems,
    check_cpu,
    check_dns_label,
    check_dns_subdomain,
    check_hf_repo_id,
    check_http_path,
    check_http_url,
    check_image,
    check_int,
    check_label_key,
    check_label_value,
    check_memory,
    check_secret_key,
    closest,
    show,
)
from nim_agent.contract import CACHE_PATH, PEFT_SOURCE_ENV, SHM_PATH, adapter_name
from nim_agent.settings import SECURITY_PROFILES

if TYPE_CHECKING:
    from flytekit import PodTemplate

__all__ = [
    "DEFAULT_IMAGE",
    "NIM",
    "REUSE_SCOPES",
    "ConfigError",
    "NIMSecrets",
    "Problem",
    "Reuse",
]

DEFAULT_IMAGE = "nvcr.io/nim/meta/llama3-8b-instruct:1.0.0"

# Variables nim-agent sets itself; a user value would be ignored or would leak a secret.
_RESERVED_ENV = {
    "NGC_API_KEY": "is read from the Secret named by secrets.ngc_secret_group "
    "(key secrets.ngc_secret_key); never put a secret value in env",
    "HF_TOKEN": "is read from the Secret named by secrets.hf_token_group "
    "(key secrets.hf_token_key); never put a secret value in env",
    "NIM_CACHE_PATH": f"is set by nim-agent to {CACHE_PATH}; use cache_pvc to keep the cache",
}


_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_ENV_PREFIX = re.compile(r"^[A-Za-z0-9_]*$")


# --------------------------------------------------------------------------- NIMSecrets


@dataclass(frozen=True, kw_only=True)
class NIMSecrets:
    """Where the NIM finds its credentials: Kubernetes Secrets, referenced by name.

    The NGC API key reaches the NIM container as `NGC_API_KEY` through `secretKeyRef` (Secret
    `ngc_secret_group`, or the connector's default Secret when no group is given; key
    `ngc_secret_key`). The Hugging Face token reaches only the LoRA download container, the same
    way. Secret values are never read by nim-agent, nor written into any manifest.

    Example::

        NIMSecrets(ngc_image_secret="ngc-pull", ngc_secret_key="ngc_api_key",
                   secrets_prefix="_FSEC_", hf_token_key="hf_token")
    """

    ngc_image_secret: str
    """Secret of type kubernetes.io/dockerconfigjson for pulling from nvcr.io (imagePullSecrets)."""
    ngc_secret_key: str
    """Key, inside the NGC Secret, that holds the NGC API key."""
    secrets_prefix: str
    """Flyte's secret env prefix (e.g. `_FSEC_`). Kept for seed compatibility; not needed by
    secretKeyRef injection, so it does not change the manifests."""
    ngc_secret_group: str | None = None
    """Name of the Secret holding the NGC API key; None: the connector's default Secret."""
    hf_token_group: str | None = None
    """Name of the Secret holding the Hugging Face token; None: the connector's default Secret."""
    hf_token_key: str | None = None
    """Key of the Hugging Face token inside its Secret; None: adapters download anonymously."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems, "the NIM secrets")

    def problems(self) -> list[Problem]:
        """Every problem with these fields (empty when valid)."""
        found = Problems()
        add = found.add

        add("ngc_image_secret", check_dns_subdomain(self.ngc_image_secret))
        add("ngc_secret_key", check_secret_key(self.ngc_secret_key))
        if not isinstance(self.secrets_prefix, str) or not _ENV_PREFIX.match(self.secrets_prefix):
            add(
                "secrets_prefix",
                f"{show(self.secrets_prefix)} is not an environment variable prefix "
                f"(letters, digits and '_', e.g. \"_FSEC_\")",
            )
        if self.ngc_secret_group is not None:
            add("ngc_secret_group", check_dns_subdomain(self.ngc_secret_group))
        if self.hf_token_group is not None:
            add("hf_token_group", check_dns_subdomain(self.hf_token_group))
            if self.hf_token_key is None:
                add(
                    "hf_token_group",
                    f"{show(self.hf_token_group)} is set but hf_token_key is not; "
                    f"set hf_token_key to the key of the token inside that Secret",
                )
        if self.hf_token_key is not None:
            add("hf_token_key", check_secret_key(self.hf_token_key))
        return found

    def to_dict(self) -> dict[str, Any]:
        """The config-file form: every field that is not None."""
        return {
            f.name: v for f in dataclasses.fields(self) if (v := getattr(self, f.name)) is not None
        }


# --------------------------------------------------------------------------- NIM

_TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")
_TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_AFFINITY_KEYS = ("nodeAffinity", "podAffinity", "podAntiAffinity")
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")


@dataclass(frozen=True, kw_only=True)
class NIM:
    """One NVIDIA NIM server: image, resources, secrets, adapters and placement.

    Every parameter of the seed keeps its name and default; the rest are optional production
    settings. Collections passed in are copied (None becomes empty). Invalid values raise
    `ConfigError` naming each field.

    Two ways to run it:

    * as a Flyte task of its own: `NIMTask(name=..., nim=NIM(...))` (see `nim_agent.task`);
    * as a sidecar of your own task (the seed's form): `NIM(...).pod_template`, `NIM(...).base_url`.

    Example::

        NIM(secrets=NIMSecrets(ngc_image_secret="ngc-pull", ngc_secret_key="api_key",
                               secrets_prefix="_FSEC_"),
            gpu=1, mem="20Gi", shm_size="16Gi")
    """

    secrets: NIMSecrets
    """Credentials (see NIMSecrets). Required."""
    image: str = DEFAULT_IMAGE
    """NIM server image."""
    health_endpoint: str = "v1/health/ready"
    """Readiness path; the startup and readiness probes use it (a leading '/' is optional)."""
    port: int = 8000
    """Port the NIM server listens on (and the Service exposes)."""
    cpu: int | float | str = 1
    """CPU cores, requests = limits (int, float, or a quantity string like "500m")."""
    gpu: int = 1
    """nvidia.com/gpu, requests = limits; 0 runs without a GPU."""
    mem: str = "20Gi"
    """Memory, requests = limits."""
    shm_size: str = "16Gi"
    """Size of the /dev/shm memory volume (counts towards the pod's memory)."""
    env: dict[str, str] | None = None
    """Extra environment variables for the NIM container (e.g. NIM_PEFT_SOURCE)."""
    hf_repo_ids: list[str] | None = None
    """Hugging Face LoRA adapters, each downloaded to $NIM_PEFT_SOURCE/<name> before start."""
    lora_adapter_mem: str | None = None
    """Memory (requests = limits) of the adapter download container; required with hf_repo_ids."""

    namespace: str | None = None
    """Namespace for the deployment; only where the connector allows it (default: the
    execution's namespace)."""
    ephemeral_storage: str | None = None
    """Ephemeral storage, requests = limits (covers an emptyDir cache and the adapters)."""
    cache_pvc: str | None = None
    """PersistentVolumeClaim mounted at /opt/nim/.cache instead of an emptyDir."""
    node_selector: dict[str, str] | None = None
    """Pod nodeSelector."""
    tolerations: list[dict[str, Any]] | None = None
    """Extra tolerations, in Kubernetes form ({key, operator, value, effect, tolerationSeconds})."""
    gpu_toleration: bool = True
    """With gpu > 0, tolerate the nvidia.com/gpu taint (operator Exists, effect NoSchedule)."""
    affinity: dict[str, Any] | None = None
    """Pod affinity, in Kubernetes form ({nodeAffinity, podAffinity, podAntiAffinity})."""
    runtime_class_name: str | None = None
    """Pod runtimeClassName (e.g. "nvidia")."""
    priority_class_name: str | None = None
    """Pod priorityClassName."""
    service_account: str | None = None
    """Pod serviceAccountName; without one the API token is not mounted."""
    labels: dict[str, str] | None = None
    """Extra labels on the Pod and the Service (nim-agent's own labels win on conflict)."""
    annotations: dict[str, str] | None = None
    """Extra annotations on the Pod (nim-agent's own annotations win on conflict)."""
    image_pull_policy: str | None = None
    """Always, IfNotPresent or Never; None: Kubernetes' default."""
    startup_failure_threshold: int = 100
    """Startup probe failures allowed; with startup_period_seconds this is the loading window."""
    startup_period_seconds: int = 10
    """Seconds between startup probes."""
    readiness_period_seconds: int = 10
    """Seconds between readiness probes."""
    readiness_failure_threshold: int = 3
    """Readiness failures before the pod is taken out of the Service."""
    liveness_period_seconds: int = 30
    """Seconds between liveness probes (/v1/health/live)."""
    liveness_failure_threshold: int = 3
    """Liveness failures before the NIM container is restarted."""
    lora_downloader_image: str | None = None
    """Image of the Hugging Face adapter download container: any image with python3 (it runs
    nim_agent/hf_download.py, standard library only). None: the connector's setting, else the
    NIM image itself."""
    download_inputs: bool = False
    """Sidecar form only: an init container downloads the task's inputs (FlyteFiles too) to
    /shared/inputs.json and /shared/inputs/, a volume the NIM container also mounts."""
    inputs_mem: str = "500Mi"
    """Memory (requests = limits) of the input download container."""
    hf_endpoint: str | None = None
    """Hugging Face Hub (or mirror, or air-gapped hub) the adapters of hf_repo_ids come from;
    None: the connector's setting, else https://huggingface.co."""
    security_profile: str | None = None
    """Security context of the pod: "restricted" or "nvidia" (the NIM Operator's uid 1000 /
    gid 2000 / fsGroup 2000); None: the connector's default. Another one only where the
    connector's allowed_security_profiles lists it."""

    def __post_init__(self) -> None:
        for name in ("env", "node_selector", "labels", "annotations"):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, {})
            elif isinstance(value, Mapping):
                object.__setattr__(self, name, dict(value))
        for name in ("hf_repo_ids", "tolerations"):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, [])
            elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
                object.__setattr__(self, name, copy.deepcopy(list(value)))
        if isinstance(self.affinity, Mapping):
            object.__setattr__(self, "affinity", copy.deepcopy(dict(self.affinity)))
        problems = self.problems()
        if problems:
            raise ConfigError(problems)

    # ---------------------------------------------------------------- validation

    def problems(self) -> list[Problem]:
        """Every problem with this configuration, in field order (empty when valid)."""
        found = Problems()
        add = found.add

        secrets: object = self.secrets
        if not isinstance(secrets, NIMSecrets):
            add(
                "secrets",
                f"{type(secrets).__name__} given; use NIMSecrets(ngc_image_secret=..., "
                f"ngc_secret_key=..., secrets_prefix=...)",
            )
        add("image", check_image(self.image))
        add("health_endpoint", check_http_path(self.health_endpoint))
        if check_int(self.port, 1, 65535):
            add("port", f"{show(self.port)} is not a TCP port; use 1..65535")
        add("cpu", check_cpu(self.cpu))
        add("gpu", check_int(self.gpu, 0, None, "a whole number of GPUs, 0 or more"))
        add("mem", check_memory(self.mem))
        add("shm_size", check_memory(self.shm_size))
        found.extend(self._env_problems())
        found.extend(self._lora_problems())
        if self.namespace is not None:
            add("namespace", check_dns_label(self.namespace))
        if self.ephemeral_storage is not None:
            add("ephemeral_storage", check_memory(self.ephemeral_storage))
        if self.cache_pvc is not None:
            add("cache_pvc", check_dns_subdomain(self.cache_pvc))
        found.extend(_string_map_problems("node_selector", self.node_selector, check_label_value))
        found.extend(self._toleration_problems())
        gpu_toleration: object = self.gpu_toleration
        if not isinstance(gpu_toleration, bool):
            add("gpu_toleration", f"{show(gpu_toleration)} is not true or false")
        found.extend(self._affinity_problems())
        for name in ("runtime_class_name", "priority_class_name", "service_account"):
            if getattr(self, name) is not None:
                add(name, check_dns_subdomain(getattr(self, name)))
        found.extend(_string_map_problems("labels", self.labels, check_label_value))
        found.extend(_string_map_problems("annotations", self.annotations, _check_str))
        policy = self.image_pull_policy
        if policy is not None and policy not in _PULL_POLICIES:
            add(
                "image_pull_policy",
                f"{show(policy)} is not a pull policy; use one of "
                f"{', '.join(_PULL_POLICIES)}{closest(str(policy), _PULL_POLICIES)}",
            )
        for name in (
            "startup_failure_threshold",
            "startup_period_seconds",
            "readiness_period_seconds",
            "readiness_failure_threshold",
            "liveness_period_seconds",
            "liveness_failure_threshold",
        ):
            add(name, check_int(getattr(self, name), 1, None, "an integer of 1 or more"))
        if self.lora_downloader_image is not None:
            add("lora_downloader_image", check_image(self.lora_downloader_image))
        download: object = self.download_inputs
        if not isinstance(download, bool):
            add("download_inputs", f"{show(download)} is not true or false")
        add("inputs_mem", check_memory(self.inputs_mem))
        if self.hf_endpoint is not None:
            add("hf_endpoint", check_http_url(self.hf_endpoint))
        profile = self.security_profile
        if profile is not None and profile not in SECURITY_PROFILES:
            add(
                "security_profile",
                f"{show(profile)} is not a security profile; use one of "
                f"{', '.join(SECURITY_PROFILES)}{closest(str(profile), SECURITY_PROFILES)}",
            )
        return found

    def _env_problems(self) -> list[Problem]:
        env: object = self.env
        if not isinstance(env, dict):
            return [Problem("env", f"{show(env)} is not a mapping of names to strings")]
        found = []
        for name, value in env.items():
            if not isinstance(name, str) or not _ENV_NAME.match(name):
                found.append(
                    Problem(
                        "env",
                        f"{show(name)} is not an environment variable name "
                        f"(letters, digits, '_', '-' and '.', not starting with a digit)",
                    )
                )
            elif name in _RESERVED_ENV:
                found.append(Problem(f"env.{name}", _RESERVED_ENV[name]))
            elif not isinstance(value, str):
                found.append(
                    Problem(
                        f"env.{name}",
                        f"{show(value)} is not a string; quote it: {show(str(value))}",
                    )
                )
        peft = env.get(PEFT_SOURCE_ENV)
        if isinstance(peft, str):
            clean = peft.rstrip("/")
            if not peft.startswith("/") or not clean:
                found.append(
                    Problem(
                        f"env.{PEFT_SOURCE_ENV}",
                        f'{show(peft)} is not an absolute directory; use e.g. "/opt/nim/loras"',
                    )
                )
            elif any(
                clean == p or clean.startswith(p + "/") or p.startswith(clean + "/")
                for p in (CACHE_PATH, SHM_PATH)
            ):
                found.append(
                    Problem(
                        f"env.{PEFT_SOURCE_ENV}",
                        f"{show(peft)} overlaps {CACHE_PATH} or {SHM_PATH}; use its own directory, "
                        f'e.g. "/opt/nim/loras"',
                    )
                )
        return found

    def _lora_problems(self) -> list[Problem]:
        found = []
        repos: object = self.hf_repo_ids
        if not isinstance(repos, list):
            hint = f"[{show(repos)}]" if isinstance(repos, str) else '["owner/name"]'
            return [Problem("hf_repo_ids", f"{show(repos)} is not a list; use e.g. {hint}")]
        seen: dict[str, str] = {}
        for i, repo in enumerate(repos):
            message = check_hf_repo_id(repo)
            if message:
                found.append(Problem(f"hf_repo_ids[{i}]", message))
                continue
            name = adapter_name(repo)
            if name in seen:
                found.append(
                    Problem(
                        f"hf_repo_ids[{i}]",
                        f"{show(repo)} and {show(seen[name])} would both be saved as adapter "
                        f"{show(name)}; keep one of them",
                    )
                )
            seen[name] = repo
        if self.lora_adapter_mem is not None:
            message = check_memory(self.lora_adapter_mem)
            if message:
                found.append(Problem("lora_adapter_mem", message))
        if repos:
            env: object = self.env
            if isinstance(env, dict) and PEFT_SOURCE_ENV not in env:
                found.append(
                    Problem(
                        f"env.{PEFT_SOURCE_ENV}",
                        "is required with hf_repo_ids: the directory the NIM loads adapters from; "
                        f'add env={{"{PEFT_SOURCE_ENV}": "/opt/nim/loras"}}',
                    )
                )
            if self.lora_adapter_mem is None:
                found.append(
                    Problem(
                        "lora_adapter_mem",
                        "is required with hf_repo_ids: memory of the adapter download container, "
                        'e.g. "2Gi"',
                    )
                )
        return found

    def _toleration_problems(self) -> list[Problem]:
        tolerations: object = self.tolerations
        if not isinstance(tolerations, list):
            return [
                Problem(
                    "tolerations",
                    f"{show(tolerations)} is not a list; use e.g. "
                    '[{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]',
                )
            ]
        found = []
        for i, tol in enumerate(tolerations):
            where = f"tolerations[{i}]"
            if not isinstance(tol, Mapping):
                found.append(
                    Problem(where, f"{show(tol)} is not a mapping ({{key, operator, effect, ...}})")
                )
                continue
            for key in tol:
                if key not in _TOLERATION_KEYS:
                    found.append(
                        Problem(
                            f"{where}.{key}",
                            f"unknown toleration field{closest(str(key), _TOLERATION_KEYS)} "
                            f"(valid: {', '.join(_TOLERATION_KEYS)})",
                        )
                    )
            operator = tol.get("operator", "Equal")
            if operator not in ("Equal", "Exists"):
                found.append(
                    Problem(
                        f"{where}.operator",
                        f"{show(operator)} is not Equal or Exists"
                        + closest(str(operator), ("Equal", "Exists")),
                    )
                )
            if "key" in tol and (message := check_label_key(tol["key"])):
                found.append(Problem(f"{where}.key", message))
            if "value" in tol:
                if operator == "Exists":
                    found.append(Problem(f"{where}.value", "must be absent with operator Exists"))
                elif message := check_label_value(tol["value"]):
                    found.append(Problem(f"{where}.value", message))
            if "key" not in tol and operator != "Exists":
                found.append(Problem(f"{where}.key", "is required unless operator is Exists"))
            effect = tol.get("effect")
            if effect is not None and effect not in _TOLERATION_EFFECTS:
                found.append(
                    Problem(
                        f"{where}.effect",
                        f"{show(effect)} is not one of {', '.join(_TOLERATION_EFFECTS)}"
                        f"{closest(str(effect), _TOLERATION_EFFECTS)}",
                    )
                )
            if "tolerationSeconds" in tol:
                seconds = tol["tolerationSeconds"]
                if isinstance(seconds, bool) or not isinstance(seconds, int):
                    found.append(
                        Problem(f"{where}.tolerationSeconds", f"{show(seconds)} is not an integer")
                    )
                elif effect != "NoExecute":
                    found.append(
                        Problem(f"{where}.tolerationSeconds", "is only valid with effect NoExecute")
                    )
        return found

    def _affinity_problems(self) -> list[Problem]:
        affinity: object = self.affinity
        if affinity is None:
            return []
        if not isinstance(affinity, dict):
            return [
                Problem(
                    "affinity",
                    f"{show(affinity)} is not a mapping ({', '.join(_AFFINITY_KEYS)})",
                )
            ]
        found = []
        for key, value in affinity.items():
            if key not in _AFFINITY_KEYS:
                found.append(
                    Problem(
                        f"affinity.{key}",
                        f"unknown affinity field{closest(str(key), _AFFINITY_KEYS)} "
                        f"(valid: {', '.join(_AFFINITY_KEYS)})",
                    )
                )
            elif not isinstance(value, Mapping):
                found.append(Problem(f"affinity.{key}", f"{show(value)} is not a mapping"))
        try:
            json.dumps(affinity, allow_nan=False)
        except (TypeError, ValueError) as exc:
            found.append(Problem("affinity", f"is not plain JSON data ({exc})"))
        return found

    # ---------------------------------------------------------------- derived values

    @property
    def health_path(self) -> str:
        """`health_endpoint` with exactly one leading '/'."""
        return "/" + self.health_endpoint.lstrip("/")

    @property
    def base_url(self) -> str:
        """Seed sidecar form: the NIM's URL from the task's own container."""
        return f"http://localhost:{self.port}"

    @property
    def pod_template(self) -> PodTemplate:
        """Seed sidecar form: a flytekit PodTemplate running this NIM beside your task.

        The NIM server is a native sidecar, the last init container with restartPolicy Always
        (resources requests = limits, /dev/shm, NGC key by secretKeyRef, startup probe), after
        the adapter download into NIM_PEFT_SOURCE; the cache at /opt/nim/.cache is an emptyDir
        (or `cache_pvc`). `pod_spec.containers` is empty: Flyte adds your task's container,
        which Kubernetes starts once the server's startup probe has passed.
        """
        from nim_agent.sidecar import sidecar_pod_template  # imports flytekit and kubernetes

        return sidecar_pod_template(self)

    # ---------------------------------------------------------------- config file form

    def to_dict(self) -> dict[str, Any]:
        """The config-file form (YAML/JSON): NIM parameters at the top, `secrets:` nested.

        Fields that are None or empty are left out; `NIM.from_dict(nim.to_dict()) == nim`.
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "secrets":
                out["secrets"] = value.to_dict()
            elif value is None or (isinstance(value, dict | list) and not value):
                continue
            else:
                out[f.name] = copy.deepcopy(value)
        return out

    @classmethod
    def from_dict(cls, data: object) -> NIM:
        """Build from the config-file form; every problem (unknown keys too) in one ConfigError."""
        if not isinstance(data, Mapping):
            raise ConfigError(
                [Problem("(top level)", f"{show(data)} is not a mapping of NIM parameters")]
            )
        nim_fields = {f.name for f in dataclasses.fields(cls)}
        secret_fields = [f.name for f in dataclasses.fields(NIMSecrets)]
        problems: list[Problem] = []
        for key in data:
            if key not in nim_fields:
                hint = closest(str(key), nim_fields)
                if not hint and key in secret_fields:
                    hint = f"; it belongs under secrets: (secrets.{key})"
                problems.append(Problem(str(key), f"unknown field{hint}"))

        secrets: NIMSecrets | None = None
        raw = data.get("secrets")
        if raw is None:
            problems.append(
                Problem(
                    "secrets", "is required: ngc_image_secret, ngc_secret_key, secrets_prefix, ..."
                )
            )
        elif not isinstance(raw, Mapping):
            problems.append(
                Problem("secrets", f"{show(raw)} is not a mapping of NIMSecrets parameters")
            )
        else:
            secret_problems = []
            for key in raw:
                if key not in secret_fields:
                    secret_problems.append(
                        Problem(
                            f"secrets.{key}", f"unknown field{closest(str(key), secret_fields)}"
                        )
                    )
            missing = [
                n for n in ("ngc_image_secret", "ngc_secret_key", "secrets_prefix") if n not in raw
            ]
            secret_problems.extend(Problem(f"secrets.{n}", "is required") for n in missing)
            given = {str(k): v for k, v in raw.items() if k in secret_fields}
            try:
                # Valid stand-ins for missing keys, so the keys that are there get checked too.
                secrets = NIMSecrets(**{**_PLACEHOLDER_SECRETS.to_dict(), **given})
            except ConfigError as exc:
                secret_problems.extend(exc.prefixed("secrets").problems)
            if secret_problems:
                secrets = None
            problems.extend(secret_problems)

        kwargs = {str(k): v for k, v in data.items() if k in nim_fields and k != "secrets"}
        try:
            # Placeholder secrets still let every NIM-level problem be reported in one go.
            nim = cls(secrets=secrets or _PLACEHOLDER_SECRETS, **kwargs)
        except ConfigError as exc:
            problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems)
        return nim


def _check_str(value: object) -> str | None:
    return None if isinstance(value, str) else f"{show(value)} is not a string; quote it"


def _string_map_problems(name: str, value: object, check_value: Any) -> list[Problem]:
    if not isinstance(value, dict):
        return [Problem(name, f"{show(value)} is not a mapping of strings to strings")]
    found = []
    for key, item in value.items():
        if message := check_label_key(key):
            found.append(Problem(name, message))
        elif message := check_value(item):
            found.append(Problem(f"{name}.{key}", message))
    return found


_PLACEHOLDER_SECRETS = NIMSecrets(
    ngc_image_secret="placeholder", ngc_secret_key="key", secrets_prefix=""
)


# --------------------------------------------------------------------------- Reuse

# "namespace": executions of the same namespace share; "project-domain": only executions of the
# same Flyte project and domain (a namespace several project-domains map to stays divided).
REUSE_SCOPES = ("namespace", "project-domain")


@dataclass(frozen=True, kw_only=True)
class Reuse:
    """Share one warm NIM server between executions (`NIMTask(..., reuse=Reuse(...))`).

    Executions whose serving configuration is the same (everything of the `NIM` but its
    adapters) attach to one running server instead of each starting its own; each adds its
    adapters to it. The server stops `idle_ttl` after its last holder is done (released by a
    teardown or an abort, or past its own ttl), and at the latest when the connector's
    `reuse_max_ttl` has passed. `reuse=True` is `Reuse()`.

    Example::

        NIMTask(name="eval", nim=NIM(...), reuse=Reuse(scope="project-domain",
                                                      idle_ttl=timedelta(minutes=20)))
    """

    scope: str = "namespace"
    """Who shares: "namespace" (any execution in the namespace) or "project-domain" (only
    executions of the same Flyte project and domain)."""
    idle_ttl: timedelta | None = None
    """How long the server stays warm after its last holder is done; None: the connector's
    `reuse_idle_ttl` setting (15 minutes unless the operator changed it)."""

    def __post_init__(self) -> None:
        problems = Problems()
        if self.scope not in REUSE_SCOPES:
            problems.add(
                "reuse.scope",
                f"{show(self.scope)} is not one of {', '.join(REUSE_SCOPES)}"
                f"{closest(str(self.scope), REUSE_SCOPES)}",
            )
        idle: object = self.idle_ttl
        if idle is not None and (not isinstance(idle, timedelta) or idle <= timedelta(0)):
            problems.add(
                "reuse.idle_ttl",
                f"{show(idle)} is not a positive timedelta; use e.g. timedelta(minutes=15)",
            )
        if problems:
            raise ConfigError(problems, "the reuse settings")

    @classmethod
    def of(cls, value: object) -> Reuse | None:
        """`reuse=` as NIMTask takes it: True (defaults), False or None (no sharing), a Reuse."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, Reuse):
            return value
        raise ConfigError(
            [
                Problem(
                    "reuse", f"{show(value)} is not True, False or Reuse(scope=..., idle_ttl=...)"
                )
            ]
        )
