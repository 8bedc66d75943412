"""LoRA adapters as task inputs: NIMTask's declaration, the connector's reading of the inputs,
and the pod's download program (nim_agent/flyte_download.py) run for real.

The program runs as the pod runs it (its source given to `python3 -c`, this environment's
flytekit standing in for the flytekit image), first from folders on this machine (flytekit reads
a local path as it reads a bucket), then from a real S3-compatible server: MinIO from
devcluster/objectstore.sh. Without the MinIO binary those tests skip, unless
NIM_AGENT_REQUIRE_OBJECTSTORE=1 (as for tests/unit/test_objectstore.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flytekit import kwtypes
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.data_persistence import FileAccessProvider
from flytekit.core.type_engine import TypeEngine
from flytekit.models.literals import LiteralMap
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile

from nim_agent import NIM, ConfigError, NIMSecrets, NIMTask
from nim_agent.connector import adapters_of
from nim_agent.contract import NIMEndpoint
from nim_agent.flyte_download import MARKER, is_adapter
from nim_agent.hf_download import select_adapter_files
from nim_agent.spec import from_custom
from nim_agent.task import _in_object_store
from tests.standins import (
    base_env,
    objectstore_binary,
    objectstore_down,
    objectstore_up,
    run_inputs_downloader,
)

SECRETS = NIMSecrets(ngc_image_secret="ngc", ngc_secret_key="key", secrets_prefix="_FSEC_")
PEFT = {"NIM_PEFT_SOURCE": "/opt/nim/loras"}
NIM_WITH_PEFT = NIM(secrets=SECRETS, env=PEFT, lora_adapter_mem="2Gi")


def make_adapter(folder: Path, weights: bytes = b"\x00" * 1000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


# --------------------------------------------------------------------------- NIMTask


def test_a_nim_task_declares_its_adapter_inputs_and_keeps_endpoint_as_its_output() -> None:
    task = NIMTask(
        name="serve",
        nim=NIM_WITH_PEFT,
        inputs=kwtypes(support=FlyteDirectory, more=dict[str, FlyteDirectory]),
    )
    assert set(task.python_interface.inputs) == {"support", "more"}
    assert task.python_interface.outputs == {"endpoint": str}


def test_typed_endpoint_makes_the_output_a_nim_endpoint_and_is_in_the_task_config() -> None:
    from flytekit.configuration import ImageConfig, SerializationSettings

    task = NIMTask(name="serve", nim=NIM(secrets=SECRETS), typed_endpoint=True)
    assert task.python_interface.outputs == {"endpoint": NIMEndpoint}
    custom = task.get_custom(SerializationSettings(ImageConfig.auto_default_image()))
    assert from_custom(custom).typed_endpoint is True
    plain = NIMTask(name="plain", nim=NIM(secrets=SECRETS))
    plain_custom = plain.get_custom(SerializationSettings(ImageConfig.auto_default_image()))
    assert from_custom(plain_custom).typed_endpoint is False


@pytest.mark.parametrize(
    ("nim", "inputs", "fields"),
    [
        pytest.param(
            NIM(secrets=SECRETS),
            kwtypes(lora=FlyteDirectory),
            ["env.NIM_PEFT_SOURCE", "lora_adapter_mem"],
            id="adapters need NIM_PEFT_SOURCE and lora_adapter_mem",
        ),
        pytest.param(
            NIM_WITH_PEFT, kwtypes(lora=FlyteFile), ["inputs.lora"], id="a file is not an adapter"
        ),
        pytest.param(NIM_WITH_PEFT, kwtypes(n=int), ["inputs.n"], id="nor is a number"),
        pytest.param(
            NIM_WITH_PEFT,
            {"lora": dict[int, FlyteDirectory]},
            ["inputs.lora"],
            id="a dict needs string keys",
        ),
        pytest.param(
            NIM_WITH_PEFT,
            {"_private": FlyteDirectory},
            ["inputs._private"],
            id="an input name that is no adapter name",
        ),
        pytest.param(
            NIM(
                secrets=SECRETS,
                env=PEFT,
                lora_adapter_mem="2Gi",
                hf_repo_ids=["tloen/alpaca-lora-7b"],
            ),
            kwtypes(**{"alpaca-lora-7b": FlyteDirectory}),
            ["inputs.alpaca-lora-7b"],
            id="the name of an adapter from the Hub",
        ),
        pytest.param(NIM_WITH_PEFT, ["lora"], ["inputs"], id="inputs is a mapping"),
    ],
)
def test_invalid_adapter_inputs_are_refused_naming_the_field(
    nim: NIM, inputs: Any, fields: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        NIMTask(name="serve", nim=nim, inputs=inputs)
    assert [p.field for p in caught.value.problems] == fields


def test_typed_endpoint_must_be_a_bool() -> None:
    with pytest.raises(ConfigError) as caught:
        NIMTask(name="serve", nim=NIM(secrets=SECRETS), typed_endpoint="yes")  # type: ignore[arg-type]
    assert caught.value.problems[0].field == "typed_endpoint"


# ------------------------------------------------------------------ the connector's reading


def literals(values: dict[str, Any], types: dict[str, type]) -> LiteralMap:
    """The inputs as flytepropeller hands them to CreateTask (remote URIs stay as they are)."""
    ctx = FlyteContextManager.current_context()
    return TypeEngine.dict_to_literal_map(ctx, values, types)


def test_the_connector_reads_adapters_from_directory_and_dict_inputs() -> None:
    inputs = literals(
        {
            "support": FlyteDirectory("s3://flyte/raw/a/o0"),
            "more": {"math": FlyteDirectory("s3://flyte/raw/b"), "code": FlyteDirectory("gs://c")},
        },
        {"support": FlyteDirectory, "more": dict[str, FlyteDirectory]},
    )
    found = adapters_of(inputs)
    assert found == {"support": "s3://flyte/raw/a/o0", "math": "s3://flyte/raw/b", "code": "gs://c"}
    assert list(found) == ["code", "math", "support"]  # by input name ("more" < "support"), key
    assert adapters_of(None) == {}


@pytest.mark.parametrize(
    ("values", "types", "field", "fragment"),
    [
        pytest.param(
            {"lora": FlyteFile("s3://b/f.bin")},
            {"lora": FlyteFile},
            "inputs.lora",
            "is a file",
            id="a file",
        ),
        pytest.param({"n": 3}, {"n": int}, "inputs.n", "not a FlyteDirectory", id="a number"),
        pytest.param(
            {"more": {"bad name": FlyteDirectory("s3://b/x")}},
            {"more": dict[str, FlyteDirectory]},
            "inputs.more[bad name]",
            "not an adapter name",
            id="a key that is no adapter name",
        ),
        pytest.param(
            {"a": FlyteDirectory("s3://b/x"), "more": {"a": FlyteDirectory("s3://b/y")}},
            {"a": FlyteDirectory, "more": dict[str, FlyteDirectory]},
            "inputs.more[a]",
            "given twice",
            id="a name given twice",
        ),
        pytest.param(
            {"nums": [1, 2]},
            {"nums": list[int]},
            "inputs.nums",
            "not a FlyteDirectory or a dict of them",
            id="a list",
        ),
    ],
)
def test_inputs_that_are_no_adapters_are_refused_naming_the_input(
    values: dict[str, Any], types: dict[str, type], field: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        adapters_of(literals(values, types))
    (problem,) = caught.value.problems
    assert problem.field == field and fragment in problem.message


# --------------------------------------------------------------------------- local runs


def test_a_local_folder_with_a_local_raw_output_prefix_is_refused_naming_the_input(
    tmp_path: Path,
) -> None:
    adapter = make_adapter(tmp_path / "adapter")
    files = FileAccessProvider(str(tmp_path / "sandbox"), raw_output_prefix=str(tmp_path / "raw"))
    ctx = FlyteContextManager.current_context().with_file_access(files).build()
    with FlyteContextManager.with_context(ctx.new_builder()), pytest.raises(ConfigError) as caught:
        _in_object_store("support", FlyteDirectory(str(adapter)))
    (problem,) = caught.value.problems
    assert problem.field == "inputs.support"
    assert "--raw-output-data-prefix s3://" in problem.message
    assert str(adapter) in problem.message


def test_a_remote_directory_is_passed_on_as_it_is() -> None:
    remote = _in_object_store("more[x]", {"x": FlyteDirectory("s3://b/raw/o0")})
    assert remote["x"].path == "s3://b/raw/o0"


# --------------------------------------------------------------------------- the pod's program


@pytest.mark.parametrize(
    "names",
    [
        ["adapter_config.json", "adapter_model.safetensors"],
        ["adapter_config.json", "adapter_model.bin", "README.md"],
        ["lora.nemo"],
        ["adapter_config.json"],
        ["adapter_config.json", "training_args.bin"],
        ["checkpoint-1/adapter_config.json", "checkpoint-1/adapter_model.safetensors"],
        [],
    ],
)
def test_both_downloaders_agree_on_what_an_adapter_folder_is(names: list[str]) -> None:
    assert is_adapter(names) == bool(select_adapter_files(names))


def test_the_program_downloads_each_adapter_into_peft_source(tmp_path: Path) -> None:
    a = make_adapter(tmp_path / "outputs" / "a", b"A" * 5000)
    b = make_adapter(tmp_path / "outputs" / "b" / "o0", b"B" * 7000)
    (b / "README.md").write_text("trained by finetune()")
    peft = tmp_path / "loras"
    result = run_inputs_downloader({"support": str(a), "math": str(b)}, peft)
    assert result.returncode == 0, result.stderr
    assert (peft / "support" / "adapter_model.safetensors").read_bytes() == b"A" * 5000
    assert (peft / "math" / "README.md").read_text() == "trained by finetune()"
    marker = json.loads((peft / "math" / MARKER).read_text())
    assert marker["uri"] == str(b) and marker["files"]["adapter_model.safetensors"] == 7000
    assert sorted(p.name for p in peft.iterdir()) == ["math", "support"]  # no staging left
    assert "done: 2 adapters" in result.stdout


def test_with_a_cache_a_later_pod_downloads_nothing_and_links_the_cached_copy(
    tmp_path: Path,
) -> None:
    source = make_adapter(tmp_path / "outputs" / "a")
    cache = tmp_path / "pvc" / "nim-agent" / "adapters"
    first = run_inputs_downloader(
        {"support": str(source)}, tmp_path / "pod1", NIM_AGENT_ADAPTER_CACHE=str(cache)
    )
    assert first.returncode == 0, first.stderr
    (source / "adapter_model.safetensors").write_bytes(b"changed")  # a second read would show
    second = run_inputs_downloader(
        {"support": str(source)}, tmp_path / "pod2", NIM_AGENT_ADAPTER_CACHE=str(cache)
    )
    assert second.returncode == 0, second.stderr
    assert "already holds" in second.stdout and "1 already there" in second.stdout
    link = tmp_path / "pod2" / "support"
    assert link.is_symlink() and Path(os.readlink(link)).parent == cache / "inputs"
    assert (link / "adapter_model.safetensors").read_bytes() == b"\x00" * 1000


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        pytest.param(
            lambda root: (root / "x").mkdir() or (root / "x" / "model.safetensors").write_text(""),
            "holds no LoRA adapter at its top",
            id="a folder without an adapter",
        ),
        pytest.param(lambda root: None, "nothing was downloaded from", id="nothing at the URI"),
    ],
)
def test_a_failed_download_exits_1_naming_the_adapter_and_what_to_do(
    tmp_path: Path, make: Any, fragment: str
) -> None:
    make(tmp_path)
    termination = tmp_path / "termination-log"
    termination.write_text("")
    result = run_inputs_downloader(
        {"support": str(tmp_path / "x")},
        tmp_path / "loras",
        NIM_AGENT_TERMINATION_LOG=str(termination),
    )
    assert result.returncode == 1
    assert "adapter support" in result.stderr and fragment in result.stderr
    assert fragment in termination.read_text()
    assert not (tmp_path / "loras" / "support").exists()


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"NIM_AGENT_ADAPTER_URIS": "[]"}, "is not a JSON object"),
        ({"NIM_AGENT_ADAPTER_URIS": '{"a b": "s3://x"}'}, "'a b' is not an adapter name"),
        ({"NIM_PEFT_SOURCE": "loras"}, "NIM_PEFT_SOURCE: 'loras' is not an absolute path"),
        ({"NIM_AGENT_ADAPTER_CACHE": "cache"}, "NIM_AGENT_ADAPTER_CACHE: 'cache'"),
    ],
)
def test_invalid_settings_exit_2_naming_the_variable(
    tmp_path: Path, env: dict[str, str], fragment: str
) -> None:
    result = run_inputs_downloader({"a": "s3://b/x"}, tmp_path / "loras", **env)
    assert result.returncode == 2 and fragment in result.stderr


# --------------------------------------------------------------------------- through MinIO

MINIO = objectstore_binary()
NEEDS_MINIO = pytest.mark.skipif(
    not os.access(MINIO, os.X_OK) and os.environ.get("NIM_AGENT_REQUIRE_OBJECTSTORE") != "1",
    reason=f"no MinIO binary at {MINIO} (devcluster/objectstore.sh build makes it)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    state, port = tmp_path_factory.mktemp("objectstore"), free_port()
    env = objectstore_up(state, port)
    try:
        yield env
    finally:
        objectstore_down(state, port)


# What NIMTask.execute does in a local run, in a process of its own (as `pyflyte run` is), with
# the raw output prefix in the object store and flytekit's S3 settings from the environment.
UPLOAD = """
import sys
from flytekit.configuration import DataConfig
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.data_persistence import FileAccessProvider
from flytekit.types.directory import FlyteDirectory
from nim_agent.task import _in_object_store

