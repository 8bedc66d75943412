"""The local S3-compatible object store (devcluster/objectstore.sh: MinIO from the Go module proxy).

Its binary takes about 5 minutes to build cold, so `make test` builds it first (`objectstore.sh
build`). Without the binary these tests skip, unless NIM_AGENT_REQUIRE_OBJECTSTORE=1 (set where
the build is part of the run): then a missing binary is a failure, never a silent skip.

flytekit is used exactly as a Flyte task uses it: a FlyteDirectory turned into a literal under a
raw output prefix s3://<bucket>/..., configured only by the FLYTE_AWS_* settings the script writes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.standins import OBJECTSTORE, base_env

MINIO = Path(
    subprocess.run([str(OBJECTSTORE), "bin"], capture_output=True, text=True).stdout.strip()
)
REQUIRED = os.environ.get("NIM_AGENT_REQUIRE_OBJECTSTORE") == "1"

if not os.access(MINIO, os.X_OK):
    if REQUIRED:
        raise RuntimeError(
            f"the MinIO binary {MINIO} is missing: run devcluster/objectstore.sh build"
        )
    pytest.skip(
        f"no MinIO binary at {MINIO} (devcluster/objectstore.sh build makes it)",
        allow_module_level=True,
    )

# Put a directory through the object store and get it back, as flytekit does for task outputs.
ROUND_TRIP = """
import json, os, sys
from flytekit.configuration import DataConfig
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.data_persistence import FileAccessProvider
from flytekit.core.type_engine import TypeEngine
from flytekit.types.directory import FlyteDirectory

source, work = sys.argv[1], sys.argv[2]
prefix = os.environ["OBJECTSTORE_RAW_OUTPUT_PREFIX"] + "/test"
config = DataConfig.auto()  # from FLYTE_AWS_ENDPOINT, FLYTE_AWS_ACCESS_KEY_ID, ..._SECRET_...
writer = FileAccessProvider(os.path.join(work, "w"), raw_output_prefix=prefix, data_config=config)
ctx = FlyteContextManager.current_context()
with FlyteContextManager.with_context(ctx.with_file_access(writer)) as ctx:
    kind = TypeEngine.to_literal_type(FlyteDirectory)
    literal = TypeEngine.to_literal(ctx, FlyteDirectory(source), FlyteDirectory, kind)
uri = literal.scalar.blob.uri
# A second provider with its own sandbox reads it back: nothing is shared but the object store.
reader = FileAccessProvider(os.path.join(work, "r"), raw_output_prefix=prefix, data_config=config)
with FlyteContextManager.with_context(ctx.with_file_access(reader)) as ctx:
    local = TypeEngine.to_python_value(ctx, literal, FlyteDirectory).download()
    exists = reader.exists(uri + "/adapter_config.json")
print(json.dumps({"uri": uri, "local": local, "exists": exists}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def objectstore(state: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = base_env(
        DEVCLUSTER_DIR=str(state),
        OBJECTSTORE_PORT=str(port),
        OBJECTSTORE_BUCKET="nim-test",
        HOME=str(Path.home()),
    )
    if "NIM_AGENT_CACHE" in os.environ:
        env["NIM_AGENT_CACHE"] = os.environ["NIM_AGENT_CACHE"]
    return subprocess.run(
        ["bash", str(OBJECTSTORE), *args], env=env, capture_output=True, text=True, timeout=300
    )


def settings(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Path, int, dict[str, str]]]:
    state, port = tmp_path / "devcluster", free_port()
    up = objectstore(state, port, "up")
    assert up.returncode == 0, up.stderr
    try:
        yield state, port, settings(up.stdout)
    finally:
        objectstore(state, port, "down")


def round_trip(source: Path, work: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", ROUND_TRIP, str(source), str(work)],
        env=base_env(HOME=str(work), **env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_up_writes_flytekits_s3_settings_and_is_idempotent(
    store: tuple[Path, int, dict[str, str]],
) -> None:
    state, port, env = store
    assert env["FLYTE_AWS_ENDPOINT"] == f"http://127.0.0.1:{port}"
    assert env["FLYTE_AWS_ACCESS_KEY_ID"] and len(env["FLYTE_AWS_SECRET_ACCESS_KEY"]) >= 8
    assert env["OBJECTSTORE_RAW_OUTPUT_PREFIX"] == "s3://nim-test/raw"
    assert settings((state / "objectstore.env").read_text()) == env
    assert (state / "objectstore.env").stat().st_mode & 0o077 == 0  # credentials: owner only
    again = objectstore(state, port, "up")
    assert again.returncode == 0 and "already running" in again.stderr
    assert settings(again.stdout) == env  # same credentials, same bucket
    assert objectstore(state, port, "status").returncode == 0


def test_flytekit_puts_and_gets_a_directory_through_it(
    store: tuple[Path, int, dict[str, str]], tmp_path: Path
) -> None:
    _, _, env = store
    source = tmp_path / "adapter"
    source.mkdir()
    (source / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (source / "adapter_model.safetensors").write_bytes(os.urandom(300_000))

    result = round_trip(source, tmp_path / "work", env)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["uri"].startswith("s3://nim-test/raw/test/")
    assert answer["exists"] is True
    back = Path(answer["local"])
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (back / name).read_bytes() == (source / name).read_bytes()


def test_wrong_credentials_are_refused_by_the_server(
    store: tuple[Path, int, dict[str, str]], tmp_path: Path
) -> None:
    _, _, env = store
    source = tmp_path / "adapter"
    source.mkdir()
    (source / "adapter_config.json").write_text("{}")
    wrong = {**env, "FLYTE_AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    result = round_trip(source, tmp_path / "work", wrong)
    assert result.returncode != 0
    assert "SignatureDoesNotMatch" in result.stderr or "Forbidden" in result.stderr


def test_down_stops_it_and_removes_its_data(tmp_path: Path) -> None:
    state, port = tmp_path / "devcluster", free_port()
    assert objectstore(state, port, "up").returncode == 0
    pid = int((state / "objectstore" / "minio.pid").read_text())
    assert objectstore(state, port, "down").returncode == 0
    assert not (state / "objectstore").exists() and not (state / "objectstore.env").exists()
    assert objectstore(state, port, "status").returncode != 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
