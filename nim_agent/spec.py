"""The "nim" task's configuration: NIM + ttl <-> NIMTaskConfig proto <-> TaskTemplate.custom.

Purely computational, no I/O, and no flytekit: the task side (`nim_agent.task`) writes the
custom with `to_custom`; the connector reads it back with `from_custom`. The schema is
proto/nim_agent/v1/nim.proto; the custom is its JSON form with the proto's field names.

Public API::

    to_proto(nim, ttl, typed_endpoint, reuse) -> NIMTaskConfig   from_proto(msg) -> NIMTaskSpec
    to_custom(nim, ttl, typed_endpoint, reuse) -> dict           from_custom(dict) -> NIMTaskSpec

`NIMTaskSpec` is (nim, ttl, typed_endpoint, reuse).

`from_proto` validates (it builds a `NIM`), so a damaged config surfaces as `ConfigError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from google.protobuf import json_format

from nim_agent._proto import nim_pb2
from nim_agent.checks import ConfigError, Problem, show
from nim_agent.config import NIM, Reuse

__all__ = [
    "SCHEMA_VERSION",
    "TASK_TYPE",
    "TEARDOWN_TASK_TYPE",
    "NIMTaskSpec",
    "check_ttl",
    "from_custom",
    "from_proto",
    "to_custom",
    "to_proto",
]

TASK_TYPE = "nim"
TEARDOWN_TASK_TYPE = "nim-teardown"
SCHEMA_VERSION = 1

# NIM fields that map one to one onto an `optional` scalar of the same name in the proto (read
# from the schema itself, so a field added to both is carried without a list to update here).
_SCALARS = tuple(
    f.name
    for f in nim_pb2.NIM.DESCRIPTOR.fields
    if f.has_presence
    and f.message_type is None
    and f.name in {field.name for field in dataclasses.fields(NIM)}
)
_MAPS = ("node_selector", "labels", "annotations")
_SECRET_OPTIONALS = ("ngc_secret_group", "hf_token_group", "hf_token_key")
_TOLERATION_FIELDS = {
    "key": "key",
    "operator": "operator",
    "value": "value",
    "effect": "effect",
    "tolerationSeconds": "toleration_seconds",
}


@dataclass(frozen=True)
class NIMTaskSpec:
    """What a "nim" task asks for: the deployment, how long it may live, its output's form."""

    nim: NIM
    ttl: timedelta | None  # None: the connector's default_ttl
    typed_endpoint: bool = False
    reuse: Reuse | None = None  # None: a server of its own


def check_ttl(ttl: object) -> timedelta | None:
    """`ttl` if it is None (the connector's default) or a positive timedelta, else ConfigError
    naming ttl."""
    if ttl is None:
        return None
    if not isinstance(ttl, timedelta) or ttl <= timedelta(0):
        raise ConfigError(
            [
                Problem(
                    "ttl", f"{show(ttl)} is not a positive timedelta; use e.g. timedelta(hours=2)"
                )
            ]
        )
    return ttl


def _check_schema_version(version: object) -> None:
    """ConfigError when the config was written by a newer nim-agent than this one."""
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise ConfigError(
            [
                Problem(
                    "schema_version",
                    f"{version} is newer than this nim-agent understands ({SCHEMA_VERSION}); "
                    "upgrade the connector",
                )
            ]
        )


