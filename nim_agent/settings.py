"""ConnectorSettings: the connector operator's configuration (not the user's).

A small frozen value object. Sources, later ones winning: the defaults below, a YAML file named by
`NIM_AGENT_CONFIG` (keys are the field names), then one `NIM_AGENT_<FIELD>` environment variable
per field. For example::

    NIM_AGENT_DEFAULT_TTL=2h NIM_AGENT_ALLOWED_NAMESPACES=nim-shared,research nim-agent serve

Durations are written `90s`, `15m`, `2h`, `1h30m` (or a number of seconds); lists are
comma-separated in env vars; `log_links` is a JSON object in its env var. Every problem (unknown
keys included) is reported together in one `ConfigError`, each naming the env var or file key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from nim_agent.config import (
    ConfigError,
    Problem,
    check_dns_label,
    check_dns_subdomain,
    check_image,
    closest,
    show,
)

__all__ = ["ENV_PREFIX", "ConnectorSettings", "format_duration", "parse_duration"]

ENV_PREFIX = "NIM_AGENT_"
CONFIG_FILE_ENV = "NIM_AGENT_CONFIG"
LOG_LINK_FIELDS = ("namespace", "pod", "container")


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
    """Keep failed pods (for inspection, until their ttl) instead of deleting them."""
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
    """How often expired and failed deployments are looked for and deleted."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError(problems, "the connector settings")

    def problems(self) -> list[Problem]:
        """Every problem with these settings, named by field (empty when valid)."""
        found: list[Problem] = []

        def add(name: str, message: str | None) -> None:
            if message:
                found.append(Problem(name, message))

        add("default_secret_name", check_dns_subdomain(self.default_secret_name))
        add("default_namespace", check_dns_label(self.default_namespace))
        for ns in self.allowed_namespaces:
            if ns != "*":
                add("allowed_namespaces", check_dns_label(ns))
        for ns in self.watch_namespaces:
            add("watch_namespaces", check_dns_label(ns))
        for name in ("default_ttl", "max_ttl", "unschedulable_timeout", "reap_interval"):
            value: object = getattr(self, name)
            if value is None and name == "max_ttl":
                continue
            if not isinstance(value, timedelta) or value <= timedelta(0):
                add(name, f'{show(value)} is not a positive duration; use e.g. "2h" or "15m"')
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
        for flag in ("keep_failed", "allow_cache_pvc"):
            flag_value: object = getattr(self, flag)
            if not isinstance(flag_value, bool):
                add(flag, f"{show(flag_value)} is not true or false")
        for link_name, template in self.log_links:
            add(f"log_links.{link_name}", _check_template(template))
        if self.lora_downloader_image is not None:
            add("lora_downloader_image", check_image(self.lora_downloader_image))
        return found

    def namespace_allowed(self, namespace: str) -> bool:
        """Whether a NIM may ask for `namespace` (beyond the execution's own)."""
        return "*" in self.allowed_namespaces or namespace in self.allowed_namespaces

    def log_links_for(
        self, namespace: str, pod: str, container: str = "nim"
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
            if var.startswith(ENV_PREFIX) and var != CONFIG_FILE_ENV:
                raw[var[len(ENV_PREFIX) :].lower()] = (value, var)
        return _build(raw)


_FIELDS = {f.name: f for f in dataclasses.fields(ConnectorSettings)}


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
            kwargs[key] = _convert(key, value)
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


def _convert(name: str, value: object) -> object:
    """One raw value (env string or YAML value) as the field's type; ValueError if it cannot be."""
    if name in ("default_ttl", "max_ttl", "unschedulable_timeout", "reap_interval"):
        if value is None and name == "max_ttl":
            return None
        if value in ("", "none", "None") and name == "max_ttl":
            return None
        return parse_duration(value)
    if name in ("keep_failed", "allow_cache_pvc"):
        return _parse_bool(value)
    if name == "crashloop_restart_threshold":
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{show(value)} is not an integer of 1 or more")
    if name in ("allowed_namespaces", "watch_namespaces"):
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValueError(f"{show(value)} is not a list of namespaces (comma-separated in env)")
    if name == "log_links":
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"is not a JSON object of name -> URL template ({exc.msg})"
                ) from None
        if isinstance(value, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            return tuple((k, v) for k, v in value.items())
        raise ValueError(f"{show(value)} is not a mapping of name -> URL template")
    if name == "lora_downloader_image" and value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValueError(f"{show(value)} is not a string")
    return value


_DURATION = re.compile(r"^(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$")


def parse_duration(value: object) -> timedelta:
    """`90s`, `15m`, `2h`, `1h30m`, or a number of seconds, as a timedelta (ValueError if not)."""
    if isinstance(value, timedelta):
        return value
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return timedelta(seconds=value)
        if isinstance(value, str):
            text = value.strip()
            if re.fullmatch(r"\d+(\.\d+)?", text):
                return timedelta(seconds=float(text))
            m = _DURATION.match(text)
            if text and m:
                return timedelta(
                    hours=int(m["h"] or 0), minutes=int(m["m"] or 0), seconds=int(m["s"] or 0)
                )
    except OverflowError:  # beyond timedelta's 999999999 days, or infinite
        raise ValueError(f"{show(value)} is not a duration this side of year 10000") from None
    raise ValueError(f'{show(value)} is not a duration; use e.g. "90s", "15m", "2h" or "1h30m"')


def format_duration(value: timedelta) -> str:
    """A timedelta in the form parse_duration reads (`2h`, `1h30m`, `45s`)."""
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return text + (f"{secs}s" if secs or not text else "")


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{show(value)} is not true or false")


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
