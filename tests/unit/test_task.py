"""NIMTask: task type, interface, custom, serialization and a local run through a connector."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import flytekit
import pytest
from flyteidl.admin import task_pb2 as admin_task_pb2
from flyteidl.core.execution_pb2 import TaskExecution
from flytekit import task, workflow
from flytekit.configuration import ImageConfig, SerializationSettings
from flytekit.extend.backend.base_connector import (
    AsyncConnectorBase,
    ConnectorRegistry,
    Resource,
    ResourceMeta,
    TaskCategory,
)
from flytekit.models.task import TaskTemplate
from flytekit.tools.translator import get_serializable
from flytekit.types.directory import FlyteDirectory

from nim_agent import NIM, ConfigError, NIMEndpoint, NIMSecrets, NIMTask
from nim_agent.spec import from_custom, to_custom

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = SerializationSettings(image_config=ImageConfig.auto_default_image())
NIM_CONFIG = NIM(
    secrets=NIMSecrets(ngc_image_secret="ngc", ngc_secret_key="api_key", secrets_prefix="_FSEC_"),
    gpu=1,
)

llama = NIMTask(name="tests.llama3-8b", nim=NIM_CONFIG, ttl=timedelta(hours=3))


@task
def ask(endpoint: str, question: str) -> str:
    return f"{endpoint} <- {question}"


@workflow
def wf(question: str) -> str:
    endpoint = llama()
    return ask(endpoint=endpoint, question=question)


def test_the_task_type_is_nim_with_one_string_output_named_endpoint() -> None:
    assert llama.task_type == "nim"
    assert llama.python_interface.inputs == {}
    assert llama.python_interface.outputs == {"endpoint": str}
    assert llama.nim is NIM_CONFIG and llama.ttl == timedelta(hours=3)


def test_the_custom_is_the_task_config_proto_and_reads_back() -> None:
    custom = llama.get_custom(SETTINGS)
    assert custom == to_custom(NIM_CONFIG, timedelta(hours=3))
    spec = from_custom(custom)
    assert (spec.nim, spec.ttl) == (NIM_CONFIG, timedelta(hours=3))


def test_without_a_ttl_the_connector_s_default_ttl_applies() -> None:
    task = NIMTask(name="tests.default-ttl", nim=NIM_CONFIG)
    assert task.ttl is None
    assert "ttl" not in task.get_custom(SerializationSettings(ImageConfig.auto_default_image()))


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=-1), 7200, "2h"])
def test_a_bad_ttl_is_a_config_error_naming_ttl(ttl: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        NIMTask(name="tests.bad-ttl", nim=NIM_CONFIG, ttl=ttl)
    assert caught.value.problems[0].field == "ttl"


def test_nim_must_be_a_nim_config() -> None:
    with pytest.raises(ConfigError, match="nim: dict given"):
        NIMTask(name="tests.bad-nim", nim={"gpu": 1})  # type: ignore[arg-type]


def test_a_workflow_using_nimtask_serializes_with_the_task_as_a_connector_task() -> None:
    entities: OrderedDict[Any, Any] = OrderedDict()
    get_serializable(entities, SETTINGS, wf)
    template = get_serializable(entities, SETTINGS, llama).template
    assert template.type == "nim"
    assert template.container is None and template.k8s_pod is None
    assert list(template.interface.outputs) == ["endpoint"]
    assert from_custom(template.custom).nim == NIM_CONFIG


def test_pyflyte_package_packs_the_example_workflow(tmp_path: Path) -> None:
    out = tmp_path / "flyte-package.tgz"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "pyflyte"),
            "--pkgs",
            "nim_workflow",
            "package",
            "--image",
            "ghcr.io/flyteorg/flytekit:py3.11-latest",
            "-o",
            str(out),
        ],
        cwd=ROOT / "examples",
        check=True,
        capture_output=True,
    )
    with tarfile.open(out) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("_llama3-8b_1.pb"))
        data = tar.extractfile(member).read()  # type: ignore[union-attr]
    spec = admin_task_pb2.TaskSpec()
    spec.ParseFromString(data)
    assert spec.template.type == "nim"
    assert from_custom(TaskTemplate.from_flyte_idl(spec.template).custom).nim.gpu == 1


@dataclass
class FakeMeta(ResourceMeta):
    endpoint: str


class FakeNIMConnector(AsyncConnectorBase):  # type: ignore[misc]
    """Stands in for the real connector: reads the custom back, 'deploys' instantly."""

    def __init__(self) -> None:
        super().__init__(task_type_name="nim", metadata_type=FakeMeta)
        self.created: list[Any] = []

    async def create(self, task_template: TaskTemplate, output_prefix: str, **_: Any) -> FakeMeta:
        spec = from_custom(task_template.custom)
        self.created.append(spec)
        return FakeMeta(endpoint=f"http://fake.default.svc.cluster.local:{spec.nim.port}")

    async def get(self, resource_meta: FakeMeta, **_: Any) -> Resource:
        return Resource(phase=TaskExecution.SUCCEEDED, outputs={"endpoint": resource_meta.endpoint})

    async def delete(self, resource_meta: FakeMeta, **_: Any) -> None:
        return None


def test_a_local_run_goes_through_the_connector_registered_for_nim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connector = FakeNIMConnector()
    monkeypatch.setitem(ConnectorRegistry._REGISTRY, TaskCategory("nim", 0), connector)
    result = wf(question="hi")
    assert result == "http://fake.default.svc.cluster.local:8000 <- hi"
    assert [spec.nim for spec in connector.created] == [NIM_CONFIG]


@pytest.mark.parametrize(
    ("kwargs", "field", "hint"),
    [
        ({"tll": timedelta(hours=1)}, "tll", "did you mean 'ttl'?"),
        ({"retries": 2}, "retries", ""),
        ({"metdata": None}, "metdata", "did you mean 'metadata'?"),
    ],
)
def test_an_unknown_keyword_of_nim_task_is_refused_naming_it(
    kwargs: dict[str, Any], field: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        NIMTask(name="tests.typo", nim=NIM_CONFIG, **kwargs)
    [problem] = caught.value.problems
    assert problem.field == field
    assert "is not a parameter of NIMTask" in problem.message
    assert hint in problem.message


def test_flytekit_task_keywords_pass_through() -> None:
    from flytekit.core.base_task import TaskMetadata
    from flytekit.models.documentation import Documentation

    docs = Documentation(short_description="a NIM")
    task = NIMTask(
        name="tests.kw",
        nim=NIM_CONFIG,
        metadata=TaskMetadata(retries=2),
        docs=docs,
    )
    assert task.metadata.retries == 2
    assert task.docs is docs


def test_the_teardown_task_refuses_unknown_keywords_and_carries_force() -> None:
    from nim_agent import NIMTeardownTask

    with pytest.raises(ConfigError) as caught:
        NIMTeardownTask(name="tests.td", froce=True)
    assert caught.value.problems[0].field == "froce"
    assert "did you mean 'force'?" in caught.value.problems[0].message
    settings = SerializationSettings(ImageConfig.auto_default_image())
    assert NIMTeardownTask(name="tests.td").get_custom(settings) == {}
    assert NIMTeardownTask(name="tests.td2", force=True).get_custom(settings) == {"force": True}


# --------------------------------------------------------------------------- typed, with inputs

TYPED_NIM = NIM(
    secrets=NIM_CONFIG.secrets, env={"NIM_PEFT_SOURCE": "/opt/nim/loras"}, lora_adapter_mem="1Gi"
)
serve = NIMTask(
    name="tests.serve",
    nim=TYPED_NIM,
    inputs={"support": FlyteDirectory},
    typed_endpoint=True,
)


@task
def finetune() -> FlyteDirectory:
    out = Path(flytekit.current_context().working_directory) / "adapter"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    (out / "adapter_model.safetensors").write_bytes(b"\x00")
    return FlyteDirectory(str(out))


@task
def ask_typed(endpoint: NIMEndpoint, question: str) -> str:
    return f"{endpoint.adapters[0]}@{endpoint.openai_base_url} ({endpoint.model}) <- {question}"


@task
def url_of(url: str) -> str:
    return url


@workflow
def typed_wf(question: str, support: FlyteDirectory) -> tuple[str, str]:
    endpoint = serve(support=support)
    return ask_typed(endpoint=endpoint, question=question), url_of(url=endpoint.base_url)


@workflow
def tuned_wf(question: str) -> str:
    return ask_typed(endpoint=serve(support=finetune()), question=question)


class FakeTypedConnector(FakeNIMConnector):
    """Answers as the real connector does for a typed task: a NIMEndpoint; keeps the inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[Any] = []

    async def create(self, task_template: TaskTemplate, output_prefix: str, **kw: Any) -> FakeMeta:
        self.inputs.append(kw.get("inputs"))
        return await super().create(task_template, output_prefix, **kw)

    async def get(self, resource_meta: FakeMeta, **_: Any) -> Resource:
        value = NIMEndpoint.of(resource_meta.endpoint, "meta/llama3-8b-instruct", ["support"])
        return Resource(phase=TaskExecution.SUCCEEDED, outputs={"endpoint": value})