def to_proto(
    nim: NIM,
    ttl: timedelta | None = None,
    typed_endpoint: bool = False,
    reuse: Reuse | None = None,
) -> nim_pb2.NIMTaskConfig:
    """The task config message for `nim` living `ttl` (None: the connector's default_ttl;
    output a NIMEndpoint if typed; shared with other executions per `reuse`)."""
    msg = nim_pb2.NIMTaskConfig(schema_version=SCHEMA_VERSION, typed_endpoint=typed_endpoint)
    checked = check_ttl(ttl)
    if checked is not None:
        msg.ttl.FromTimedelta(checked)
    if reuse is not None:
        msg.reuse.scope = reuse.scope
        if reuse.idle_ttl is not None:
            msg.reuse.idle_ttl.FromTimedelta(reuse.idle_ttl)
    m = msg.nim
    s = nim.secrets
    m.secrets.ngc_image_secret = s.ngc_image_secret
    m.secrets.ngc_secret_key = s.ngc_secret_key
    m.secrets.secrets_prefix = s.secrets_prefix
    for name in _SECRET_OPTIONALS:
        if (value := getattr(s, name)) is not None:
            setattr(m.secrets, name, value)
    for name in _SCALARS:
        if (value := getattr(nim, name)) is not None:
            setattr(m, name, value)
    if isinstance(nim.cpu, str):
        m.cpu_quantity = nim.cpu
    elif isinstance(nim.cpu, int):
        m.cpu_cores = nim.cpu
    else:
        m.cpu_fraction = nim.cpu
    for key, val in (nim.env or {}).items():
        m.env.add(name=key, value=val)
    m.hf_repo_ids.extend(nim.hf_repo_ids or [])
    for name in _MAPS:
        getattr(m, name).update(getattr(nim, name) or {})
    for tol in nim.tolerations or []:
        t = m.tolerations.add()
        for key, field_name in _TOLERATION_FIELDS.items():
            if key in tol:
                setattr(t, field_name, tol[key])
    if nim.affinity is not None:
        m.affinity.update(nim.affinity)
    return msg


def from_proto(msg: nim_pb2.NIMTaskConfig) -> NIMTaskSpec:
    """The NIM and ttl a task config message describes (validated: ConfigError if invalid)."""
    _check_schema_version(msg.schema_version)
    m = msg.nim
    secrets: dict[str, Any] = {
        "ngc_image_secret": m.secrets.ngc_image_secret,
        "ngc_secret_key": m.secrets.ngc_secret_key,
        "secrets_prefix": m.secrets.secrets_prefix,
    }
    for name in _SECRET_OPTIONALS:
        if m.secrets.HasField(name):  # type: ignore[arg-type]
            secrets[name] = getattr(m.secrets, name)
    kwargs: dict[str, Any] = {
        name: getattr(m, name)
        for name in _SCALARS
        if m.HasField(name)  # type: ignore[arg-type]
    }
    which = m.WhichOneof("cpu")
    if which is not None:
        kwargs["cpu"] = getattr(m, which)
    kwargs["env"] = {e.name: e.value for e in m.env}
    kwargs["hf_repo_ids"] = list(m.hf_repo_ids)
    for name in _MAPS:
        kwargs[name] = dict(getattr(m, name))
    kwargs["tolerations"] = [
        {key: getattr(t, f) for key, f in _TOLERATION_FIELDS.items() if t.HasField(f)}  # type: ignore[arg-type]
        for t in m.tolerations
    ]
    if m.HasField("affinity"):
        kwargs["affinity"] = _whole_numbers(json_format.MessageToDict(m.affinity))
    nim = NIM.from_dict({"secrets": secrets, **kwargs})  # reports every problem together
    ttl = msg.ttl.ToTimedelta() if msg.HasField("ttl") else None
    reuse = None
    if msg.HasField("reuse"):
        idle = msg.reuse.idle_ttl.ToTimedelta() if msg.reuse.HasField("idle_ttl") else None
        reuse = Reuse(scope=msg.reuse.scope or "namespace", idle_ttl=idle)
    return NIMTaskSpec(nim=nim, ttl=ttl, typed_endpoint=msg.typed_endpoint, reuse=reuse)


def _whole_numbers(value: Any) -> Any:
    """Struct keeps every number as a double; Kubernetes' affinity numbers are integers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def to_custom(
    nim: NIM,
    ttl: timedelta | None = None,
    typed_endpoint: bool = False,
    reuse: Reuse | None = None,
) -> dict[str, Any]:
    """`TaskTemplate.custom` for a "nim" task: the config message as JSON (field names kept)."""
    return json_format.MessageToDict(
        to_proto(nim, ttl, typed_endpoint, reuse), preserving_proto_field_name=True
    )


def from_custom(custom: Mapping[str, Any]) -> NIMTaskSpec:
    """Read `TaskTemplate.custom` back; ConfigError (field-named) if it is not a valid config."""
    # Before parsing: a newer schema's new fields would fail the parse with a vaguer message.
    _check_schema_version(custom.get("schema_version", 0))
    msg = nim_pb2.NIMTaskConfig()
    try:
        json_format.ParseDict(dict(custom), msg)
    except json_format.ParseError as exc:
        raise ConfigError([Problem("custom", f"is not a NIM task config: {exc}")]) from None
    return from_proto(msg)
