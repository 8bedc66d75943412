"""The task proto: generated code is fresh, and config -> proto -> custom -> config is lossless."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from nim_agent._proto import nim_pb2
from nim_agent.config import NIM, ConfigError, NIMSecrets
from nim_agent.spec import from_custom, from_proto, to_custom, to_proto
from tests.configs import everything

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"


def test_regenerating_the_proto_code_gives_the_committed_files(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in ("nim_pb2.py", "nim_pb2.pyi"):
        fresh = (tmp_path / name).read_text()
        committed = (ROOT / "nim_agent" / "_proto" / name).read_text()
        assert fresh == committed, f"nim_agent/_proto/{name} is stale: run `make proto`"


def test_the_everything_config_really_sets_every_field_away_from_its_default() -> None:
    nim = everything()
    defaults = NIM(secrets=nim.secrets)
    same = [
        f.name for f in dataclasses.fields(NIM) if getattr(nim, f.name) == getattr(defaults, f.name)
    ]
    assert same == ["secrets"]
    assert all(v is not None for v in dataclasses.asdict(nim.secrets).values())


def cases() -> list[tuple[str, NIM]]:
    golden = [
        (p.name, NIM.from_dict(yaml.safe_load(p.read_text())))
        for p in sorted(GOLDEN.glob("*.config.yaml"))
    ]
    base = everything()
    return [
        ("everything", base),
        ("cpu as int", dataclasses.replace(base, cpu=3)),
        ("cpu as float", dataclasses.replace(base, cpu=0.25)),
        *golden,
    ]


@pytest.mark.parametrize("nim", [c[1] for c in cases()], ids=[c[0] for c in cases()])
def test_config_to_proto_to_custom_to_proto_to_config_is_lossless(nim: NIM) -> None:
    ttl = timedelta(hours=3, minutes=30)
    custom = to_custom(nim, ttl)
    # TaskTemplate.custom is a protobuf Struct: numbers become doubles on the way through.
    from google.protobuf.struct_pb2 import Struct

    struct = Struct()
    struct.update(custom)
    through_struct = json_format.MessageToDict(struct)
    spec = from_custom(through_struct)
    assert spec.nim == nim
    assert type(spec.nim.cpu) is type(nim.cpu)
    assert list((spec.nim.env or {}).items()) == list((nim.env or {}).items())  # order kept
    assert spec.ttl == ttl
    assert from_proto(to_proto(nim, ttl)).nim == nim


def test_every_nim_field_has_a_proto_field() -> None:
    proto_fields = {f.name for f in nim_pb2.NIM.DESCRIPTOR.fields}
    expected = {f.name for f in dataclasses.fields(NIM)} - {"cpu"}
    expected |= {"cpu_cores", "cpu_fraction", "cpu_quantity"}
    assert proto_fields == expected
    secret_fields = {f.name for f in nim_pb2.NIMSecrets.DESCRIPTOR.fields}
    assert secret_fields == {f.name for f in dataclasses.fields(NIMSecrets)}


def test_the_custom_carries_the_schema_version_and_readable_field_names() -> None:
    custom = to_custom(everything(), timedelta(hours=2))
    assert custom["schema_version"] == 1
    assert custom["nim"]["shm_size"] == "8Gi"
    assert custom["ttl"] == "7200s"
    assert "ttl" not in to_custom(everything())  # unset: the connector's default_ttl


def test_absent_fields_take_the_python_defaults() -> None:
    custom: dict[str, Any] = {
        "schema_version": 1,
        "nim": {"secrets": {"ngc_image_secret": "a", "ngc_secret_key": "b", "secrets_prefix": ""}},
    }
    spec = from_custom(custom)
    assert spec.nim == NIM(
        secrets=NIMSecrets(ngc_image_secret="a", ngc_secret_key="b", secrets_prefix="")
    )
    assert spec.ttl is None  # the connector's default_ttl applies


def test_a_newer_schema_version_is_refused() -> None:
    custom = to_custom(everything())
    custom["schema_version"] = 2
    with pytest.raises(ConfigError) as caught:
        from_custom(custom)
    assert caught.value.problems[0].field == "schema_version"


def test_an_unknown_key_in_the_custom_is_refused() -> None:
    custom = to_custom(everything())
    custom["nim"]["memory"] = "1Gi"
    with pytest.raises(ConfigError, match="custom: is not a NIM task config"):
        from_custom(custom)


def test_an_invalid_value_in_the_custom_is_a_field_named_config_error() -> None:
    custom = to_custom(everything())
    custom["nim"]["mem"] = "20GB"
    custom["nim"]["secrets"]["ngc_secret_key"] = "bad key"
    with pytest.raises(ConfigError) as caught:
        from_custom(custom)
    fields = {p.field for p in caught.value.problems}
    assert "mem" in fields and "secrets.ngc_secret_key" in fields


@pytest.mark.parametrize("typed", [True, False])
def test_the_typed_endpoint_choice_survives_the_custom(typed: bool) -> None:
    assert (
        from_custom(
            to_custom(NIM(secrets=everything().secrets), timedelta(hours=2), typed)
        ).typed_endpoint
        is typed
    )