def test_a_typed_endpoint_reaches_downstream_tasks_whole_and_by_attribute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connector = FakeTypedConnector()
    monkeypatch.setitem(ConnectorRegistry._REGISTRY, TaskCategory("nim", 0), connector)
    remote = FlyteDirectory("s3://bucket/raw/ab/o0")  # already in an object store: passed on
    answer, url = typed_wf(question="hi", support=remote)
    assert answer == (
        "support@http://fake.default.svc.cluster.local:8000/v1 (meta/llama3-8b-instruct) <- hi"
    )
    assert url == "http://fake.default.svc.cluster.local:8000"
    [inputs] = connector.inputs
    assert inputs.literals["support"].scalar.blob.uri == "s3://bucket/raw/ab/o0"
    assert [spec.typed_endpoint for spec in connector.created] == [True]


def test_a_local_adapter_without_a_remote_raw_output_prefix_fails_naming_the_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connector = FakeTypedConnector()
    monkeypatch.setitem(ConnectorRegistry._REGISTRY, TaskCategory("nim", 0), connector)
    with pytest.raises(Exception) as caught:  # flytekit wraps the task's own error
        tuned_wf(question="hi")
    assert "inputs.support" in str(caught.value)
    assert "--raw-output-data-prefix" in str(caught.value)
    assert connector.created == []  # refused before any deployment