sandbox, prefix, folder = sys.argv[1:4]
files = FileAccessProvider(sandbox, raw_output_prefix=prefix, data_config=DataConfig.auto())
ctx = FlyteContextManager.current_context().with_file_access(files)
with FlyteContextManager.with_context(ctx):
    print(_in_object_store("support", FlyteDirectory(folder)).path)
"""


def upload(store: dict[str, str], folder: Path, sandbox: Path) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            UPLOAD,
            str(sandbox),
            store["OBJECTSTORE_RAW_OUTPUT_PREFIX"],
            str(folder),
        ],
        env=base_env(
            HOME=str(sandbox), **{k: v for k, v in store.items() if k.startswith("FLYTE_")}
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@NEEDS_MINIO
def test_a_local_run_uploads_a_local_adapter_to_the_raw_output_prefix_for_the_pod(
    store: dict[str, str], tmp_path: Path
) -> None:
    adapter = make_adapter(tmp_path / "adapter", b"W" * 4096)
    uri = upload(store, adapter, tmp_path / "sandbox")
    assert uri.startswith(store["OBJECTSTORE_RAW_OUTPUT_PREFIX"] + "/")
    # The pod's program reads it back from there, with the object store's settings only.
    peft = tmp_path / "loras"
    credentials = {k: v for k, v in store.items() if k.startswith("FLYTE_AWS_")}
    result = run_inputs_downloader({"support": uri}, peft, **credentials)
    assert result.returncode == 0, result.stderr
    assert (peft / "support" / "adapter_model.safetensors").read_bytes() == b"W" * 4096


@NEEDS_MINIO
def test_without_object_store_credentials_the_download_fails_naming_what_to_grant(
    store: dict[str, str], tmp_path: Path
) -> None:
    uri = upload(store, make_adapter(tmp_path / "adapter"), tmp_path / "sandbox")
    wrong = {
        "FLYTE_AWS_ENDPOINT": store["FLYTE_AWS_ENDPOINT"],
        "FLYTE_AWS_ACCESS_KEY_ID": store["FLYTE_AWS_ACCESS_KEY_ID"],
        "FLYTE_AWS_SECRET_ACCESS_KEY": "not-the-secret",
    }
    result = run_inputs_downloader({"support": uri}, tmp_path / "loras", **wrong)
    assert result.returncode == 1
    assert f"adapter support: cannot download {uri}" in result.stderr
    assert "adapter_inputs_secret" in result.stderr
