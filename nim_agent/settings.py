"""ConnectorSettings: the connector operator's configuration (not the user's), and the
StatusPolicy (classification thresholds) derived from it.

A small frozen value object. Sources, later ones winning: the defaults below, a YAML file named by
`NIM_AGENT_CONFIG` (keys are the field names), then one `NIM_AGENT_<FIELD>` environment variable
per field. For example::

    NIM_AGENT_DEFAULT_TTL=2h NIM_AGENT_ALLOWED_NAMESPACES=nim-shared,research nim-agent serve

Each raw value is converted by the type of its field: durations (`timedelta`) are written
`90s`, `15m`, `2h`, `1h30m` (or a number of seconds); lists (`tuple[str, ...]`) are
comma-separated in env vars; pairs (`log_links`) are a JSON object in its env var; an optional
field is unset by an empty value or `none`. Every problem (unknown keys included) is reported
together in one `ConfigError`, each naming the env var or file key.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import re
import string
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, get_args, get_type_hints

from nim_agent.checks import (
    ConfigError,
    Problem,
    Problems,
    check_dns_label,
    check_dns_subdomain,
    check_http_url,
    check_image,
    closest,
    show,
)
from nim_agent.contract import NIM_CONTAINER, format_duration, parse_duration

__all__ = [
    "ENV_PREFIX",
    "SECURITY_PROFILES",
    "SERVING_CHECKS",
    "ConnectorSettings",
    "StatusPolicy",
    "flytekit_image",
]

ENV_PREFIX = "NIM_AGENT_"
CONFIG_FILE_ENV = "NIM_AGENT_CONFIG"
LOG_LINK_FIELDS = ("namespace", "pod", "container")
SERVING_CHECKS = ("auto", "direct", "proxy", "off")
# "restricted": Pod Security restricted (uid/gid 1000, no privilege escalation, no capabilities,
# RuntimeDefault seccomp, on every container). "nvidia": what NVIDIA's NIM Operator runs, a
# pod-level uid 1000 / gid 2000 / fsGroup 2000 and no container-level context (Pod Security
# baseline).
SECURITY_PROFILES = ("restricted", "nvidia")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def flytekit_image() -> str:
    """flytekit's own image for this Python and the installed flytekit, as flytekit names it
    (``cr.flyte.org/flyteorg/flytekit:py3.11-1.16.31``; ``latest`` for a development build)."""
    try:
        version = importlib.metadata.version("flytekit")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    suffix = version.replace("v", "") if version and "dev" not in version else "latest"
    return f"cr.flyte.org/flyteorg/flytekit:py{sys.version_info[0]}.{sys.version_info[1]}-{suffix}"


@dataclass(frozen=True)
class StatusPolicy:
    """Thresholds of `nim_agent.status.classify`; `ConnectorSettings.status_policy()` makes one.

    Example: ``StatusPolicy(startup_timeout=timedelta(seconds=30 + 10 * 120))``.
    """

    #: FAILED once a container has restarted this many times (kubelet restarts crashing servers).
    crashloop_restart_threshold: int = 3
    #: FAILED when the pod has no node this long after its creation (not for gated pods).
    unschedulable_timeout: timedelta = timedelta(minutes=15)
    #: FAILED when the server container has run this long without becoming ready. The caller
    #: derives it from the startup probe (initial delay + period * failure threshold).
    startup_timeout: timedelta = timedelta(minutes=30)
    #: ErrImagePull / ImagePullBackOff is tolerated this long (registry hiccups, rate limits):
    #: kubelet retries after 10s, 20s, 40s, 80s, so 2 minutes is three or four attempts, and
    #: about four of Flyte's 30-second polls. Permanent errors (not found, denied) fail at once.
    image_pull_grace: timedelta = timedelta(minutes=2)
    #: CreateContainerError / RunContainerError is tolerated this long (runtime timeouts).
    container_error_grace: timedelta = timedelta(minutes=2)
    #: A server that has served (or passed its startup probe) and then stays unready this long
    #: is stopped; before that it is reported, never failed.
    unhealthy_window: timedelta = timedelta(minutes=30)
    #: FAILED when a Ready server's /v1/models has not listed the base model and every adapter
    #: this long after the pod became Ready.
    serving_window: timedelta = timedelta(minutes=5)


@dataclass(frozen=True, kw_only=True)
class ConnectorSettings:
    """How the connector creates and cleans up NIM deployments on this cluster."""

    default_secret_name: str = "nim-secrets"
    """Secret holding the NGC API key (and the HF token) when NIMSecrets names no group."""
    default_namespace: str = "default"
    """Namespace for runs without Flyte execution metadata (local `pyflyte run`)."""
    allowed_namespaces: tuple[str, ...] = ()
    """Namespaces a `NIM(namespace=...)` may choose besides the execution's own; "*" = any."""
    default_ttl: timedelta = timedelta(hours=2)
    """Lifetime of a deployment whose task sets no ttl."""
    max_ttl: timedelta | None = None
    """Longest ttl a task may ask for; None: no limit."""
    keep_failed: bool = False
    """Leave failed servers running (for inspection, until their ttl) instead of stopping them."""
    unhealthy_window: timedelta = timedelta(minutes=30)
    """How long a server that has served may stay unready before nim-agent stops it (a busy NIM
    misses readiness probes; one unready moment never removes a server a workflow uses)."""
    stopped_retention: timedelta = timedelta(hours=1)
    """How long a stopped server's pod is kept (its containers ended, no GPU held) so that GetTask
    keeps answering its verdict and its logs can be read; then it is deleted."""
    service_accounts: tuple[str, ...] = ("default",)
    """ServiceAccounts a `NIM(service_account=...)` may run its server under; "*" = any."""
    unschedulable_timeout: timedelta = timedelta(minutes=15)
    """How long a pod may stay unschedulable before the task fails."""
    crashloop_restart_threshold: int = 3
    """Restarts of the NIM container after which the task fails as crash-looping."""
    log_links: tuple[tuple[str, str], ...] = ()
    """(name, URL template) pairs shown in Flyte; placeholders {namespace}, {pod}, {container}."""
    allow_cache_pvc: bool = True
    """Whether `NIM(cache_pvc=...)` is allowed."""
    lora_downloader_image: str | None = None
    """Default image of the adapter download container; None: the NIM image itself."""
    watch_namespaces: tuple[str, ...] = ()
    """Namespaces whose NIM pods the watch cache follows; empty: all (needs a ClusterRole)."""
    reap_interval: timedelta = timedelta(seconds=30)
    """How often expired, failed and unhealthy deployments are looked for and stopped."""
    leader_election: bool = True
    """Run the cleanup sweep only on the holder of a coordination.k8s.io Lease (any number of
    replicas answer GetTask; one sweeps). False: every process sweeps (a single local server)."""
    lease_namespace: str | None = None
    """Namespace of that Lease; None: the connector pod's own (POD_NAMESPACE), else "default"."""
    lease_name: str = "nim-agent-reaper"
    """Name of that Lease."""
    lease_duration: timedelta = timedelta(seconds=15)
    """How long a Lease holder that stops renewing keeps it: the longest pause in cleanup when
    the holder dies (client-go's default)."""
    serving_check: str = "auto"
    """How GetTask verifies that a Ready server serves (GET /v1/models lists the base model and
    every adapter): "direct" (HTTP to the endpoint; the connector runs in the cluster), "proxy"
    (through the API server's pod proxy; RBAC get on pods/proxy), "auto" (direct in a pod, else
    proxy), or "off" (Ready is enough)."""
    serving_window: timedelta = timedelta(minutes=5)
    """How long after Ready the check may go unsatisfied before the task fails."""
    serving_timeout: timedelta = timedelta(seconds=5)
    """Timeout of one /v1/models request (GetTask itself waits at most 1 s for it)."""
    hf_endpoint: str | None = None
    """Hugging Face Hub (or mirror) the adapter downloader uses when a task names none; None:
    https://huggingface.co."""
    adapter_inputs_image: str | None = None
    """Image of the init container that downloads adapters given as task inputs (it runs
    flytekit); None: flytekit's own image of the installed version (`flytekit_image()`)."""
    adapter_inputs_env: tuple[tuple[str, str], ...] = ()
    """Extra environment of that container: flytekit's object-store settings, e.g.
    {"FLYTE_AWS_ENDPOINT": "http://minio.flyte:9000"}."""
    adapter_inputs_secret: str | None = None
    """Secret whose keys become environment variables of that container only (e.g.
    FLYTE_AWS_ACCESS_KEY_ID, FLYTE_AWS_SECRET_ACCESS_KEY); None: none."""
    security_profile: str = "restricted"
    """Security context of NIM pods: "restricted" (Pod Security restricted) or "nvidia" (the NIM
    Operator's pod-level uid 1000 / gid 2000 / fsGroup 2000; needs Pod Security baseline)."""
    allowed_security_profiles: tuple[str, ...] = ()
    """Profiles a task may choose with NIM(security_profile=...) besides `security_profile`."""
    allow_reuse: bool = True
    """Whether executions may share warm servers (NIMTask(reuse=...)); false: each such task
    gets a server of its own, as without reuse."""
    reuse_idle_ttl: timedelta = timedelta(minutes=15)
    """How long a shared server stays warm after its last holder is done, when the task's Reuse
    sets no idle_ttl."""
    reuse_max_ttl: timedelta = timedelta(hours=24)
    """The longest a shared server lives, whatever its holders (also its activeDeadlineSeconds);
    capped by max_ttl. A holder whose ttl would outlast a server's remaining life gets a new one."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems, "the connector settings")

    def problems(self) -> list[Problem]:
        """Every problem with these settings, named by field (empty when valid)."""
        found = Problems()
        add = found.add
        for name, kind in _TYPES.items():  # what every field of its type must be
            value: object = getattr(self, name)
            if value is None and _optional(kind):
                continue
            if _base(kind) is timedelta and (
                not isinstance(value, timedelta) or value <= timedelta(0)
            ):
                add(name, f'{show(value)} is not a positive duration; use e.g. "2h" or "15m"')
            elif _base(kind) is bool and not isinstance(value, bool):
                add(name, f"{show(value)} is not true or false")
        add("default_secret_name", check_dns_subdomain(self.default_secret_name))
        add("default_namespace", check_dns_label(self.default_namespace))
        for ns in self.allowed_namespaces:
            if ns != "*":
                add("allowed_namespaces", check_dns_label(ns))
        for ns in self.watch_namespaces:
            add("watch_namespaces", check_dns_label(ns))
        for account in self.service_accounts:
            if account != "*":
                add("service_accounts", check_dns_subdomain(account))
        if self.lease_namespace is not None:
            add("lease_namespace", check_dns_label(self.lease_namespace))
        add("lease_name", check_dns_subdomain(self.lease_name))
        if (
            isinstance(self.max_ttl, timedelta)
            and isinstance(self.default_ttl, timedelta)
            and self.default_ttl > self.max_ttl
        ):
            add(
                "default_ttl",
                f"{format_duration(self.default_ttl)} is longer than max_ttl "
                f"{format_duration(self.max_ttl)}",
            )
        threshold: object = self.crashloop_restart_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            add("crashloop_restart_threshold", f"{show(threshold)} is not an integer of 1 or more")
        for link_name, template in self.log_links:
            add(f"log_links.{link_name}", _check_template(template))
        if self.lora_downloader_image is not None:
            add("lora_downloader_image", check_image(self.lora_downloader_image))
        if self.serving_check not in SERVING_CHECKS:
            add(
                "serving_check",
                f"{show(self.serving_check)} is not one of {', '.join(SERVING_CHECKS)}"
                f"{closest(str(self.serving_check), SERVING_CHECKS)}",
            )
        if self.hf_endpoint is not None:
            add("hf_endpoint", check_http_url(self.hf_endpoint))
        if self.adapter_inputs_image is not None:
            add("adapter_inputs_image", check_image(self.adapter_inputs_image))
        for var, _ in self.adapter_inputs_env:
            if not _ENV_NAME.match(var):
                add(f"adapter_inputs_env.{var}", "is not an environment variable name")
        if self.adapter_inputs_secret is not None:
            add("adapter_inputs_secret", check_dns_subdomain(self.adapter_inputs_secret))
        for name, profile in [("security_profile", self.security_profile)] + [
            ("allowed_security_profiles", p) for p in self.allowed_security_profiles
        ]:
            if profile not in SECURITY_PROFILES:
                add(
                    name,
                    f"{show(profile)} is not one of {', '.join(SECURITY_PROFILES)}"
                    f"{closest(str(profile), SECURITY_PROFILES)}",
                )
        return found

    @property
    def shared_lifetime(self) -> timedelta:
        """A shared server's lifetime cap: reuse_max_ttl, within max_ttl."""
        if self.max_ttl is not None and self.max_ttl < self.reuse_max_ttl:
            return self.max_ttl
        return self.reuse_max_ttl

    def status_policy(self) -> StatusPolicy:
        """The thresholds these settings give `classify` (the startup window comes per pod,
        from its own startup probe: `nim_agent.status.policy_for`)."""
        return StatusPolicy(
            crashloop_restart_threshold=self.crashloop_restart_threshold,
            unschedulable_timeout=self.unschedulable_timeout,
            unhealthy_window=self.unhealthy_window,
            serving_window=self.serving_window,
        )

    def service_account_allowed(self, account: str) -> bool:
        """Whether a NIM may run its server under ServiceAccount `account`."""
        return "*" in self.service_accounts or account in self.service_accounts

    def security_profile_allowed(self, profile: str) -> bool:
        """Whether a task may ask for this security profile."""
        return profile == self.security_profile or profile in self.allowed_security_profiles

    def namespace_allowed(self, namespace: str) -> bool:
        """Whether a NIM may ask for `namespace` (beyond the execution's own)."""
        return "*" in self.allowed_namespaces or namespace in self.allowed_namespaces

    def log_links_for(
        self, namespace: str, pod: str, container: str = NIM_CONTAINER
    ) -> list[tuple[str, str]]:
        """The (name, URL) log links for one pod."""
        values = {"namespace": namespace, "pod": pod, "container": container}
        return [(name, template.format(**values)) for name, template in self.log_links]

    # ---------------------------------------------------------------- loading

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "settings") -> ConnectorSettings:
        """Settings from a mapping of field names to values (a parsed YAML file)."""
        return _build({str(k): (v, f"{k} ({where})") for k, v in data.items()})

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> ConnectorSettings:
        """Defaults, then the YAML file named by NIM_AGENT_CONFIG, then NIM_AGENT_* env vars."""
        env = os.environ if environ is None else environ
        raw: dict[str, tuple[object, str]] = {}
        path = env.get(CONFIG_FILE_ENV)
        if path:
            for key, value in _read_yaml(path).items():
                raw[str(key)] = (value, f"{key} ({path})")
        for var, value in env.items():
            if (
                var.startswith(ENV_PREFIX)
                and var != CONFIG_FILE_ENV
                and not _SERVICE_LINK.match(var)
            ):
                raw[var[len(ENV_PREFIX) :].lower()] = (value, var)
        return _build(raw)


