"""The user's task types, as flytekit classes: NIMTask ("nim") and NIMTeardownTask ("nim-teardown").

They only describe the work: a NIMTask's `TaskTemplate.custom` is the `NIMTaskConfig` proto in
JSON form (`nim_agent.spec`); the connector (`nim_agent.connector`), server side, reads it back
and does the work. Locally, `pyflyte run` calls the same connector in-process: `execute`
imports it, which registers it with flytekit, and flytekit's connector executor mixins find it
by task type.

A NIMTask's inputs, when it has any, are LoRA adapters produced by earlier tasks
(`inputs=kwtypes(lora=FlyteDirectory)`, or a ``dict[str, FlyteDirectory]``); the NIM pod
downloads them from Flyte's object store. In a local run, flytekit keeps a task's directory
outputs on this machine: `execute` uploads them to the run's raw output prefix first.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from flytekit.configuration import SerializationSettings
from flytekit.core.base_task import PythonTask
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.interface import Interface
from flytekit.extend.backend.base_connector import (
    AsyncConnectorExecutorMixin,
    SyncConnectorExecutorMixin,
)
from flytekit.types.directory import FlyteDirectory

from nim_agent.checks import ConfigError, Problem, check_adapter_name, closest, show
from nim_agent.config import NIM, Reuse
from nim_agent.contract import PEFT_SOURCE_ENV, NIMEndpoint, adapter_name
from nim_agent.spec import TASK_TYPE, TEARDOWN_TASK_TYPE, check_ttl, to_custom

log = logging.getLogger(__name__)

__all__ = ["NIMTask", "NIMTeardownTask"]


class NIMTask(AsyncConnectorExecutorMixin, PythonTask):  # type: ignore[misc]
    """A Flyte task that deploys a NIM server and outputs its in-cluster URL as `endpoint`.

    It succeeds once the server serves: Ready, and ``GET /v1/models`` listing the base model
    and every adapter. After that the server keeps running for the steps that follow, until
    `ttl` has passed (the connector stops it then; unset: the connector's `default_ttl`, 2h
    unless the operator changed it) or the execution is aborted.

    With `reuse` (True, or a `Reuse`), executions whose serving configuration is the same
    share one warm server: a later execution attaches to the running server and adds its
    adapters to it live, instead of paying a cold start (README: Warm servers). On a shared
    server an adapter given as a task input is served as ``<name>-<8 hex of its URI>`` (two
    executions' "support" adapters never mix), so such a task needs `typed_endpoint=True` to
    learn the name (`NIMEndpoint.adapters`).

    `inputs` declares LoRA adapters produced by earlier tasks, flytekit-style
    (``kwtypes(name=FlyteDirectory)``): a FlyteDirectory input is an adapter served under the
    input's name; a ``dict[str, FlyteDirectory]`` input gives one adapter per key. With
    `typed_endpoint`, the output `endpoint` is a `NIMEndpoint` (base URL, OpenAI /v1 URL, served
    model id, adapter ids) instead of the URL string. Other keyword arguments go to flytekit's
    task base (e.g. `metadata=TaskMetadata(retries=2)`, `docs=...`); an unknown one is refused,
    naming it.

    Example::

        llama = NIMTask(name="llama3-8b", nim=NIM(secrets=..., gpu=1), ttl=timedelta(hours=2))

        @workflow
        def wf(question: str) -> str:
            endpoint = llama()
            return ask(endpoint=endpoint, question=question)

        serve = NIMTask(name="serve-lora", nim=NIM(..., env={"NIM_PEFT_SOURCE": "/opt/nim/loras"},
                        lora_adapter_mem="2Gi"), inputs=kwtypes(support=FlyteDirectory),
                        typed_endpoint=True)

        @workflow
        def tuned(question: str) -> str:
            endpoint = serve(support=finetune())     # finetune() -> FlyteDirectory
            return ask_typed(endpoint=endpoint, question=question)   # endpoint: NIMEndpoint
    """

    def __init__(
        self,
        name: str,
        nim: NIM,
        ttl: timedelta | None = None,
        *,
        inputs: Mapping[str, type] | None = None,
        typed_endpoint: bool = False,
        reuse: bool | Reuse | None = None,
        **kwargs: Any,
    ) -> None:
        _check_task_kwargs(
            "NIMTask", kwargs, ("name", "nim", "ttl", "inputs", "typed_endpoint", "reuse")
        )
        if not isinstance(nim, NIM):
            raise ConfigError([Problem("nim", f"{type(nim).__name__} given; use NIM(...)")])
        if not isinstance(typed_endpoint, bool):
            raise ConfigError(
                [Problem("typed_endpoint", f"{show(typed_endpoint)} is not true or false")]
            )
        self._reuse = Reuse.of(reuse)
        adapter_inputs = _adapter_inputs(nim, inputs, shared=self._reuse is not None)
        if adapter_inputs and self._reuse is not None and not typed_endpoint:
            raise ConfigError(
                [
                    Problem(
                        "typed_endpoint",
                        "must be True with reuse and adapters as task inputs: on a shared server "
                        "each execution's input adapter is served as <name>-<hash of its URI>, "
                        "which the NIMEndpoint output names (endpoint.adapters)",
                    )
                ]
            )
        if nim.download_inputs:
            raise ConfigError(
                [
                    Problem(
                        "download_inputs",
                        "applies to the sidecar form (NIM(...).pod_template) only: a NIMTask has "
                        "no inputs to download; leave it False",
                    )
                ]
            )
        self._nim = nim
        self._ttl = check_ttl(ttl)
        self._typed = typed_endpoint
        super().__init__(
            task_type=TASK_TYPE,
            name=name,
            task_config=nim,
            interface=Interface(
                inputs=adapter_inputs,
                outputs={"endpoint": NIMEndpoint if typed_endpoint else str},
            ),
            **kwargs,
        )

    @property
    def nim(self) -> NIM:
        """The deployment this task describes."""
        return self._nim

    @property
    def ttl(self) -> timedelta | None:
        """How long the deployment may live (None: the connector's default_ttl)."""
        return self._ttl

    @property
    def typed_endpoint(self) -> bool:
        """Whether the output `endpoint` is a NIMEndpoint (else the URL string)."""
        return self._typed

    @property
    def reuse(self) -> Reuse | None:
        """How the server is shared with other executions (None: a server of its own)."""
        return self._reuse

    def get_custom(self, settings: SerializationSettings) -> dict[str, Any]:
        """The NIMTaskConfig proto as JSON, for TaskTemplate.custom."""
        return to_custom(self._nim, self._ttl, self._typed, self._reuse)

    def execute(self, **kwargs: Any) -> Any:
        """Local run (`pyflyte run`): the mixin calls the NIM connector in-process, after the
        adapters that are folders on this machine are uploaded to the run's raw output prefix."""
        import nim_agent.connector  # noqa: F401  registers the connector with flytekit

        remote = {name: _in_object_store(name, value) for name, value in kwargs.items()}
        return super().execute(**remote)


def _is_directory_type(kind: object) -> bool:
    return isinstance(kind, type) and issubclass(kind, FlyteDirectory)


# On a shared server an input adapter is served as <name>-<8 hex>: the name may be this long.
SHARED_INPUT_NAME_MAX = 128 - 9


def _adapter_inputs(
    nim: NIM, inputs: Mapping[str, type] | None, *, shared: bool = False
) -> dict[str, type]:
    """The task's inputs (adapters) checked: ConfigError naming `inputs.<name>` or the NIM
    field they need."""
    if inputs is None:
        return {}
    if not isinstance(inputs, Mapping):
        raise ConfigError(
            [
                Problem(
                    "inputs", f"{show(inputs)} is not a mapping; use kwtypes(lora=FlyteDirectory)"
                )
            ]
        )
    problems = []
    hf = {adapter_name(r): r for r in nim.hf_repo_ids or []}
    for name, kind in inputs.items():
        where = f"inputs.{name}"
        if _is_directory_type(kind):
            if message := check_adapter_name(name):
                problems.append(Problem(where, message))
            elif shared and len(name) > SHARED_INPUT_NAME_MAX:
                problems.append(
                    Problem(
                        where,
                        f"is longer than {SHARED_INPUT_NAME_MAX} characters: with reuse it is "
                        "served as <name>-<8 hex>, at most 128",
                    )
                )
            elif name in hf:
                problems.append(
                    Problem(
                        where, f"is also the adapter of hf_repo_ids {show(hf[name])}; rename it"
                    )
                )
        elif not (
            typing.get_origin(kind) is dict
            and typing.get_args(kind)[:1] == (str,)
            and _is_directory_type(typing.get_args(kind)[1])
        ):
            problems.append(
                Problem(
                    where,
                    f"{getattr(kind, '__name__', kind)!s} is not an adapter type: a NIMTask's "
                    "inputs are LoRA adapters, FlyteDirectory or dict[str, FlyteDirectory]",
                )
            )
    if inputs and PEFT_SOURCE_ENV not in (nim.env or {}):
        problems.append(
            Problem(
                f"env.{PEFT_SOURCE_ENV}",
                "is required with adapter inputs: the directory the NIM loads adapters from; "
                f'add env={{"{PEFT_SOURCE_ENV}": "/opt/nim/loras"}}',
            )
        )
    if inputs and nim.lora_adapter_mem is None:
        problems.append(
            Problem(
                "lora_adapter_mem",
                "is required with adapter inputs: memory of the adapter download container, "
                'e.g. "2Gi"',
            )
        )
    if problems:
        raise ConfigError(problems)
    return dict(inputs)


def _in_object_store(name: str, value: Any) -> Any:
    """An adapter input as the NIM pod can read it: folders on this machine are uploaded to
    the run's raw output prefix (ConfigError naming the input when that prefix is local too)."""
    if isinstance(value, dict):
        return {key: _in_object_store(f"{name}[{key}]", item) for key, item in value.items()}
    if not isinstance(value, FlyteDirectory):
        return value
    ctx = FlyteContextManager.current_context()
    files = ctx.file_access
    source = value.remote_source or str(value.path)
    if files.is_remote(source):
        return FlyteDirectory(source)
    prefix = files.raw_output_prefix
    if not files.is_remote(prefix):
        raise ConfigError(
            [
                Problem(
                    f"inputs.{name}",
                    f"{source} is a folder on this machine, and so is this run's raw output "
                    f"prefix ({prefix}): the NIM pod can read neither. Run with "
                    "--raw-output-data-prefix s3://<bucket>/<prefix> (or your object store's "
                    "URL) so that nim-agent uploads the adapter there first",
                )
            ]
        )
    local = value.download()
    uploaded = files.put_data(local, files.get_random_remote_directory(), is_multipart=True)
    log.info("adapter %s: uploaded %s to %s for the NIM pod", name, local, uploaded)
    return FlyteDirectory(str(uploaded))


class NIMTeardownTask(SyncConnectorExecutorMixin, PythonTask):  # type: ignore[misc]
    """A Flyte task that removes a NIM deployment as soon as the workflow is done with it.

    Its input is the `endpoint` a NIMTask returned; the connector deletes that deployment's Pod
    and Service: only deployments nim-agent made, of the same Flyte project and domain as this
    task (`force=True` lifts that, logged); one already gone is success. Without it the server
    lives until its ttl.

    Example::

        teardown = NIMTeardownTask(name="llama3-8b-teardown")

        @workflow
        def wf(question: str) -> str:
            endpoint = llama()
            answer = ask(endpoint=endpoint, question=question)
            answer >> teardown(endpoint=endpoint)
            return answer
    """

    def __init__(self, name: str, force: bool = False, **kwargs: Any) -> None:
        _check_task_kwargs("NIMTeardownTask", kwargs, ("name", "force"))
        if not isinstance(force, bool):
            raise ConfigError([Problem("force", f"{force!r} is not True or False")])
        self._force = force
        super().__init__(
            task_type=TEARDOWN_TASK_TYPE,
            name=name,
            interface=Interface(inputs={"endpoint": str}, outputs={}),
            **kwargs,
        )

    def get_custom(self, settings: SerializationSettings) -> dict[str, Any]:
        """``{"force": true}`` when forced: the connector then tears down a deployment of
        another Flyte project or domain too (and logs it)."""
        return {"force": True} if self._force else {}

    def execute(self, **kwargs: Any) -> Any:
        """Local run (`pyflyte run`): the mixin calls the teardown connector in-process."""
        import nim_agent.connector  # noqa: F401  registers the connectors with flytekit

        return super().execute(**kwargs)


# What flytekit's task base takes, besides what the task types set themselves: PythonTask's own
# keywords and those it passes on to Task (flytekit 1.16).
_FLYTEKIT_TASK_KWARGS = (
    "environment",
    "disable_deck",
    "enable_deck",
    "deck_fields",
    "metadata",
    "task_type_version",
    "security_ctx",
    "docs",
)


def _check_task_kwargs(cls: str, kwargs: dict[str, Any], own: tuple[str, ...]) -> None:
    """Refuse keywords flytekit's task base would not use (a typo such as `tll=` would
    otherwise be dropped silently), naming each and the closest valid one."""
    valid = (*own, *_FLYTEKIT_TASK_KWARGS)
    problems = [
        Problem(key, f"is not a parameter of {cls}{closest(key, valid)}")
        for key in kwargs
        if key not in _FLYTEKIT_TASK_KWARGS
    ]
    if problems:
        raise ConfigError(problems, f"the {cls} arguments")