# What Kubernetes puts in a pod's environment for each Service of its namespace (service links):
# for a Service named nim-agent, or nim-agent-<x>, these start with our prefix. Never settings.
_SERVICE_LINK = re.compile(
    r"^NIM_AGENT(_[A-Z0-9_]+)?_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_\d+_(TCP|UDP|SCTP)"
    r"(_(PROTO|PORT|ADDR))?)?)$"
)

_FIELDS = {f.name: f for f in dataclasses.fields(ConnectorSettings)}
_TYPES: dict[str, Any] = get_type_hints(ConnectorSettings)


def _build(raw: Mapping[str, tuple[object, str]]) -> ConnectorSettings:
    problems: list[Problem] = []
    kwargs: dict[str, Any] = {}
    origin = {name: name for name in _FIELDS}
    for key, (value, where) in raw.items():
        if key not in _FIELDS:
            if where.startswith(ENV_PREFIX):
                hint = closest(where, [ENV_PREFIX + n.upper() for n in _FIELDS])
            else:
                hint = closest(key, _FIELDS)
            problems.append(Problem(where, f"unknown setting{hint}"))
            continue
        origin[key] = where
        try:
            kwargs[key] = _CONVERTERS[key](value)
        except ValueError as exc:
            problems.append(Problem(where, str(exc)))
    try:
        # Built even after conversion problems (with defaults for those) to report everything.
        settings = ConnectorSettings(**kwargs)
    except ConfigError as exc:
        for p in exc.problems:
            base, dot, rest = p.field.partition(".")
            problems.append(Problem(origin.get(base, base) + dot + rest, p.message))
    if problems:
        raise ConfigError(problems, "the connector settings")
    return settings


# --------------------------------------------------------------------------- converters
# One per field type: a raw value (an env var's string, or a YAML value) to the field's type,
# or ValueError with the message. Each field gets the converter of its annotation.


def _to_str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{show(value)} is not a string")
    return value


def _to_int(value: object) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"{show(value)} is not an integer")


def _to_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{show(value)} is not true or false")


def _to_names(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"{show(value)} is not a list of names (comma-separated in an env var)")


def _to_pairs(value: object) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"is not a JSON object of names to strings ({exc.msg})") from None
    if isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return tuple((k, v) for k, v in value.items())
    raise ValueError(f"{show(value)} is not a mapping of names to strings")


_BY_TYPE: dict[Any, Callable[[object], Any]] = {
    str: _to_str,
    int: _to_int,
    bool: _to_bool,
    timedelta: parse_duration,
    tuple[str, ...]: _to_names,
    tuple[tuple[str, str], ...]: _to_pairs,
}


def _optional(kind: Any) -> bool:
    return isinstance(kind, types.UnionType) and type(None) in get_args(kind)


def _base(kind: Any) -> Any:
    """`X` for `X | None`, else the type itself."""
    if _optional(kind):
        return next(a for a in get_args(kind) if a is not type(None))
    return kind


def _converter(kind: Any) -> Callable[[object], Any]:
    convert = _BY_TYPE[_base(kind)]  # KeyError at import: a new field type needs a converter
    if not _optional(kind):
        return convert

    def optional(value: object) -> Any:
        unset = value is None or (isinstance(value, str) and value.strip().lower() in ("", "none"))
        return None if unset else convert(value)

    return optional


_CONVERTERS = {name: _converter(kind) for name, kind in _TYPES.items()}


def _check_template(template: str) -> str | None:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        return f"{show(template)} is not a URL template ({exc})"
    unknown = [n for n in names if n not in LOG_LINK_FIELDS]
    if unknown:
        return f"{show(template)} uses {{{unknown[0]}}}; the placeholders are " + ", ".join(
            "{" + n + "}" for n in LOG_LINK_FIELDS
        )
    return None


def _read_yaml(path: str) -> dict[str, Any]:
    import yaml  # only the operator's file needs it

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(
            [Problem(CONFIG_FILE_ENV, f"cannot read {path}: {exc.strerror}")]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(CONFIG_FILE_ENV, f"{path} is not valid YAML: {exc}")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([Problem(CONFIG_FILE_ENV, f"{path} is not a mapping of settings")])
    return data
